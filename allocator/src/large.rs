//! Large blocks (over `MEDIUM_MAX`): one mapping each, straight from the OS.
//!
//! ```text
//!  mapping (segment-aligned)
//!  ┌────────────┬──────────────────────────────────────┐
//!  │ LargeBlock │ block (user data) ...                │
//!  │ header     │ at max(4 KiB, alignment)             │
//!  └────────────┴──────────────────────────────────────┘
//! ```
//! The header sits where a segment header would, so `free` finds it with the
//! same mask. A block aligned to a segment or more sits one segment past its
//! header and is marked in the ownership map's `shifted` half.
//!
//! Mapping sizes are rounded up to four steps per doubling, so `realloc`
//! growth usually fits in place; otherwise `mremap` grows the mapping in
//! place or moves its pages without copying. Freed blocks wait in their
//! arena's [`LargeCache`] for a bounded time: a program that allocates and
//! frees big buffers in a loop reuses warm pages instead of paying
//! mmap + munmap + page faults each time.

use core::ptr;

use crate::arena::Arena;
use crate::os::{self, PAGE_SIZE};
use crate::segment::{SegmentHeader, SegmentKind, OWNERSHIP, SEGMENT_SIZE};
use crate::stats;

/// How many freed large blocks an arena keeps.
const CACHE_SLOTS: usize = 8;
/// Most bytes of mappings the cache keeps.
const CACHE_MAX_BYTES: usize = 128 << 20;
/// A cached block more than this many times the request is trimmed when
/// reused.
const SHRINK_RATIO: usize = 4;
/// How long a freed large block is kept for reuse.
pub const CACHE_MAX_AGE_MS: u64 = 1000;

#[repr(C)]
pub struct LargeBlock {
    pub header: SegmentHeader,
    /// The whole mapping, which contains this header and the block.
    map_base: *mut u8,
    map_size: usize,
    block: *mut u8,
    /// Header one segment below the block (alignment of a segment or more).
    shifted: bool,
    /// Freed and parked in the cache.
    cached: bool,
    freed_at_ms: u64,
}

impl LargeBlock {
    /// Bytes the caller may use.
    pub fn usable(&self) -> usize {
        self.map_base as usize + self.map_size - self.block as usize
    }

    pub fn block(&self) -> *mut u8 {
        self.block
    }

    fn offset(&self) -> usize {
        self.block as usize - self.map_base as usize
    }
}

/// Rounds a mapping size up to a page, then to one of four steps per
/// doubling, so that repeated growth by small amounts stays in place.
fn round_map_size(bytes: usize) -> Option<usize> {
    let pages = bytes.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1);
    if pages <= 16 * PAGE_SIZE {
        return Some(pages);
    }
    let top = usize::BITS - 1 - pages.leading_zeros();
    let step = 1usize << (top - 2);
    pages.checked_add(step - 1).map(|v| v & !(step - 1))
}

/// Allocates a large block of at least `size` bytes aligned to `align`.
/// Returns the block and whether its memory is known to be zero.
pub fn alloc(arena: &'static Arena, size: usize, align: usize) -> Option<(*mut u8, bool)> {
    let align = align.max(16);
    let (reused, expired) = {
        let mut state = arena.state.lock();
        let cache = &mut state.large_cache;
        if cache.is_empty() {
            (None, [None; CACHE_SLOTS])
        } else {
            let expired = cache.take_expired(os::now_ms());
            (cache.take(size, align), expired)
        }
    };
    for victim in expired.into_iter().flatten() {
        unmap_block(victim);
    }
    if let Some(block) = reused {
        // SAFETY: cached headers are live mappings of ours, and this one is
        // no longer in the cache.
        let b = unsafe { &mut *block };
        b.cached = false;
        // A block much bigger than the request gives its tail back rather
        // than pin it; its head pages stay warm.
        if b.usable() / SHRINK_RATIO > size {
            if let Some(new_map) = round_map_size(b.offset() + size) {
                if new_map < b.map_size && os::remap_in_place(b.map_base, b.map_size, new_map) {
                    stats::mapped_sub(b.map_size - new_map);
                    b.map_size = new_map;
                }
            }
        }
        stats::large_live_add(b.usable());
        return Some((b.block, false));
    }
    let block = map_block(arena.as_ptr(), size, align)?;
    // SAFETY: just mapped.
    let b = unsafe { &*block };
    stats::large_live_add(b.usable());
    Some((b.block, true))
}

