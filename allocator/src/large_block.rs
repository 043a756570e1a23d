//! Large blocks' headers and the lists that hold them: an arena's live
//! blocks and its cache of freed ones (see `large` for how blocks are
//! allocated, freed and resized). Below the arena, which holds these lists
//! under its lock; nothing here takes a lock.

use core::ptr;

use crate::os::{self, PAGE_SIZE};
use crate::segment::{RegionMark, SegmentHeader, OWNERSHIP};
use crate::stats;

/// How many freed large blocks an arena keeps. Measured on the burst
/// scenario (`mem_scenario burst`, 1 KiB-8 MiB buffers, 7 runs each): 8
/// slots took about 268 ms, 16 about 212, 32 about 167, 64 about 152. The
/// cache is part of every arena's static state (4097 of them, in `.bss`,
/// which counts in the process's VSZ), so its per-slot figures are kept
/// small: 32 slots take 648 bytes per arena (8 slots of bare pointers took
/// 64).
pub const CACHE_SLOTS: usize = 32;
const _: () = assert!(CACHE_SLOTS <= 64, "the cache's filled mask is a u64");
/// `filled_mask` with every slot filled.
const ALL_SLOTS: u64 = if CACHE_SLOTS == 64 {
    u64::MAX
} else {
    (1u64 << CACHE_SLOTS) - 1
};
/// Most bytes of mappings the cache keeps.
const CACHE_MAX_BYTES: usize = 128 << 20;
/// The biggest cached block that serves a request of `size` bytes whole:
/// half as big again. A bigger one is trimmed to fit when reused, or (while
/// blocks are retained) passed over: the pages of its tail, resident from an
/// earlier use, would count in the program's RSS for nothing until it is
/// freed again. Measured with 4x (`buffer_churn`, `malloc_large` in
/// `benches/dropin`, 9 interleaved runs): peak RSS 363 -> 321 MiB and
/// 426 -> 396 MiB, page faults 93 k -> 83 k and 109 k -> 105 k; 1.25x
/// passed over too much (faults 96 k).
pub(crate) fn whole_reuse_limit(size: usize) -> usize {
    size.saturating_add(size / 2)
}
/// How many retained blocks (the newest) a search looks at.
const RETAINED_LOOKS: usize = 64;
/// How long a freed large block is kept for reuse.
pub const CACHE_MAX_AGE_MS: u64 = 1000;

#[repr(C)]
pub struct LargeBlock {
    pub header: SegmentHeader,
    /// The whole mapping, which contains this header and the block.
    pub(crate) map_base: *mut u8,
    pub(crate) map_size: usize,
    pub(crate) block: *mut u8,
    /// Header one segment below the block (alignment of a segment or more).
    pub(crate) shifted: bool,
    /// Bytes of `PROT_NONE` guard at the end of the mapping (secure mode:
    /// one page; else 0). Part of `map_size`, not of the block.
    pub(crate) guard: usize,
    /// Freed and parked in the cache.
    pub(crate) cached: bool,
    pub(crate) freed_at_ms: u64,
    /// Links in the arena's live list (while not cached).
    pub(crate) next: *mut LargeBlock,
    pub(crate) prev: *mut LargeBlock,
}

impl LargeBlock {
    /// Bytes the caller may use.
    pub fn usable(&self) -> usize {
        self.map_base as usize + self.map_size - self.guard - self.block as usize
    }

    /// Bytes of the block's mapping resident now.
    fn resident_bytes(&self) -> usize {
        // SAFETY: a live block's mapping is [map_base, map_base + map_size).
        unsafe { os::resident_bytes_in(self.map_base, self.map_size) }
    }

    pub fn block(&self) -> *mut u8 {
        self.block
    }

    pub(crate) fn offset(&self) -> usize {
        self.block as usize - self.map_base as usize
    }
}

