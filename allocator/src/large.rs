//! Large blocks (over `MEDIUM_MAX`): one mapping each, straight from the OS;
//! allocated, freed and resized here under their arena's lock (the headers,
//! the live list and the cache are `large_block`'s).
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
//! arena's `LargeCache` for a bounded time: a program that allocates and
//! frees big buffers in a loop reuses warm pages instead of paying
//! mmap + munmap + page faults each time. While the housekeeper runs, the
//! cache's bounds do not unmap anything on `free`: blocks beyond them are
//! retained too, and the housekeeper unmaps whatever stays unused for the
//! purge delay. A program that churns through more big buffers than the
//! slots hold (jobs of 100 MB, say) then reuses its own pages job after job
//! instead of unmapping them and faulting fresh ones in, and an idle
//! program still gives everything back within a few purge delays.

use core::ptr;

use crate::arena::{Arena, ArenaState};
use crate::large_block::{
    register, round_map_size, unmap_all, unmap_block, unmap_chain, unregister, whole_reuse_limit,
    LargeBlock, CACHE_SLOTS,
};
use crate::os::{self, PAGE_SIZE};
use crate::segment::{SegmentHeader, SegmentKind, SEGMENT_SIZE};
use crate::stats;

/// The size of the mapping [`map_block`] makes for `size` bytes at `align`.
fn fresh_map_size(size: usize, align: usize) -> Option<usize> {
    let guard = guard_bytes();
    let body = if align >= SEGMENT_SIZE {
        round_map_size(size)?.checked_add(SEGMENT_SIZE)
    } else {
        body_size(align.max(PAGE_SIZE).checked_add(size)?, guard)
    };
    body?.checked_add(guard)
}

/// The mapping (before any guard) for a header page and a block that need
/// `bytes` together: rounded for in-place growth, or with a guard page only
/// to whole pages, so that the guard follows the block's end closely.
fn body_size(bytes: usize, guard: usize) -> Option<usize> {
    if guard == 0 {
        round_map_size(bytes)
    } else {
        Some(bytes.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1))
    }
}

/// The guard page a fresh block gets at its end (secure mode), or 0.
fn guard_bytes() -> usize {
    if crate::secure::enabled() {
        PAGE_SIZE
    } else {
        0
    }
}

/// Allocates a large block of at least `size` bytes aligned to `align` in
/// `arena`. Returns the block and whether its memory is known to be zero;
/// `None` when out of memory, past the arena's limit or the arena is closed.
pub fn alloc(arena: &'static Arena, size: usize, align: usize) -> Option<(*mut u8, bool)> {
    let align = align.max(16);
    let map_size = fresh_map_size(size, align)?;
    let mut expired = [None; CACHE_SLOTS];
    let reused = {
        let mut state = arena.state.lock();
        if state.is_closed() {
            return None;
        }
        let reused = if state.large_cache.is_empty() {
            None
        } else {
            expired = state.large_cache.take_expired(os::now_ms());
            let headroom = state.accounts.headroom();
            // While blocks are retained, one much bigger than the request
            // (see `whole_reuse_limit`) is not trimmed to fit (its tail's
            // pages would be faulted in again when a big request comes): a
            // smaller one grows instead (`grow_retained`), or a fresh one
            // is mapped. The limit is on the block; its mapping also holds
            // the header page, the padding of an alignment above a page
            // and any guard.
            let max_map = if crate::housekeeping::housekeeper_running() {
                let overhead = align.max(PAGE_SIZE) - PAGE_SIZE + guard_bytes();
                headroom.min(whole_reuse_limit(size).saturating_add(overhead))
            } else {
                headroom
            };
            state.large_cache.take(size, align, max_map)
        };
        match reused {
            Some(block) => {
                reuse_cached(block, size);
                // SAFETY: a live header, no longer cached.
                let mapped = unsafe { (*block).map_size };
                // The cache only offered a block that fits the headroom.
                state.accounts.reserve(mapped);
                track_live(&mut state, block);
                Some(block)
            }
            None => None,
        }
    };
    unmap_all(expired);
    if let Some(block) = reused {
        // SAFETY: a live header of ours.
        return Some((unsafe { (*block).block }, false));
    }
    if let Some(p) = grow_retained(arena, size, align) {
        return Some((p, false));
    }
    let surplus = {
        let mut state = arena.state.lock();
        if state.is_closed() || !state.accounts.reserve(map_size) {
            return None;
        }
        // A fresh mapping while retained blocks are too big to serve the
        // request: as many of them go (the biggest first), so that what is
        // retained does not add to the program's peak.
        state.large_cache.take_retained_bytes(map_size)
    };
    unmap_chain(surplus);
    let block = map_block(arena, size, align);
    let mut state = arena.state.lock();
    match block {
        Some(block) => {
            track_live(&mut state, block);
            // SAFETY: just mapped.
            Some((unsafe { (*block).block }, true))
        }
        None => {
            state.accounts.release(map_size);
            None
        }
    }
}

