//! A thread heap's cache of freed blocks: per size class, a stack of block
//! addresses that the owner's `free` pushes and its `malloc` pops, in front
//! of the spans' free lists (jemalloc's tcache and tcmalloc's thread cache
//! have this shape).
//!
//! Why: a pop from a span's list reads the span's head word, the block's
//! link, decodes it and stores the head and the next block's address; a pop
//! from here reads a count and an address and stores the count. On glibc's
//! simple malloc loop and the slow-leak workload that was a tenth of the
//! time (see `docs/benchmarks.md`).
//!
//! A cached block is still out as far as its span knows (its span's count
//! includes it), so a span with a cached block never empties: the heap
//! gives cached blocks back to their spans when it purges (the purger does
//! so for idle heaps), when its thread exits, and before its arena's limit
//! refuses an allocation. What a heap may cache is bounded: classes up to
//! [`SMALL_TABLE_MAX`] only, at most [`BIN_SLOTS`] blocks and about
//! [`BIN_BYTES`] a class.
//!
//! A cached block carries a mark in its link word ([`mark`]): a
//! process-wide secret, which `malloc` checks before it hands
//! the block out and which every `free` looks for. So a block freed twice
//! (also by two threads, also after the program cleared the mark in
//! between) is caught before it is handed out twice, as on the spans'
//! lists; and the cache never follows anything stored in a freed block, so
//! an overflow into one cannot steer `malloc`.

use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::size_class::{class_size, CLASS_COUNT, SMALL_TABLE_MAX};

/// The mark's value until the secret is drawn: never 0 (the link word of a
/// block handed out), so that no live block looks cached even in a span
/// made before any heap (no block can be cached before a heap exists).
const UNDRAWN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The secret in every cached block's mark (drawn once, before the first
/// heap is made; never changed after: marks written before must match).
static MARK_SECRET: AtomicU64 = AtomicU64::new(UNDRAWN);