/// Rounds a mapping size up to a page, then to one of four steps per
/// doubling, so that repeated growth by small amounts stays in place.
pub(crate) fn round_map_size(bytes: usize) -> Option<usize> {
    let pages = bytes.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1);
    if pages <= 16 * PAGE_SIZE {
        return Some(pages);
    }
    let top = usize::BITS - 1 - pages.leading_zeros();
    let step = 1usize << (top - 2);
    pages.checked_add(step - 1).map(|v| v & !(step - 1))
}

/// Where the ownership map marks a block, and how: at the block for one
/// aligned to a segment or more (its header one segment below), else at
/// the mapping's base.
fn map_entry(header: *mut LargeBlock) -> (usize, RegionMark) {
    // SAFETY: a live header of ours.
    let b = unsafe { &*header };
    if b.shifted {
        (b.block as usize, RegionMark::LargeShifted)
    } else {
        (b.map_base as usize, RegionMark::Large)
    }
}

pub(crate) fn register(header: *mut LargeBlock) {
    let (base, mark) = map_entry(header);
    OWNERSHIP.insert(base, mark);
}

pub(crate) fn unregister(header: *mut LargeBlock) {
    let (base, mark) = map_entry(header);
    OWNERSHIP.remove(base, mark);
}

/// A set of large blocks an arena holds: what its figures sum over them.
/// Arena lock.
pub trait BlockSet {
    /// Calls `f` on every block of the set.
    fn for_each(&self, f: impl FnMut(&LargeBlock));

    /// Bytes of the blocks resident now.
    fn resident_bytes(&self) -> usize {
        let mut resident = 0;
        self.for_each(|b| resident += b.resident_bytes());
        resident
    }

    /// Bytes the blocks map.
    fn mapped_bytes(&self) -> usize {
        let mut mapped = 0;
        self.for_each(|b| mapped += b.map_size);
        mapped
    }
}

/// Calls `f` on `first` and the blocks chained after it through `next`.
///
/// # Safety
/// The chain holds live headers (arena lock, or taken out of every list).
unsafe fn for_each_chained(first: *mut LargeBlock, mut f: impl FnMut(&LargeBlock)) {
    let mut block = first;
    while !block.is_null() {
        // SAFETY: the caller's promise.
        let b = unsafe { &*block };
        f(b);
        block = b.next;
    }
}

/// Unmaps a block that is in no list.
pub(crate) fn unmap_block(header: *mut LargeBlock) {
    unregister(header);
    // SAFETY: a live header of ours; read before the mapping goes.
    let (base, size) = unsafe { ((*header).map_base, (*header).map_size) };
    os::unmap(base, size);
    stats::mapped_sub(size);
}

/// Unmaps a chain of blocks linked through `next` (taken out of a cache's
/// retained list, outside the arena lock); returns the bytes unmapped.
pub(crate) fn unmap_chain(mut block: *mut LargeBlock) -> usize {
    let mut unmapped = 0;
    while !block.is_null() {
        // SAFETY: chained blocks are live headers nobody else uses; the
        // link is read before the mapping goes.
        let (next, size) = unsafe { ((*block).next, (*block).map_size) };
        unmapped += size;
        unmap_block(block);
        block = next;
    }
    unmapped
}

/// Unmaps blocks taken out of a cache (outside the arena lock); returns the
/// bytes unmapped.
pub(crate) fn unmap_all<const N: usize>(blocks: [Option<*mut LargeBlock>; N]) -> usize {
    let mut unmapped = 0;
    for block in blocks.into_iter().flatten() {
        // SAFETY: blocks taken out of a cache are live headers nobody uses.
        unmapped += unsafe { (*block).map_size };
        unmap_block(block);
    }
    unmapped
}

/// An arena's live large blocks, linked through their headers. Arena lock.
pub struct LargeList {
    head: *mut LargeBlock,
}

impl LargeList {
    pub const EMPTY: LargeList = LargeList {
        head: ptr::null_mut(),
    };

