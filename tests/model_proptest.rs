//! Model-based property test of the engine API on one thread.
//!
//! Random sequences of malloc / zalloc / malloc_aligned / zalloc_aligned /
//! realloc / realloc_aligned / free, with sizes from 0 to 8 MiB (mostly
//! small, but covering medium, large and the class boundaries) and
//! alignments from 16 B to 2 MiB, run against a model of the live blocks.
//! After every operation:
//! - each block holds the pattern of its id over its whole usable size
//!   (checked before it is freed or reallocated);
//! - `realloc` keeps `min(old usable size, new size)` bytes;
//! - zeroed allocations read as zero over the requested size;
//! - no two live blocks' usable ranges overlap (BTreeMap of ranges);
//! - `usable_size >= requested`, and the alignment asked for is honoured.
//!
//! Default: 64 cases of up to 200 operations; `PROPTEST_CASES` overrides.

use std::collections::BTreeMap;

use arenalloc_engine as engine;
use arenalloc_tests::pattern;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

#[derive(Clone, Debug)]
enum Op {
    Malloc(usize),
    Zalloc(usize),
    Aligned {
        size: usize,
        align: usize,
        zero: bool,
    },
    Realloc(Index, usize),
    ReallocAligned(Index, usize),
    Free(Index),
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        40 => 0usize..=128,
        20 => 129usize..=1024,
        15 => 1025usize..=131_072,
        10 => prop::sample::select(vec![
            0usize, 1, 15, 16, 17, 127, 128, 129, 1023, 1024, 1025, 4096, 65_535, 65_536,
            65_537, 131_071, 131_072, 131_073, 135_168, 1 << 20, (1 << 20) + 1,
        ]),
        4 => 131_073usize..=(1 << 20),
        1 => (1usize << 20)..=(8 << 20),
    ]
}

/// Powers of two from 16 B to 2 MiB, the small ones more often.
fn align() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => (4u32..=12).prop_map(|b| 1usize << b),
        1 => (13u32..=21).prop_map(|b| 1usize << b),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => size().prop_map(Op::Malloc),
        2 => size().prop_map(Op::Zalloc),
        3 => (size(), align(), any::<bool>())
            .prop_map(|(size, align, zero)| Op::Aligned { size, align, zero }),
        3 => (any::<Index>(), size()).prop_map(|(i, s)| Op::Realloc(i, s)),
        2 => (any::<Index>(), size()).prop_map(|(i, s)| Op::ReallocAligned(i, s)),
        5 => any::<Index>().prop_map(Op::Free),
    ]
}

struct Block {
    id: u64,
    p: *mut u8,
    size: usize,
    usable: usize,
    align: usize,
}

#[derive(Default)]
struct Model {
    blocks: Vec<Block>,
    /// Usable ranges of live blocks: start -> end.
    ranges: BTreeMap<usize, usize>,
    next_id: u64,
}

