//! The edges of the malloc contract, at the engine API:
//! - sizes near `usize::MAX` (and sizes no mapping can hold) return null
//!   with `errno = ENOMEM`, and a failed `realloc` leaves the block intact;
//! - an alignment that is not a power of two returns null with `EINVAL`;
//! - `malloc(0)` (and its zeroed, aligned and realloc forms) returns unique,
//!   freeable blocks; `free(NULL)` and `usable_size(NULL)` are harmless;
//! - alignments from 16 B up to 8 MiB are honoured, the blocks are usable
//!   over their whole usable size, zeroed when asked, and freeable;
//! - a large block grown by `realloc` from 1 MiB to 64 MiB keeps its
//!   contents, whether it grows in place or has to move (a page mapped just
//!   past the block forces the move), and shrinking keeps the prefix; the
//!   large-block statistics follow every step;
//! - `trim()` after freeing a lot returns a positive count, and the cached
//!   large blocks and empty segments are unmapped (`mapped_bytes` falls).
//!
//! The tests take turns (statistics and the large-block cache are
//! process-wide); this binary keeps the system allocator, so only these
//! tests use arenalloc. The trim test runs in a child process (this binary
//! re-run with `C_CONTRACT_EDGE_CHILD=<test>`) without the housekeeper,
//! which would unmap the cached large blocks before the trim it measures.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use arenalloc_engine as engine;
use arenalloc_tests::{errno, pattern, set_errno, test_in_child};

const CHILD_VAR: &str = "C_CONTRACT_EDGE_CHILD";

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Calls `f` with errno cleared; returns its result and the errno after.
fn with_errno(f: impl FnOnce() -> *mut u8) -> (*mut u8, i32) {
    set_errno(0);
    let p = f();
    (p, errno())
}

#[test]
fn sizes_near_usize_max_fail_with_enomem_and_realloc_keeps_the_block() {
    let _serial = serial();
    let sizes = [
        usize::MAX,
        usize::MAX - 1,
        usize::MAX - 4095,
        usize::MAX - 2 * MIB,
        usize::MAX / 2 + 1,
        isize::MAX as usize,
        engine::MAX_ALLOC + 1,
        engine::MAX_ALLOC,
        // Within MAX_ALLOC, but larger than any user address space.
        1 << 48,
    ];
    for size in sizes {
        let calls: [(&str, &dyn Fn() -> *mut u8); 6] = [
            ("malloc", &|| engine::malloc(size)),
            ("zalloc", &|| engine::zalloc(size)),
            ("malloc_aligned 64", &|| engine::malloc_aligned(size, 64)),
            ("malloc_aligned 1 MiB", &|| {
                engine::malloc_aligned(size, MIB)
            }),
            ("malloc_aligned 8 MiB", &|| {
                engine::malloc_aligned(size, 8 * MIB)
            }),
            ("zalloc_aligned 4 KiB", &|| {
                engine::zalloc_aligned(size, 4 * KIB)
            }),
        ];
        for (name, call) in calls {
            let (p, e) = with_errno(call);
            assert!(p.is_null(), "{name}({size:#x}) returned {p:p}");
            assert_eq!(e, libc::ENOMEM, "{name}({size:#x}): errno {e}");
        }
    }
    // A failed realloc leaves the old block as it was, small or large.
    for old in [100, 100 * KIB, 3 * MIB] {
        let p = engine::malloc(old);
        assert!(!p.is_null());
        // SAFETY: `old` bytes at `p`.
        unsafe { pattern::fill(p, old, old as u64) };
        for size in sizes {
            // SAFETY: a live block of ours.
            let (q, e) = with_errno(|| unsafe { engine::realloc(p, size) });
            assert!(q.is_null(), "realloc({old} -> {size:#x}) returned {q:p}");
            assert_eq!(e, libc::ENOMEM, "realloc({old} -> {size:#x}): errno {e}");
            // SAFETY: as above, with its alignment.
            let (q, e) = with_errno(|| unsafe { engine::realloc_aligned(p, size, 4096) });
            assert!(
                q.is_null(),
                "realloc_aligned({old} -> {size:#x}) returned {q:p}"
            );
            assert_eq!(e, libc::ENOMEM);
            // SAFETY: the block is still live.
            let intact = unsafe { pattern::check(p, old, old as u64) };
            assert_eq!(
                intact,
                Ok(()),
                "failed realloc({old} -> {size:#x}) damaged the block"
            );
        }
        // SAFETY: still ours, freed once.
        unsafe { engine::free(p) };
    }
}

