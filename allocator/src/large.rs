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
//! mmap + munmap + page faults each time. While the housekeeper runs, the
//! cache's bounds do not unmap anything on `free`: blocks beyond them are
//! retained too, and the housekeeper unmaps whatever stays unused for the
//! purge delay. A program that churns through more big buffers than the
//! slots hold (jobs of 100 MB, say) then reuses its own pages job after job
//! instead of unmapping them and faulting fresh ones in, and an idle
//! program still gives everything back within a few purge delays.

use core::ptr;

use crate::arena::{Arena, ArenaState};
use crate::os::{self, PAGE_SIZE};
use crate::segment::{RegionMark, SegmentHeader, SegmentKind, OWNERSHIP, SEGMENT_SIZE};
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
fn whole_reuse_limit(size: usize) -> usize {
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
    map_base: *mut u8,
    map_size: usize,
    block: *mut u8,
    /// Header one segment below the block (alignment of a segment or more).
    shifted: bool,
    /// Bytes of `PROT_NONE` guard at the end of the mapping (secure mode:
    /// one page; else 0). Part of `map_size`, not of the block.
    guard: usize,
    /// Freed and parked in the cache.
    cached: bool,
    freed_at_ms: u64,
    /// Links in the arena's live list (while not cached).
    next: *mut LargeBlock,
    prev: *mut LargeBlock,
}

impl LargeBlock {
    /// Bytes the caller may use.
    pub fn usable(&self) -> usize {
        self.map_base as usize + self.map_size - self.guard - self.block as usize
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
                reuse_cached(arena, block, size);
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
        reuse_cached(arena, block, size);
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
fn reuse_cached(arena: &Arena, block: *mut LargeBlock, size: usize) {
    // SAFETY: cached headers are live mappings of ours, and this one is no
    // longer in the cache.
    let b = unsafe { &mut *block };
    b.cached = false;
    if b.usable() > whole_reuse_limit(size) {
        if let Some(new_map) = round_map_size(b.offset() + size) {
            if new_map < b.map_size && os::remap_in_place(b.map_base, b.map_size, new_map) {
                arena.mapped_sub(b.map_size - new_map);
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
                arena: arena.as_ptr(),
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
    arena.mapped_add(map_size);
    Some(header)
}

fn register(header: *mut LargeBlock) {
    // SAFETY: a live header of ours.
    let b = unsafe { &*header };
    if b.shifted {
        OWNERSHIP.insert(b.block as usize, RegionMark::LargeShifted);
    } else {
        OWNERSHIP.insert(b.map_base as usize, RegionMark::Large);
    }
}

fn unregister(header: *mut LargeBlock) {
    // SAFETY: a live header of ours.
    let b = unsafe { &*header };
    if b.shifted {
        OWNERSHIP.remove(b.block as usize, RegionMark::LargeShifted);
    } else {
        OWNERSHIP.remove(b.map_base as usize, RegionMark::Large);
    }
}

/// Unmaps a block that is in no list.
pub(crate) fn unmap_block(header: *mut LargeBlock) {
    unregister(header);
    // SAFETY: a live header of ours; read before the mapping goes. Its
    // arena is static.
    let (base, size, arena) = unsafe {
        (
            (*header).map_base,
            (*header).map_size,
            &*(*header).header.arena,
        )
    };
    os::unmap(base, size);
    arena.mapped_sub(size);
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
    let (b, arena) = unsafe { (&mut *header, &*(*header).header.arena) };
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
    let (b, arena) = unsafe { (&mut *header, &*(*header).header.arena) };
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
                    arena.mapped_sub(b.map_size - new_map);
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
        arena.mapped_add(growth);
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
    arena.mapped_add(growth);
    resized_live(&mut state, old_usable, m.usable());
    Some(m.block)
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
    unsafe fn push(&mut self, block: *mut LargeBlock) {
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
    unsafe fn remove(&mut self, block: *mut LargeBlock) {
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

    /// Bytes of the listed blocks resident now.
    pub fn resident_bytes(&self) -> usize {
        let mut resident = 0;
        let mut block = self.head;
        while !block.is_null() {
            // SAFETY: members are live headers.
            let b = unsafe { &*block };
            // SAFETY: a live block's mapping is [map_base, map_base + map_size).
            resident += unsafe { os::resident_bytes_in(b.map_base, b.map_size) };
            block = b.next;
        }
        resident
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
    fn take(&mut self, size: usize, align: usize, max_map: usize) -> Option<*mut LargeBlock> {
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
    fn take_retained(
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
    fn take_retained_best(
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
    fn take_below(&mut self, size: usize) -> Option<*mut LargeBlock> {
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
    fn take_retained_below(&mut self, size: usize) -> Option<*mut LargeBlock> {
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
    fn take_retained_bytes(&mut self, bytes: usize) -> *mut LargeBlock {
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
    fn retain(&mut self, block: *mut LargeBlock) {
        // SAFETY: a live cached header, in no list.
        unsafe { (*block).next = self.retained };
        self.retained = block;
    }

    /// Takes the retained blocks freed at `freed_by_ms` or earlier out of
    /// the list, as a chain for [`unmap_chain`] (outside the lock).
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
    fn insert(
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
    fn take_expired(&mut self, now_ms: u64) -> [Option<*mut LargeBlock>; CACHE_SLOTS] {
        self.take_freed_by(now_ms.saturating_sub(CACHE_MAX_AGE_MS + 1))
    }

    /// Takes out the cached blocks freed at `freed_by_ms` or earlier; the
    /// caller unmaps them outside the lock ([`unmap_all`]).
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

    /// Bytes of the cached blocks resident now.
    pub fn resident_bytes(&self) -> usize {
        let mut resident = 0;
        let mut block = self.retained;
        while !block.is_null() {
            // SAFETY: retained blocks are live cached headers, each mapping
            // [map_base, map_base + map_size).
            unsafe {
                let b = &*block;
                resident += os::resident_bytes_in(b.map_base, b.map_size);
                block = b.next;
            }
        }
        for &slot in &self.slots {
            if !slot.is_null() {
                // SAFETY: non-null slots are live cached headers.
                let b = unsafe { &*slot };
                // SAFETY: a cached block's mapping is [map_base, map_base + map_size).
                resident += unsafe { os::resident_bytes_in(b.map_base, b.map_size) };
            }
        }
        resident
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