    /// # Safety
    /// `block` is a live header in no list.
    pub(crate) unsafe fn push(&mut self, block: *mut LargeBlock) {
        // SAFETY: the caller's guarantee; members are live headers.
        unsafe {
            (*block).prev = ptr::null_mut();
            (*block).next = self.head;
            if !self.head.is_null() {
                (*self.head).prev = block;
            }
        }
        self.head = block;
    }

    /// # Safety
    /// `block` is a member of this list.
    pub(crate) unsafe fn remove(&mut self, block: *mut LargeBlock) {
        // SAFETY: members and their neighbours are live headers.
        unsafe {
            let (prev, next) = ((*block).prev, (*block).next);
            if prev.is_null() {
                self.head = next;
            } else {
                (*prev).next = next;
            }
            if !next.is_null() {
                (*next).prev = prev;
            }
        }
    }

    /// Unmaps every block in the list (the arena is being destroyed) and
    /// returns the bytes unmapped.
    pub fn unmap_all(&mut self) -> usize {
        let mut released = 0;
        while !self.head.is_null() {
            let block = self.head;
            // SAFETY: the head is a member.
            unsafe { self.remove(block) };
            // SAFETY: a live header, now in no list.
            let b = unsafe { &*block };
            stats::large_live_sub(b.usable());
            released += b.map_size;
            unmap_block(block);
        }
        released
    }
}

impl BlockSet for LargeList {
    fn for_each(&self, f: impl FnMut(&LargeBlock)) {
        // SAFETY: members are live headers, linked through `next`.
        unsafe { for_each_chained(self.head, f) }
    }
}

/// Freed large blocks of one arena, kept for reuse for a short time.
///
/// What the searches compare (usable size, mapping size, time freed) is kept
/// here beside each block, so that a search reads these arrays and touches
/// no block's header (each on a page of its own) except the one it takes.
pub struct LargeCache {
    slots: [*mut LargeBlock; CACHE_SLOTS],
    /// Bit `i` set: slot `i` holds a block (searches visit only these).
    filled_mask: u64,
    /// The blocks' mapping sizes in pages (a mapping of 16 TiB or more is
    /// never cached: it is over `CACHE_MAX_BYTES`).
    map_pages: [u32; CACHE_SLOTS],
    freed_ms: [u64; CACHE_SLOTS],
    bytes: usize,
    /// When the longest-cached block was freed (0: empty, so that arenas
    /// stay all-zero statics in `.bss`), so that most calls need not scan
    /// for expired blocks.
    earliest_freed_ms: u64,
    /// Blocks past the slots' bounds, kept while the housekeeper runs
    /// (which unmaps them once old): newest first, linked through their
    /// headers' `next`.
    retained: *mut LargeBlock,
}

impl LargeCache {
    pub const EMPTY: LargeCache = LargeCache {
        slots: [ptr::null_mut(); CACHE_SLOTS],
        filled_mask: 0,
        map_pages: [0; CACHE_SLOTS],
        freed_ms: [0; CACHE_SLOTS],
        bytes: 0,
        earliest_freed_ms: 0,
        retained: ptr::null_mut(),
    };

    pub fn is_empty(&self) -> bool {
        self.bytes == 0 && self.retained.is_null()
    }

    /// Slot `i` (null when empty or out of range: indexing that cannot panic).
    fn slot(&self, i: usize) -> *mut LargeBlock {
        self.slots.get(i).copied().unwrap_or(ptr::null_mut())
    }

    /// The filled slots.
    fn filled(&self) -> impl Iterator<Item = usize> {
        let mut bits = self.filled_mask;
        core::iter::from_fn(move || {
            let i = bits.trailing_zeros() as usize;
            bits &= bits.wrapping_sub(1);
            (i < 64).then_some(i)
        })
    }

    /// Mapping size of slot `i`, in bytes.
    fn map_size(&self, i: usize) -> usize {
        self.map_pages
            .get(i)
            .map_or(usize::MAX, |&p| p as usize * PAGE_SIZE)
    }