/// Draws the marks' secret if it is not drawn yet. Before a heap is made, so
/// before any block is cached; two threads at once agree on one secret.
pub fn draw_mark_secret() {
    if MARK_SECRET.load(Ordering::Acquire) == UNDRAWN {
        // Odd, so never 0.
        let secret = crate::os::random_u64() | 1;
        let _ = MARK_SECRET.compare_exchange(UNDRAWN, secret, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The mark a cached block carries in its link word. A block handed out
/// has 0 there until the program writes it; a span's list links are encoded
/// with the span's key: neither matches but by a chance of 2^-64. The same
/// for every block (mixing in the address would cost an instruction on
/// each path and hide nothing from a program that can read a freed block:
/// it knows the address).
#[inline(always)]
pub fn mark() -> u64 {
    MARK_SECRET.load(Ordering::Relaxed)
}

/// Classes that have a bin: those up to [`SMALL_TABLE_MAX`], which
/// `malloc` finds with one table load.
pub const CACHED_CLASSES: usize = {
    let mut class = 0;
    while class < CLASS_COUNT && class_size(class) <= SMALL_TABLE_MAX {
        class += 1;
    }
    class
};

/// Most blocks one bin holds. 16 gained nothing on the loops it is for
/// (they free batches of 25 to 130 blocks a class before they allocate
/// again); 256 took a tenth off their time.
pub const BIN_SLOTS: usize = 256;

/// About the most bytes one bin holds: bins of larger classes hold fewer
/// blocks, so a heap caches at most ~530 KiB.
pub const BIN_BYTES: usize = 32 * 1024;

/// Blocks class `class`'s bin holds at most (0: no bin).
pub const fn bin_limit(class: usize) -> u32 {
    if class >= CACHED_CLASSES {
        return 0;
    }
    let blocks = BIN_BYTES / class_size(class);
    if blocks > BIN_SLOTS {
        BIN_SLOTS as u32
    } else {
        blocks as u32
    }
}

/// Entries of the per-class arrays: one per value of a span's class byte,
/// so that the bounds check of a class read from a span compiles to
/// nothing; the entries past the classes have no bin (limit and count 0).
const BINS: usize = 256;
const _: () = assert!(CLASS_COUNT < BINS);

/// [`bin_limit`] of every class.
const BIN_LIMITS: [u32; BINS] = {
    let mut limits = [0; BINS];
    let mut class = 0;
    while class < CLASS_COUNT {
        limits[class] = bin_limit(class);
        class += 1;
    }
    limits
};

/// The bins of one heap.
#[repr(C)]
pub struct BlockCache {
    /// Blocks in each class's bin. Written by the heap's owner (or a
    /// claimer, or the destroyer of its arena, while the owner is away);
    /// statistics read them from other threads (atomic, relaxed: plain
    /// moves). Never above the class's limit.
    counts: [AtomicU32; BINS],
    /// [`BIN_LIMITS`], in the heap: `free` compares with it at an offset
    /// from the heap's address, with no address of a table to form.
    limits: [u32; BINS],
    /// Each bin's blocks, the most recently freed last. Only the entries
    /// below the count are meaningful. Owner (or claimer) only.
    slots: [[Cell<*mut u8>; BIN_SLOTS]; CACHED_CLASSES],
}

impl BlockCache {
    /// Every bin empty.
    pub const fn empty() -> BlockCache {
        BlockCache {
            counts: [const { AtomicU32::new(0) }; BINS],
            limits: BIN_LIMITS,
            slots: [const { [const { Cell::new(ptr::null_mut()) }; BIN_SLOTS] }; CACHED_CLASSES],
        }
    }

    /// Makes every bin empty, with its limit (the heap may be fresh, all
    /// zero bytes).
    pub fn reset(&mut self) {
        self.forget_all();
        self.limits = BIN_LIMITS;
    }

    /// Takes the block freed last into `class`'s bin, if any.
    #[inline(always)]
    pub fn pop(&self, class: usize) -> Option<*mut u8> {
        // SAFETY: `class.min(BINS - 1)` < BINS, the length of `counts`.
        let count = unsafe { self.counts.get_unchecked(class.min(BINS - 1)) };
        let n = count.load(Ordering::Relaxed).checked_sub(1)?;
        count.store(n, Ordering::Relaxed);
        // SAFETY: a count above 0 was raised by `push`, which only does so
        // below the class's limit: at most BIN_SLOTS, and 0 for a class
        // without a bin.
        Some(unsafe {
            self.slots
                .get_unchecked(class)
                .get_unchecked(n as usize)
                .get()
        })
    }

    /// Puts `p` in `class`'s bin; false (nothing changed) if the class has
    /// no bin or it is full.
    #[inline(always)]
    pub fn push(&self, class: usize, p: *mut u8) -> bool {
        // A class out of range (never one: spans hold theirs) lands on the
        // last entry, whose limit is 0.
        let class = class.min(BINS - 1);
        // SAFETY: `class` < BINS, the length of both arrays.
        let (count, limit) = unsafe {
            (
                self.counts.get_unchecked(class),
                *self.limits.get_unchecked(class),
            )
        };
        let n = count.load(Ordering::Relaxed);
        if n >= limit {
            return false;
        }
        // SAFETY: `n` < `limit`, which is at most BIN_SLOTS, and 0 for a
        // class without a bin.
        unsafe { self.slots.get_unchecked(class).get_unchecked(n as usize) }.set(p);
        count.store(n + 1, Ordering::Relaxed);
        true
    }

    /// Whether `class`'s bin holds `p`: the check of a suspected double
    /// free (a walk of at most [`BIN_SLOTS`] entries).
    pub fn holds(&self, class: usize, p: *mut u8) -> bool {
        let (Some(count), Some(bin)) = (self.counts.get(class), self.slots.get(class)) else {
            return false;
        };
        let n = count.load(Ordering::Relaxed) as usize;
        bin.iter().take(n).any(|slot| slot.get() == p)
    }

    /// Blocks and their bytes in all bins, read racily (statistics, from
    /// any thread).
    pub fn cached(&self) -> (usize, usize) {
        let mut blocks = 0;
        let mut bytes = 0;
        for (class, count) in self.counts.iter().enumerate().take(CACHED_CLASSES) {
            let n = count.load(Ordering::Relaxed) as usize;
            blocks += n;
            bytes += n * class_size(class);
        }
        (blocks, bytes)
    }

    /// Forgets every cached block (their spans are gone with the heap's
    /// arena, or about to be reset with the heap).
    pub fn forget_all(&self) {
        for count in &self.counts {
            count.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    fn block(i: usize) -> *mut u8 {
        (0x1000 + 16 * i) as *mut u8
    }

    #[test]
    fn the_mark_is_never_a_cleared_link_word() {
        assert_ne!(mark(), 0);
        draw_mark_secret();
        let drawn = mark();
        assert_ne!(drawn, 0);
        draw_mark_secret();
        assert_eq!(mark(), drawn, "drawn once");
    }

    #[test]
    fn bins_cover_the_table_sizes_within_their_bounds() {
        assert_eq!(class_size(CACHED_CLASSES - 1), SMALL_TABLE_MAX);
        for (class, &limit) in BIN_LIMITS.iter().enumerate() {
            let limit = limit as usize;
            assert!(limit <= BIN_SLOTS);
            assert!(limit == 0 || limit * class_size(class) <= BIN_BYTES);
            assert_eq!(limit == 0, class >= CACHED_CLASSES, "class {class}");
        }
    }

    #[test]
    fn a_bin_is_a_bounded_stack() {
        let cache = BlockCache::empty();
        let class = CACHED_CLASSES - 1;
        let limit = BIN_LIMITS[class] as usize;
        for i in 0..limit {
            assert!(cache.push(class, block(i)));
        }
        assert!(!cache.push(class, block(limit)), "past the limit");
        assert!(cache.holds(class, block(0)));
        assert!(!cache.holds(class, block(limit)));
        assert!(!cache.holds(0, block(0)), "another class's bin");
        assert_eq!(cache.cached(), (limit, limit * class_size(class)));
        for i in (0..limit).rev() {
            assert_eq!(cache.pop(class), Some(block(i)));
        }
        assert_eq!(cache.pop(class), None);
        assert!(!cache.holds(class, block(0)), "popped");
    }

    #[test]
    fn classes_without_a_bin_take_nothing() {
        let cache = BlockCache::empty();
        assert!(!cache.push(CACHED_CLASSES, block(0)));
        assert!(!cache.push(CLASS_COUNT, block(0)));
        assert!(!cache.push(usize::MAX, block(0)));
        assert_eq!(cache.pop(usize::MAX), None);
        assert_eq!(cache.pop(CACHED_CLASSES), None);
        assert_eq!(cache.pop(CLASS_COUNT), None);
        assert!(cache.push(0, block(1)));
        cache.forget_all();
        assert_eq!(cache.pop(0), None);
        assert_eq!(cache.cached(), (0, 0));
    }
}