#[test]
fn alignments_that_are_not_powers_of_two_fail_with_einval() {
    let _serial = serial();
    let aligns = [
        3,
        12,
        24,
        48,
        100,
        1000,
        4097,
        3 * 64 * KIB,
        3 * MIB,
        6 * MIB,
        (1 << 63) + 1,
        usize::MAX,
    ];
    let mut wrong = Vec::new();
    for align in aligns {
        for size in [0, 1, 64, 100 * KIB, 2 * MIB] {
            let calls: [(&str, &dyn Fn() -> *mut u8); 2] = [
                ("malloc_aligned", &|| engine::malloc_aligned(size, align)),
                ("zalloc_aligned", &|| engine::zalloc_aligned(size, align)),
            ];
            for (name, call) in calls {
                let (p, e) = with_errno(call);
                if !p.is_null() || e != libc::EINVAL {
                    wrong.push(format!("{name}({size}, {align}) = {p:p}, errno {e}"));
                }
                if !p.is_null() {
                    // SAFETY: a block of ours after all.
                    unsafe { engine::free(p) };
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} calls did not fail with EINVAL:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn zero_sized_allocations_are_unique_and_freeable() {
    let _serial = serial();
    let mut blocks = Vec::new();
    for i in 0..1000 {
        let p = match i % 8 {
            0 => engine::zalloc(0),
            1 => engine::malloc_aligned(0, 64),
            2 => engine::malloc_aligned(0, 4096),
            3 => engine::zalloc_aligned(0, 256),
            // SAFETY: realloc(NULL, 0) is malloc(0).
            4 => unsafe { engine::realloc(std::ptr::null_mut(), 0) },
            _ => engine::malloc(0),
        };
        assert!(!p.is_null(), "zero-sized allocation {i} returned null");
        assert!(engine::owns(p));
        assert_eq!(p as usize % engine::MIN_ALIGN, 0);
        blocks.push(p);
    }
    for align in [128 * KIB, MIB, 2 * MIB, 4 * MIB, 8 * MIB] {
        let p = engine::malloc_aligned(0, align);
        assert!(!p.is_null(), "malloc_aligned(0, {align}) returned null");
        assert_eq!(p as usize % align, 0);
        blocks.push(p);
    }
    // Unique: distinct addresses, and no address inside another block.
    let mut ranges = BTreeMap::new();
    let mut outside = Vec::new();
    for &p in &blocks {
        // SAFETY: a live block of ours.
        let usable = unsafe { engine::usable_size(p) };
        let start = p as usize;
        if let Some((&s, &e)) = ranges.range(..=start).next_back() {
            assert!(
                s != start && e <= start,
                "zero-sized block {p:p} overlaps [{s:#x}, {e:#x})"
            );
        }
        ranges.insert(start, start + usable.max(1));
        // The address must belong to the allocator: if nothing is mapped
        // there, any later mmap (another block of ours, too) may land on it.
        let page = start & !4095;
        if let Some(stray) = block_growth_at(page) {
            // SAFETY: the page this test just mapped.
            unsafe { libc::munmap(stray as *mut libc::c_void, 4096) };
            outside.push(format!("{p:p} (usable_size {usable})"));
        }
        // Writing the usable bytes must be harmless.
        // SAFETY: `usable_size` bytes at `p` are ours.
        unsafe { pattern::fill(p, usable, start as u64) };
    }
    for &p in &blocks {
        // SAFETY: filled above.
        let usable = unsafe { engine::usable_size(p) };
        // SAFETY: as above.
        assert_eq!(unsafe { pattern::check(p, usable, p as u64) }, Ok(()));
        // SAFETY: live, freed once.
        unsafe { engine::free(p) };
    }
    // SAFETY: null is allowed for both.
    unsafe {
        engine::free(std::ptr::null_mut());
        assert_eq!(engine::usable_size(std::ptr::null_mut()), 0);
    }
    assert!(
        outside.is_empty(),
        "zero-sized blocks outside any mapping (their address is free for the \
         next mmap, which may be another block's): {}",
        outside.join(", ")
    );
}

#[test]
fn alignments_from_16_bytes_to_8_mib_are_honoured() {
    let _serial = serial();
    let mut align = 16;
    while align <= 8 * MIB {
        let sizes = [
            0,
            1,
            100,
            align - 1,
            align,
            align + 1,
            200 * KIB,
            3 * MIB + 5,
        ];
        let mut live = Vec::new();
        for (k, &size) in sizes.iter().enumerate() {
            for zero in [false, true] {
                let p = if zero {
                    engine::zalloc_aligned(size, align)
                } else {
                    engine::malloc_aligned(size, align)
                };
                let what = if zero {
                    "zalloc_aligned"
                } else {
                    "malloc_aligned"
                };
                assert!(!p.is_null(), "{what}({size}, {align}) returned null");
                assert_eq!(p as usize % align, 0, "{what}({size}, {align}) = {p:p}");
                // SAFETY: a live block of ours.
                let usable = unsafe { engine::usable_size(p) };
                assert!(usable >= size, "{what}({size}, {align}): usable {usable}");
                if zero {
                    // SAFETY: `size` bytes at `p`.
                    let nz = unsafe { pattern::first_nonzero(p, size) };
                    assert_eq!(nz, None, "{what}({size}, {align}) = {p:p} not zeroed");
                }
                let seed = (align * 100 + k * 2 + zero as usize) as u64;
                // SAFETY: `usable` bytes at `p` are ours.
                unsafe { pattern::fill_sparse(p, usable, seed) };
                live.push((p, size, usable, seed));
            }
        }
        // No overlap among them: every pattern is intact.
        for &(p, size, usable, seed) in &live {
            // SAFETY: filled above.
            let ok = unsafe { pattern::check_sparse(p, usable, seed) };
            assert_eq!(
                ok,
                Ok(()),
                "block {p:p} ({size} B, align {align}) corrupted"
            );
        }
        // realloc_aligned keeps the alignment and the contents.
        for (p, size, usable, seed) in live {
            let new_size = size * 2 + 1;
            // SAFETY: a live block allocated with alignment `align`.
            let q = unsafe { engine::realloc_aligned(p, new_size, align) };
            assert!(
                !q.is_null(),
                "realloc_aligned({size} -> {new_size}, {align})"
            );
            assert_eq!(
                q as usize % align,
                0,
                "realloc_aligned({size} -> {new_size}, {align}) = {q:p}"
            );
            // SAFETY: the kept prefix.
            let ok = unsafe { pattern::check_sparse_prefix(q, usable, usable.min(new_size), seed) };
            assert_eq!(
                ok,
                Ok(()),
                "realloc_aligned({size} -> {new_size}, {align}) lost data"
            );
            // SAFETY: live, freed once.
            unsafe { engine::free(q) };
        }
        align *= 2;
    }
}

/// Maps one inaccessible page at `at` if nothing is there (so that, for
/// example, the mapping ending at `at` cannot grow in place). Returns it if
/// mapped.
fn block_growth_at(at: usize) -> Option<usize> {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
    let r = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if r == libc::MAP_FAILED {
        return None;
    }
    if r as usize != at {
        // Old kernels ignore the flag and treat the address as a hint.
        // SAFETY: the page we just mapped.
        unsafe { libc::munmap(r, 4096) };
        return None;
    }
    Some(at)
}

#[test]
fn large_block_grows_from_1_mib_to_64_mib_keeping_its_contents() {
    let _serial = serial();
    const SEED: u64 = 0x6_4000;
    let base = engine::stats();
    let mut size = MIB;
    let mut p = engine::malloc(size);
    assert!(!p.is_null());
    // SAFETY: `size` bytes at `p`.
    unsafe { pattern::fill(p, size, SEED) };
    let mut blockers = Vec::new();
    let mut moved = 0;
    let mut step = 0;
    let check_stats = |p: *mut u8, what: &str| {
        let now = engine::stats();
        // SAFETY: a live block.
        let usable = unsafe { engine::usable_size(p) };
        assert_eq!(now.live_blocks, base.live_blocks + 1, "{what}: live_blocks");
        assert_eq!(
            now.large_live_bytes,
            base.large_live_bytes + usable,
            "{what}: large_live_bytes vs usable_size {usable}"
        );
    };
    check_stats(p, "after malloc(1 MiB)");
    while size < 64 * MIB {
        let new_size = (size + size / 3 + 4097).min(64 * MIB);
        // Every other step, make in-place growth impossible.
        if step % 2 == 1 {
            // SAFETY: a live large block: its mapping ends at p + usable.
            let end = p as usize + unsafe { engine::usable_size(p) };
            blockers.extend(block_growth_at(end));
        }
        // SAFETY: a live block of ours.
        let q = unsafe { engine::realloc(p, new_size) };
        assert!(!q.is_null(), "realloc({size} -> {new_size}) failed");
        moved += usize::from(q != p);
        // SAFETY: the first `size` bytes must have been kept.
        let kept = unsafe { pattern::check(q, size, SEED) };
        assert_eq!(
            kept,
            Ok(()),
            "realloc({size} -> {new_size}) step {step}: moved {}",
            q != p
        );
        // SAFETY: a live block.
        let usable = unsafe { engine::usable_size(q) };
        assert!(usable >= new_size);
        // SAFETY: `new_size` bytes at `q`.
        unsafe { pattern::fill(q, new_size, SEED) };
        check_stats(q, &format!("after realloc({size} -> {new_size})"));
        p = q;
        size = new_size;
        step += 1;
    }
    assert_eq!(size, 64 * MIB);
    // Shrink: in the mapping, then to a medium block, then large again.
    for new_size in [2 * MIB, 100 * KIB, MIB] {
        // SAFETY: a live block of ours.
        let q = unsafe { engine::realloc(p, new_size) };
        assert!(!q.is_null());
        let kept_len = size.min(new_size);
        // SAFETY: the kept prefix.
        let kept = unsafe { pattern::check(q, kept_len, SEED) };
        assert_eq!(kept, Ok(()), "realloc({size} -> {new_size}) lost data");
        // SAFETY: `new_size` bytes at `q`.
        unsafe { pattern::fill(q, new_size, SEED) };
        p = q;
        size = new_size;
    }
    // SAFETY: live, freed once.
    unsafe { engine::free(p) };
    let end = engine::stats();
    assert_eq!(end.live_blocks, base.live_blocks, "live_blocks after free");
    assert_eq!(
        end.large_live_bytes, base.large_live_bytes,
        "large_live_bytes after free"
    );
    for at in blockers {
        // SAFETY: pages this test mapped.
        unsafe { libc::munmap(at as *mut libc::c_void, 4096) };
    }
    eprintln!("grew 1 MiB -> 64 MiB in {step} steps, {moved} of them moved the block");
}

/// In the child: runs `body` and prints `<name>: done`. In the test
/// process: runs this binary again for `name` alone with `env` added and
/// checks the child finished the body and exited cleanly.
fn in_child_with(name: &str, env: &[(&str, &str)], body: fn()) {
    test_in_child(CHILD_VAR, name, env, Duration::from_secs(120), body);
}

#[test]
fn trim_unmaps_cached_large_blocks_and_empty_segments() {
    in_child_with(
        "trim_unmaps_cached_large_blocks_and_empty_segments",
        &[("ARENALLOC_BACKGROUND", "0")],
        trim_unmaps,
    );
}

/// In the child process, without the housekeeper (the cached large blocks
/// stay until the trim).
fn trim_unmaps() {
    assert!(!engine::purger::background_enabled());
    // Start from nothing cached and no spare segment.
    engine::trim();
    let before = engine::stats();
    // A thread allocates a lot and frees it all, then exits: its spans go
    // back to their segments, which become empty.
    let large_usable: usize = thread::spawn(|| {
        let small: Vec<usize> = (0..24 * KIB)
            .map(|i| {
                let p = engine::malloc(KIB);
                assert!(!p.is_null());
                // SAFETY: KIB bytes at `p`.
                unsafe { p.write(i as u8) };
                p as usize
            })
            .collect();
        let large: Vec<*mut u8> = (0..6)
            .map(|i| {
                let p = engine::malloc(2 * MIB + i * 64 * KIB);
                assert!(!p.is_null());
                // SAFETY: the first byte of the block.
                unsafe { p.write(1) };
                p
            })
            .collect();
        let mut usable = 0;
        for p in large {
            // SAFETY: live blocks, each freed once.
            unsafe {
                usable += engine::usable_size(p);
                engine::free(p);
            }
        }
        for p in small {
            // SAFETY: as above.
            unsafe { engine::free(p as *mut u8) };
        }
        usable
    })
    .join()
    .unwrap();
    let full = engine::stats();
    let released = engine::trim();
    let after = engine::stats();
    assert!(released > 0, "trim() released nothing; stats {full:?}");
    assert!(
        full.mapped_bytes - after.mapped_bytes >= large_usable,
        "trim() should unmap the {large_usable} bytes of cached large blocks: mapped {} -> {}",
        full.mapped_bytes,
        after.mapped_bytes
    );
    assert!(
        after.segments <= before.segments,
        "empty segments kept after trim(): {} before the work, {} after it, {} after trim",
        before.segments,
        full.segments,
        after.segments
    );
    assert!(released >= full.mapped_bytes - after.mapped_bytes);
}