/// No cached block holds `size` bytes: takes the biggest retained block
/// that is smaller and grows it (`mremap` moves its pages, still resident,
/// rather than copy them), so that only the growth is faulted in. `None` if
/// there is none, or it cannot grow.
fn grow_retained(arena: &'static Arena, size: usize, align: usize) -> Option<*mut u8> {
    if align > PAGE_SIZE {
        return None;
    }
    let block = {
        let mut state = arena.state.lock();
        if state.is_closed() {
            return None;
        }
        if state.accounts.headroom() < size {
            // The limit would refuse the grown block: keep the cached one.
            return None;
        }
        let block = state.large_cache.take_below(size)?;
        reuse_cached(block, size);
        // SAFETY: a live header, no longer cached.
        let mapped = unsafe { (*block).map_size };
        if !state.accounts.reserve(mapped) {
            drop(state);
            unmap_block(block);
            return None;
        }
        track_live(&mut state, block);
        block
    };
    // SAFETY: a live header of ours, its block live and ours.
    let p = unsafe { (*block).block };
    // SAFETY: `block` is the live header of `p`.
    match unsafe { resize(block, p, size) } {
        Some(p) => Some(p),
        None => {
            // SAFETY: as above: back to the cache.
            unsafe { free(block, p) };
            None
        }
    }
}

/// Takes a block out of the cache for a request of `size` bytes: a block
/// much bigger than the request gives its tail back rather than pin it (its
/// head pages stay warm). Arena lock.
fn reuse_cached(block: *mut LargeBlock, size: usize) {
    // SAFETY: cached headers are live mappings of ours, and this one is no
    // longer in the cache.
    let b = unsafe { &mut *block };
    b.cached = false;
    if b.usable() > whole_reuse_limit(size) {
        if let Some(new_map) = round_map_size(b.offset() + size) {
            if new_map < b.map_size && os::remap_in_place(b.map_base, b.map_size, new_map) {
                stats::mapped_sub(b.map_size - new_map);
                b.map_size = new_map;
            }
        }
    }
}

/// Counts a block as live in its arena and links it in the live list. Arena
/// lock.
fn track_live(state: &mut ArenaState, block: *mut LargeBlock) {
    // SAFETY: a live header of ours, in no list.
    let usable = unsafe { (*block).usable() };
    stats::large_live_add(usable);
    state.accounts.large_live_bytes += usable;
    state.accounts.large_live_blocks += 1;
    // SAFETY: as above.
    unsafe { state.large_blocks.push(block) };
}

/// Undoes [`track_live`]. Arena lock.
fn untrack_live(state: &mut ArenaState, block: *mut LargeBlock) {
    // SAFETY: a live header of ours, in the arena's live list.
    let (usable, mapped) = unsafe { ((*block).usable(), (*block).map_size) };
    stats::large_live_sub(usable);
    state.accounts.large_live_bytes -= usable;
    state.accounts.large_live_blocks -= 1;
    state.accounts.release(mapped);
    // SAFETY: as above.
    unsafe { state.large_blocks.remove(block) };
}

/// A live block's usable size changed from `old` in place. Arena lock.
fn resized_live(state: &mut ArenaState, old: usize, new: usize) {
    stats::large_live_resize(old, new);
    state.accounts.large_live_bytes = state.accounts.large_live_bytes - old + new;
}