    /// Takes the smallest cached block that holds `size` bytes at `align`
    /// (the caller trims it if it is much bigger).
    pub(crate) fn take(
        &mut self,
        size: usize,
        align: usize,
        max_map: usize,
    ) -> Option<*mut LargeBlock> {
        let mut best: Option<(usize, usize)> = None;
        for i in self.filled() {
            let map_size = self.map_size(i);
            // A block's usable bytes are its mapping less the header page
            // (and any alignment padding): never more than the mapping.
            if map_size < size || map_size > max_map {
                continue;
            }
            if best.is_some_and(|(_, best_map)| map_size >= best_map) {
                continue;
            }
            // Only a better candidate's header is read.
            // SAFETY: filled slots hold live cached headers.
            let b = unsafe { &*self.slot(i) };
            if b.usable() >= size && (b.block as usize).is_multiple_of(align) {
                best = Some((i, map_size));
            }
        }
        match best {
            Some((i, _)) => Some(self.evict(i)),
            None => self.take_retained(size, align, max_map),
        }
    }

    /// [`LargeCache::take`] from the retained blocks: the smallest that fits
    /// among the newest few.
    pub(crate) fn take_retained(
        &mut self,
        size: usize,
        align: usize,
        max_map: usize,
    ) -> Option<*mut LargeBlock> {
        self.take_retained_best(|b, best_map| {
            b.map_size <= max_map
                && b.usable() >= size
                && (b.block as usize).is_multiple_of(align)
                && best_map.is_none_or(|m| b.map_size < m)
        })
    }

    /// Takes the retained block that `better` prefers among the newest
    /// [`RETAINED_LOOKS`] (a bounded walk, so a long list costs an
    /// allocation no more than a few looks): `better(block, best so far's
    /// mapping size)` says whether `block` beats it.
    pub(crate) fn take_retained_best(
        &mut self,
        better: impl Fn(&LargeBlock, Option<usize>) -> bool,
    ) -> Option<*mut LargeBlock> {
        let mut best: Option<(*mut LargeBlock, *mut LargeBlock, usize)> = None;
        let (mut before, mut block) = (ptr::null_mut::<LargeBlock>(), self.retained);
        for _ in 0..RETAINED_LOOKS {
            if block.is_null() {
                break;
            }
            // SAFETY: retained blocks are live cached headers.
            let b = unsafe { &*block };
            if better(b, best.map(|(_, _, map)| map)) {
                best = Some((before, block, b.map_size));
            }
            (before, block) = (block, b.next);
        }
        let (before, block, _) = best?;
        Some(self.unlink_retained(before, block))
    }

    /// Takes the biggest block with fewer than `size` usable bytes: a
    /// retained one if there is one, else one of the slots.
    pub(crate) fn take_below(&mut self, size: usize) -> Option<*mut LargeBlock> {
        if let Some(block) = self.take_retained_below(size) {
            return Some(block);
        }
        let mut best: Option<(usize, usize)> = None;
        for i in self.filled() {
            let map_size = self.map_size(i);
            if best.is_some_and(|(_, best_map)| map_size <= best_map) {
                continue;
            }
            // SAFETY: filled slots hold live cached headers.
            if unsafe { (*self.slot(i)).usable() } < size {
                best = Some((i, map_size));
            }
        }
        best.map(|(i, _)| self.evict(i))
    }

    /// Takes the biggest retained block with fewer than `size` usable bytes
    /// among the newest few.
    pub(crate) fn take_retained_below(&mut self, size: usize) -> Option<*mut LargeBlock> {
        self.take_retained_best(|b, best_map| {
            b.usable() < size && best_map.is_none_or(|m| b.map_size > m)
        })
    }

    /// Takes `block` out of the retained list; `before` is its predecessor
    /// (null for the head).
    fn unlink_retained(
        &mut self,
        before: *mut LargeBlock,
        block: *mut LargeBlock,
    ) -> *mut LargeBlock {
        // SAFETY: `block` and a non-null `before` are retained headers.
        unsafe {
            let next = (*block).next;
            if before.is_null() {
                self.retained = next;
            } else {
                (*before).next = next;
            }
            (*block).next = ptr::null_mut();
        }
        block
    }