/// Maps a fresh large block.
fn map_block(arena: *const Arena, size: usize, align: usize) -> Option<*mut LargeBlock> {
    let header: *mut LargeBlock;
    let map_base;
    let map_size;
    let block;
    let shifted = align >= SEGMENT_SIZE;
    if !shifted {
        let offset = align.max(PAGE_SIZE);
        map_size = round_map_size(offset.checked_add(size)?)?;
        map_base = os::map_aligned(map_size, SEGMENT_SIZE)?;
        header = map_base.cast();
        block = (map_base as usize + offset) as *mut u8;
    } else {
        // Map enough to place the block on an `align` boundary with one
        // segment below it for the header, then trim both ends.
        let body = round_map_size(size)?;
        let padded = body.checked_add(SEGMENT_SIZE)?.checked_add(align)?;
        let raw = os::map(padded)? as usize;
        let block_addr = (raw + SEGMENT_SIZE + align - 1) & !(align - 1);
        let head_addr = block_addr - SEGMENT_SIZE;
        if head_addr > raw {
            os::unmap(raw as *mut u8, head_addr - raw);
        }
        let end = block_addr + body;
        if raw + padded > end {
            os::unmap(end as *mut u8, raw + padded - end);
        }
        map_base = head_addr as *mut u8;
        map_size = end - head_addr;
        header = map_base.cast();
        block = block_addr as *mut u8;
    }
    // SAFETY: the first page of the mapping is ours and zeroed.
    unsafe {
        header.write(LargeBlock {
            header: SegmentHeader {
                kind: SegmentKind::Large,
                arena,
            },
            map_base,
            map_size,
            block,
            shifted,
            cached: false,
            freed_at_ms: 0,
        });
    }
    register(header);
    stats::mapped_add(map_size);
    Some(header)
}

fn register(header: *mut LargeBlock) {
    // SAFETY: a live header of ours.
    let b = unsafe { &*header };
    if b.shifted {
        OWNERSHIP.insert(b.block as usize, true);
    } else {
        OWNERSHIP.insert(b.map_base as usize, false);
    }
}

fn unregister(header: *mut LargeBlock) {
    // SAFETY: a live header of ours.
    let b = unsafe { &*header };
    if b.shifted {
        OWNERSHIP.remove(b.block as usize, true);
    } else {
        OWNERSHIP.remove(b.map_base as usize, false);
    }
}

fn unmap_block(header: *mut LargeBlock) {
    unregister(header);
    // SAFETY: a live header of ours; read before the mapping goes.
    let (base, size) = unsafe { ((*header).map_base, (*header).map_size) };
    os::unmap(base, size);
    stats::mapped_sub(size);
}

/// Checks that `p` is the block of `header`, and not already freed.
fn validate(header: *mut LargeBlock, p: *mut u8, what: &str) {
    // SAFETY: the ownership map says `header` is a live large header.
    let b = unsafe { &*header };
    if b.block != p {
        crate::diag::fatal_pointer(what, "pointer is not the start of a block", p);
    }
    if b.cached {
        crate::diag::fatal_pointer(what, "double free of a large block", p);
    }
}

/// Frees the large block `p` whose header is `header`.
///
/// # Safety
/// `header` is the live large-block header that the ownership map gives
/// for `p`.
pub unsafe fn free(header: *mut LargeBlock, p: *mut u8) {
    validate(header, p, "free");
    // SAFETY: validated live header.
    let b = unsafe { &mut *header };
    stats::large_live_sub(b.usable());
    // SAFETY: a large block's arena outlives its blocks.
    let arena = unsafe { &*b.header.arena };
    if b.shifted {
        // Cached blocks are reused only without a shifted header; do not let
        // one occupy the cache.
        unmap_block(header);
        return;
    }
    let evicted = {
        let mut state = arena.state.lock();
        b.cached = true;
        b.freed_at_ms = os::now_ms();
        state.large_cache.insert(header)
    };
    for victim in evicted.into_iter().flatten() {
        unmap_block(victim);
    }
}