impl Model {
    /// Checks a freshly returned block and adds it to the model.
    fn admit(
        &mut self,
        p: *mut u8,
        size: usize,
        align: usize,
        id: u64,
        what: &str,
    ) -> Result<(), TestCaseError> {
        prop_assert!(!p.is_null(), "{what}({size}, align {align}) returned null");
        prop_assert_eq!(
            p as usize % align.max(engine::MIN_ALIGN),
            0,
            "{}({}) = {:p} not aligned to {}",
            what,
            size,
            p,
            align
        );
        prop_assert!(engine::owns(p), "{what}: {p:p} not in arenalloc memory");
        // SAFETY: a live block of ours.
        let usable = unsafe { engine::usable_size(p) };
        prop_assert!(
            usable >= size,
            "{what}({size}) at {p:p}: usable_size {usable} < requested"
        );
        let start = p as usize;
        let end = start + usable.max(1);
        if let Some((&s, &e)) = self.ranges.range(..end).next_back() {
            prop_assert!(
                e <= start,
                "{what}({size}) = [{start:#x}, {end:#x}) overlaps live block [{s:#x}, {e:#x})"
            );
        }
        self.ranges.insert(start, end);
        // SAFETY: `usable` bytes at `p` are ours.
        unsafe { pattern::fill(p, usable, id) };
        self.blocks.push(Block {
            id,
            p,
            size,
            usable,
            align,
        });
        Ok(())
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Checks the whole pattern of block `i`.
    fn verify(&self, i: usize, when: &str) -> Result<(), TestCaseError> {
        let b = &self.blocks[i];
        // SAFETY: a live block with `usable` bytes filled with its pattern.
        if let Err(at) = unsafe { pattern::check(b.p, b.usable, b.id) } {
            return Err(TestCaseError::fail(format!(
                "{when}: block #{} at {:p} (size {}, usable {}, align {}) corrupted at offset {at}",
                b.id, b.p, b.size, b.usable, b.align
            )));
        }
        Ok(())
    }

    /// Removes block `i` from the model (after `verify`), returning it.
    fn take(&mut self, i: usize) -> Block {
        let b = self.blocks.swap_remove(i);
        self.ranges.remove(&(b.p as usize));
        b
    }

    fn alloc(&mut self, size: usize, align: usize, zero: bool) -> Result<(), TestCaseError> {
        let plain = align == engine::MIN_ALIGN;
        let (p, what) = match (plain, zero) {
            (true, false) => (engine::malloc(size), "malloc"),
            (true, true) => (engine::zalloc(size), "zalloc"),
            (false, false) => (engine::malloc_aligned(size, align), "malloc_aligned"),
            (false, true) => (engine::zalloc_aligned(size, align), "zalloc_aligned"),
        };
        if zero && !p.is_null() {
            // SAFETY: a live block of at least `size` bytes (checked in
            // `admit` below, but reading `size` bytes is what zalloc promised).
            if let Some(at) = unsafe { pattern::first_nonzero(p, size) } {
                return Err(TestCaseError::fail(format!(
                    "{what}({size}, align {align}) = {p:p}: byte {at} is not zero"
                )));
            }
        }
        let id = self.new_id();
        self.admit(p, size, align, id, what)
    }

    fn realloc(&mut self, i: Index, size: usize, keep_align: bool) -> Result<(), TestCaseError> {
        if self.blocks.is_empty() {
            // realloc(NULL, n) is malloc(n).
            // SAFETY: null is allowed.
            let p = unsafe { engine::realloc(std::ptr::null_mut(), size) };
            let id = self.new_id();
            return self.admit(p, size, engine::MIN_ALIGN, id, "realloc(NULL)");
        }
        let i = i.index(self.blocks.len());
        self.verify(i, "before realloc")?;
        let b = self.take(i);
        let (q, align, what) = if keep_align {
            // SAFETY: a live block allocated with alignment `b.align`.
            let q = unsafe { engine::realloc_aligned(b.p, size, b.align) };
            (q, b.align, "realloc_aligned")
        } else {
            // SAFETY: a live block of ours.
            let q = unsafe { engine::realloc(b.p, size) };
            (q, engine::MIN_ALIGN, "realloc")
        };
        prop_assert!(
            !q.is_null(),
            "{what}({:p}, {size}) returned null (old size {})",
            b.p,
            b.size
        );
        let kept = b.usable.min(size);
        // SAFETY: `q` has at least `size` >= `kept` bytes (checked in admit;
        // reading first is what realloc promised).
        if let Err(at) = unsafe { pattern::check(q, kept, b.id) } {
            return Err(TestCaseError::fail(format!(
                "{what}({:p} usable {}, {size}) = {q:p}: byte {at} of the {kept} kept bytes lost",
                b.p, b.usable
            )));
        }
        self.admit(q, size, align, b.id, what)
    }

    fn free(&mut self, i: Index) -> Result<(), TestCaseError> {
        if self.blocks.is_empty() {
            // SAFETY: free(NULL) is a no-op.
            unsafe { engine::free(std::ptr::null_mut()) };
            return Ok(());
        }
        let i = i.index(self.blocks.len());
        self.verify(i, "before free")?;
        let b = self.take(i);
        // SAFETY: a live block, forgotten by the model.
        unsafe { engine::free(b.p) };
        Ok(())
    }

    fn run(&mut self, ops: &[Op]) -> Result<(), TestCaseError> {
        for op in ops {
            match *op {
                Op::Malloc(size) => self.alloc(size, engine::MIN_ALIGN, false)?,
                Op::Zalloc(size) => self.alloc(size, engine::MIN_ALIGN, true)?,
                Op::Aligned { size, align, zero } => self.alloc(size, align, zero)?,
                Op::Realloc(i, size) => self.realloc(i, size, false)?,
                Op::ReallocAligned(i, size) => self.realloc(i, size, true)?,
                Op::Free(i) => self.free(i)?,
            }
        }
        while !self.blocks.is_empty() {
            self.verify(0, "at the end")?;
            let b = self.take(0);
            // SAFETY: a live block, forgotten by the model.
            unsafe { engine::free(b.p) };
        }
        Ok(())
    }
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn engine_matches_model(ops in prop::collection::vec(op(), 1..200)) {
        Model::default().run(&ops)?;
    }
}