    /// Takes retained blocks of at least `bytes` of mappings in all, the
    /// biggest of the newest few first (16 at most), as a chain for
    /// [`unmap_chain`].
    pub(crate) fn take_retained_bytes(&mut self, bytes: usize) -> *mut LargeBlock {
        let mut chain = ptr::null_mut::<LargeBlock>();
        let mut taken = 0;
        for _ in 0..16 {
            if taken >= bytes {
                break;
            }
            let Some(block) =
                self.take_retained_best(|b, best_map| best_map.is_none_or(|m| b.map_size > m))
            else {
                break;
            };
            // SAFETY: unlinked: ours to chain.
            unsafe {
                taken += (*block).map_size;
                (*block).next = chain;
            }
            chain = block;
        }
        chain
    }

    /// Keeps `block` (a cached header in no list) in the retained list.
    pub(crate) fn retain(&mut self, block: *mut LargeBlock) {
        // SAFETY: a live cached header, in no list.
        unsafe { (*block).next = self.retained };
        self.retained = block;
    }

    /// Takes the retained blocks freed at `freed_by_ms` or earlier out of
    /// the list, as a chain for `unmap_chain` (outside the lock).
    pub fn take_retained_freed_by(&mut self, freed_by_ms: u64) -> *mut LargeBlock {
        let mut old = ptr::null_mut::<LargeBlock>();
        let mut link: *mut *mut LargeBlock = &mut self.retained;
        // SAFETY: the list holds live cached headers; `link` points at the
        // head or at a member's `next`.
        unsafe {
            while !(*link).is_null() {
                let block = *link;
                if (*block).freed_at_ms <= freed_by_ms {
                    *link = (*block).next;
                    (*block).next = old;
                    old = block;
                } else {
                    link = &mut (*block).next;
                }
            }
        }
        old
    }

    /// Caches `block`; returns the blocks that must be unmapped to keep the
    /// cache within its bounds (expired, or the smallest when full). With
    /// `retain` (the housekeeper runs), blocks past the bounds are retained
    /// instead, for the housekeeper to unmap once they are old.
    pub(crate) fn insert(
        &mut self,
        block: *mut LargeBlock,
        retain: bool,
    ) -> [Option<*mut LargeBlock>; CACHE_SLOTS + 1] {
        let mut out = [None; CACHE_SLOTS + 1];
        let mut n = 0;
        // SAFETY: a live header handed over by `free`.
        let (now, size) = unsafe { ((*block).freed_at_ms, (*block).map_size) };
        if size > CACHE_MAX_BYTES {
            if retain {
                self.retain(block);
            } else {
                out[0] = Some(block);
            }
            return out;
        }
        for victim in self.take_expired(now).into_iter().flatten() {
            if let Some(o) = out.get_mut(n) {
                *o = Some(victim);
            }
            n += 1;
        }
        // Over the bounds, drop the smallest blocks first: a big cached block
        // serves any smaller request, a small one only its own size.
        while self.bytes + size > CACHE_MAX_BYTES || self.filled_mask == ALL_SLOTS {
            let Some(smallest) = self.smallest() else {
                break;
            };
            let victim = self.evict(smallest);
            if retain {
                self.retain(victim);
                continue;
            }
            if let Some(o) = out.get_mut(n) {
                *o = Some(victim);
            }
            n += 1;
        }
        let free_slot = self.filled_mask.trailing_ones() as usize;
        if let (Some(slot), Some(pages), Some(freed)) = (
            self.slots.get_mut(free_slot),
            self.map_pages.get_mut(free_slot),
            self.freed_ms.get_mut(free_slot),
        ) {
            *slot = block;
            // Fits: `size` is at most CACHE_MAX_BYTES.
            *pages = (size / PAGE_SIZE) as u32;
            *freed = now;
            self.filled_mask |= 1 << free_slot;
        }
        self.bytes += size;
        self.earliest_freed_ms = match self.earliest_freed_ms {
            0 => now,
            earliest => earliest.min(now),
        };
        out
    }