/// Usable size of the large block `p`.
///
/// # Safety
/// `header` is the live large-block header that the ownership map gives
/// for `p`.
pub unsafe fn usable_size(header: *mut LargeBlock, p: *mut u8) -> usize {
    validate(header, p, "malloc_usable_size");
    // SAFETY: validated live header.
    unsafe { (*header).usable() }
}

/// Resizes the large block `p` to at least `new_size` bytes (still large)
/// without copying: in place, or by moving its pages with `mremap`. Returns
/// `None` if neither works; the block is then unchanged.
///
/// # Safety
/// `header` is the live large-block header that the ownership map gives
/// for `p`.
pub unsafe fn resize(header: *mut LargeBlock, p: *mut u8, new_size: usize) -> Option<*mut u8> {
    validate(header, p, "realloc");
    // SAFETY: validated live header.
    let b = unsafe { &mut *header };
    let old_usable = b.usable();
    if new_size <= old_usable {
        // Shrink the mapping when more than half would be idle.
        if new_size < old_usable / 2 && !b.shifted {
            let new_map = round_map_size(b.offset() + new_size)?;
            if new_map < b.map_size && os::remap_in_place(b.map_base, b.map_size, new_map) {
                stats::mapped_sub(b.map_size - new_map);
                b.map_size = new_map;
                stats::large_live_resize(old_usable, b.usable());
            }
        }
        return Some(p);
    }
    if b.shifted {
        return None;
    }
    let new_map = round_map_size(b.offset().checked_add(new_size)?)?;
    if os::remap_in_place(b.map_base, b.map_size, new_map) {
        stats::mapped_add(new_map - b.map_size);
        b.map_size = new_map;
        stats::large_live_resize(old_usable, b.usable());
        return Some(p);
    }
    // Move the pages to a fresh segment-aligned reservation.
    let dest = os::map_aligned(new_map, SEGMENT_SIZE)?;
    let (old_base, old_size, offset) = (b.map_base, b.map_size, b.offset());
    unregister(header);
    if !os::remap_to(old_base, old_size, new_map, dest) {
        // The kernel may already have unmapped `dest` before failing, and
        // another thread may have mapped something there since: never unmap
        // it. The reservation is untouched address space; this path is rare
        // (a block whose mapping was split by the program, e.g. mprotect).
        register(header);
        return None;
    }
    let moved = dest.cast::<LargeBlock>();
    // SAFETY: the header moved with its pages to `dest`.
    let m = unsafe { &mut *moved };
    m.map_base = dest;
    m.map_size = new_map;
    m.block = (dest as usize + offset) as *mut u8;
    register(moved);
    stats::mapped_add(new_map - old_size);
    stats::large_live_resize(old_usable, m.usable());
    Some(m.block)
}

/// Freed large blocks of one arena, kept for reuse for a short time.
pub struct LargeCache {
    slots: [*mut LargeBlock; CACHE_SLOTS],
    bytes: usize,
    /// When the longest-cached block was freed (0: empty, so that arenas
    /// stay all-zero statics in `.bss`), so that most calls need not scan
    /// for expired blocks.
    earliest_freed_ms: u64,
}

impl LargeCache {
    pub const EMPTY: LargeCache = LargeCache {
        slots: [ptr::null_mut(); CACHE_SLOTS],
        bytes: 0,
        earliest_freed_ms: 0,
    };

    fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Slot `i` (null when empty or out of range: indexing that cannot panic).
    fn slot(&self, i: usize) -> *mut LargeBlock {
        self.slots.get(i).copied().unwrap_or(ptr::null_mut())
    }

    /// Takes the smallest cached block that holds `size` bytes at `align`
    /// (the caller trims it if it is much bigger).
    fn take(&mut self, size: usize, align: usize) -> Option<*mut LargeBlock> {
        let mut best: Option<(usize, usize)> = None;
        for (i, &slot) in self.slots.iter().enumerate() {
            if slot.is_null() {
                continue;
            }
            // SAFETY: non-null slots are live cached headers.
            let b = unsafe { &*slot };
            let usable = b.usable();
            let fits = usable >= size && (b.block as usize).is_multiple_of(align);
            if fits && best.is_none_or(|(_, best_usable)| usable < best_usable) {
                best = Some((i, usable));
            }
        }
        let (i, _) = best?;
        Some(self.evict(i))
    }