/// Maps a fresh large block.
fn map_block(arena: &'static Arena, size: usize, align: usize) -> Option<*mut LargeBlock> {
    let header: *mut LargeBlock;
    let map_base;
    let map_size;
    let block;
    let shifted = align >= SEGMENT_SIZE;
    let guard = guard_bytes();
    if !shifted {
        let offset = align.max(PAGE_SIZE);
        let body = body_size(offset.checked_add(size)?, guard)?;
        map_size = body.checked_add(guard)?;
        map_base = os::map_aligned(map_size, SEGMENT_SIZE)?;
        header = map_base.cast();
        block = if guard == 0 {
            (map_base as usize + offset) as *mut u8
        } else {
            // Flush against the guard (aligned down, so at most an
            // alignment's worth of slack): an overflow faults at once.
            let end = map_base as usize + body;
            ((end - size.max(1)) & !(align.max(16) - 1)) as *mut u8
        };
    } else {
        // Map enough to place the block on an `align` boundary with one
        // segment below it for the header, then trim both ends.
        let body = round_map_size(size)?.checked_add(guard)?;
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
    if guard != 0 && !os::protect_none((map_base as usize + map_size - guard) as *mut u8, guard) {
        os::unmap(map_base, map_size);
        return None;
    }
    // SAFETY: the first page of the mapping is ours and zeroed.
    unsafe {
        header.write(LargeBlock {
            header: SegmentHeader {
                kind: SegmentKind::Large,
                arena: arena.as_owner(),
            },
            map_base,
            map_size,
            block,
            shifted,
            guard,
            cached: false,
            freed_at_ms: 0,
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
        });
    }
    register(header);
    stats::mapped_add(map_size);
    Some(header)
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
    // SAFETY: validated live header; a large block's arena is static.
    let (b, arena) = unsafe { (&mut *header, Arena::owning(&(*header).header)) };
    let retain = crate::housekeeping::housekeeper_running();
    let mut no_longer_retained = ptr::null_mut();
    let evicted = {
        let mut state = arena.state.lock();
        untrack_live(&mut state, header);
        if !retain {
            // Nobody will unmap them later (the housekeeper was switched
            // off, or died with a fork): what was retained goes now.
            no_longer_retained = state.large_cache.take_retained_freed_by(u64::MAX);
        }
        if b.shifted || b.guard != 0 {
            // Cached blocks are reused only without a shifted header; do not
            // let one occupy the cache. Guarded (secure) blocks go at once,
            // so that a use after free faults.
            None
        } else {
            b.cached = true;
            b.freed_at_ms = os::now_ms();
            Some(state.large_cache.insert(header, retain))
        }
    };
    match evicted {
        Some(evicted) => {
            unmap_all(evicted);
        }
        None => unmap_block(header),
    }
    unmap_chain(no_longer_retained);
    crate::housekeeping::note_pending();
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
/// `None` if neither works (or the arena's limit forbids the growth); the
/// block is then unchanged. Mapping changes happen under the arena lock, so
/// the arena's live list and accounts follow the block.
///
/// # Safety
/// `header` is the live large-block header that the ownership map gives
/// for `p`.
pub unsafe fn resize(header: *mut LargeBlock, p: *mut u8, new_size: usize) -> Option<*mut u8> {
    validate(header, p, "realloc");
    // SAFETY: validated live header; a large block's arena is static.
    let (b, arena) = unsafe { (&mut *header, Arena::owning(&(*header).header)) };
    let old_usable = b.usable();
    if b.guard != 0 {
        // The guard page would have to move: keep the block if it fits,
        // else let the caller move it.
        return (new_size <= old_usable).then_some(p);
    }
    if new_size <= old_usable {
        // Shrink the mapping when more than half would be idle.
        if new_size < old_usable / 2 && !b.shifted {
            let new_map = round_map_size(b.offset() + new_size)?;
            if new_map < b.map_size {
                let mut state = arena.state.lock();
                if os::remap_in_place(b.map_base, b.map_size, new_map) {
                    stats::mapped_sub(b.map_size - new_map);
                    state.accounts.release(b.map_size - new_map);
                    b.map_size = new_map;
                    resized_live(&mut state, old_usable, b.usable());
                }
            }
        }
        return Some(p);
    }
    if b.shifted {
        return None;
    }
    let new_map = round_map_size(b.offset().checked_add(new_size)?)?;
    let growth = new_map - b.map_size;
    let mut state = arena.state.lock();
    if !state.accounts.reserve(growth) {
        return None;
    }
    if os::remap_in_place(b.map_base, b.map_size, new_map) {
        stats::mapped_add(growth);
        b.map_size = new_map;
        resized_live(&mut state, old_usable, b.usable());
        return Some(p);
    }
    // Move the pages to a fresh segment-aligned reservation.
    let Some(dest) = os::map_aligned(new_map, SEGMENT_SIZE) else {
        state.accounts.release(growth);
        return None;
    };
    let (old_base, old_size, offset) = (b.map_base, b.map_size, b.offset());
    // SAFETY: a live block in the arena's list; relinked below.
    unsafe { state.large_blocks.remove(header) };
    unregister(header);
    if !os::remap_to(old_base, old_size, new_map, dest) {
        // The kernel may already have unmapped `dest` before failing, and
        // another thread may have mapped something there since: never unmap
        // it. The reservation is untouched address space; this path is rare
        // (a block whose mapping was split by the program, e.g. mprotect).
        register(header);
        // SAFETY: unlinked above, unchanged.
        unsafe { state.large_blocks.push(header) };
        state.accounts.release(growth);
        return None;
    }
    let moved = dest.cast::<LargeBlock>();
    // SAFETY: the header moved with its pages to `dest`.
    let m = unsafe { &mut *moved };
    m.map_base = dest;
    m.map_size = new_map;
    m.block = (dest as usize + offset) as *mut u8;
    register(moved);
    // SAFETY: the moved header is live and in no list.
    unsafe { state.large_blocks.push(moved) };
    stats::mapped_add(growth);
    resized_live(&mut state, old_usable, m.usable());
    Some(m.block)
}