    /// Removes the blocks cached for longer than `CACHE_MAX_AGE_MS`; the
    /// caller unmaps them (outside the lock).
    pub(crate) fn take_expired(&mut self, now_ms: u64) -> [Option<*mut LargeBlock>; CACHE_SLOTS] {
        self.take_freed_by(now_ms.saturating_sub(CACHE_MAX_AGE_MS + 1))
    }

    /// Takes out the cached blocks freed at `freed_by_ms` or earlier; the
    /// caller unmaps them outside the lock (`unmap_all`).
    pub fn take_freed_by(&mut self, freed_by_ms: u64) -> [Option<*mut LargeBlock>; CACHE_SLOTS] {
        let mut out = [None; CACHE_SLOTS];
        if self.earliest_freed_ms == 0 || self.earliest_freed_ms > freed_by_ms {
            return out;
        }
        for i in self.filled() {
            let old = self.freed_ms.get(i).is_some_and(|&t| t <= freed_by_ms);
            if let (true, Some(o)) = (old, out.get_mut(i)) {
                *o = Some(self.evict(i));
            }
        }
        out
    }

    /// The slot whose figure `key` is the least.
    fn least(&self, key: &[u64; CACHE_SLOTS]) -> Option<usize> {
        self.filled()
            .min_by_key(|&i| key.get(i).copied().unwrap_or(u64::MAX))
    }

    fn smallest(&self) -> Option<usize> {
        self.filled().min_by_key(|&i| self.map_size(i))
    }

    fn evict(&mut self, i: usize) -> *mut LargeBlock {
        let block = self.slot(i);
        if block.is_null() {
            return block;
        }
        if let Some(slot) = self.slots.get_mut(i) {
            *slot = ptr::null_mut();
        }
        self.filled_mask &= !(1u64 << (i % 64));
        self.bytes -= self.map_size(i);
        self.earliest_freed_ms = self
            .least(&self.freed_ms)
            .and_then(|j| self.freed_ms.get(j).copied())
            .unwrap_or(0);
        block
    }

    /// Unmaps every cached block; returns the bytes unmapped.
    pub fn release_all(&mut self) -> usize {
        let mut released = unmap_chain(self.take_retained_freed_by(u64::MAX));
        for i in 0..CACHE_SLOTS {
            if !self.slot(i).is_null() {
                let block = self.evict(i);
                // SAFETY: was a live cached header.
                released += unsafe { (*block).map_size };
                unmap_block(block);
            }
        }
        released
    }
}

impl BlockSet for LargeCache {
    /// Every cached block, retained ones too.
    fn for_each(&self, mut f: impl FnMut(&LargeBlock)) {
        // SAFETY: retained blocks are live cached headers, linked through
        // `next`.
        unsafe { for_each_chained(self.retained, &mut f) };
        for &slot in &self.slots {
            // SAFETY: non-null slots are live cached headers.
            if let Some(b) = unsafe { slot.as_ref() } {
                f(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_sizes_round_to_pages_then_quarter_steps() {
        assert_eq!(round_map_size(1), Some(PAGE_SIZE));
        assert_eq!(round_map_size(16 * PAGE_SIZE), Some(16 * PAGE_SIZE));
        assert_eq!(round_map_size(129 * 1024), Some(160 * 1024));
        assert_eq!(round_map_size(1 << 20), Some(1 << 20));
        assert_eq!(round_map_size((1 << 20) + 1), Some(1280 * 1024));
        assert_eq!(round_map_size(usize::MAX - 10), None);
        for n in [70_000usize, 1 << 21, 5_000_000, 25 << 20] {
            let r = round_map_size(n).unwrap();
            assert!(r >= n && (r - n) * 4 <= r, "{n} -> {r}");
        }
    }
}