    /// Caches `block`; returns the blocks that must be unmapped to keep the
    /// cache within its bounds (expired, or oldest when full).
    fn insert(&mut self, block: *mut LargeBlock) -> [Option<*mut LargeBlock>; CACHE_SLOTS + 1] {
        let mut out = [None; CACHE_SLOTS + 1];
        let mut n = 0;
        // SAFETY: a live header handed over by `free`.
        let now = unsafe { (*block).freed_at_ms };
        // SAFETY: as above.
        let size = unsafe { (*block).map_size };
        if size > CACHE_MAX_BYTES {
            out[0] = Some(block);
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
        while self.bytes + size > CACHE_MAX_BYTES || self.slots.iter().all(|s| !s.is_null()) {
            let Some(smallest) = self.smallest() else {
                break;
            };
            let victim = self.evict(smallest);
            if let Some(o) = out.get_mut(n) {
                *o = Some(victim);
            }
            n += 1;
        }
        let free_slot = self.slots.iter().position(|s| s.is_null()).unwrap_or(0);
        self.slots[free_slot] = block;
        self.bytes += size;
        self.earliest_freed_ms = match self.earliest_freed_ms {
            0 => now,
            earliest => earliest.min(now),
        };
        out
    }

    /// Removes the blocks cached for longer than `CACHE_MAX_AGE_MS`; the
    /// caller unmaps them (outside the lock).
    fn take_expired(&mut self, now_ms: u64) -> [Option<*mut LargeBlock>; CACHE_SLOTS] {
        let mut out = [None; CACHE_SLOTS];
        if self.earliest_freed_ms == 0
            || now_ms.saturating_sub(self.earliest_freed_ms) <= CACHE_MAX_AGE_MS
        {
            return out;
        }
        for (i, out) in out.iter_mut().enumerate() {
            let slot = self.slot(i);
            if slot.is_null() {
                continue;
            }
            // SAFETY: non-null slots are live cached headers.
            let age = now_ms.saturating_sub(unsafe { (*slot).freed_at_ms });
            if age > CACHE_MAX_AGE_MS {
                *out = Some(self.evict(i));
            }
        }
        out
    }

    fn smallest(&self) -> Option<usize> {
        let mut smallest: Option<(usize, usize)> = None;
        for (i, &slot) in self.slots.iter().enumerate() {
            if slot.is_null() {
                continue;
            }
            // SAFETY: non-null slots are live cached headers.
            let size = unsafe { (*slot).map_size };
            if smallest.is_none_or(|(_, s)| size < s) {
                smallest = Some((i, size));
            }
        }
        smallest.map(|(i, _)| i)
    }

    fn oldest(&self) -> Option<usize> {
        let mut oldest: Option<usize> = None;
        for (i, &slot) in self.slots.iter().enumerate() {
            if slot.is_null() {
                continue;
            }
            // SAFETY: non-null slots are live cached headers.
            let t = unsafe { (*slot).freed_at_ms };
            // SAFETY: `oldest` indexes a non-null slot.
            if oldest.is_none_or(|j| t < unsafe { (*self.slot(j)).freed_at_ms }) {
                oldest = Some(i);
            }
        }
        oldest
    }

    fn evict(&mut self, i: usize) -> *mut LargeBlock {
        let block = self.slot(i);
        if block.is_null() {
            return block;
        }
        if let Some(slot) = self.slots.get_mut(i) {
            *slot = ptr::null_mut();
        }
        // SAFETY: was a live cached header.
        self.bytes -= unsafe { (*block).map_size };
        self.earliest_freed_ms = self
            .oldest()
            // SAFETY: `oldest` indexes a non-null slot.
            .map_or(0, |j| unsafe { (*self.slot(j)).freed_at_ms });
        block
    }

    /// Unmaps every cached block; returns the bytes unmapped.
    pub fn release_all(&mut self) -> usize {
        let mut released = 0;
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
