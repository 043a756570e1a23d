//! arenalloc's engine: a size-class allocator built from arenas, segments,
//! spans and thread heaps, on `core` and `libc`.
//!
//! ```text
//!  thread ──TLS──► heap (thread × arena) ── current[class] ──► span ──► blocks
//!                    │ avail / full span lists (owner only)
//!                    ▼
//!  arena (lock) ── segments (4 MiB, aligned) ── slices (64 KiB) ── spans
//!              ├─ abandoned spans (their thread exited)
//!              └─ large-block cache ── large blocks (own mapping each)
//! ```
//!
//! Modules in layers, bottom up; a module uses its own layer and the ones
//! below, never one above (no module imports another in a circle):
//! 1. `os` (every system call), `sync` (the futex lock), `size_class`
//!    (which block size serves a request, slice and span sizes).
//! 2. `diag` (messages without allocation), `secure` (the
//!    `ARENALLOC_SECURE` setting), `race_hooks` (test-only pauses),
//!    `housekeeping` (what the data structures tell the housekeeper: a
//!    pending flag, the delay, budgets), `stats` (process-wide counters and
//!    the figures' types), `claim` (the owner/purger handshake).
//! 3. `span` (blocks of one class, free lists), `roster` (an arena's heaps
//!    as the purger sees them: a claim and an activity count each).
//! 4. `segment` (slices of spans, the ownership map), `large_block` (large
//!    blocks' headers, an arena's live list and cache of them). Spans and
//!    regions record what became free and when; they name their owner heap
//!    or arena type-erased and never call up.
//! 5. `arena` (ownership of memory under one lock: segments, abandoned
//!    spans, large lists, the roster; the purge steps on them).
//! 6. `heap` (a thread's spans in one arena: the fast and slow paths; a
//!    thread's `ThreadState`).
//! 7. `registry` (arena slots and handles, creation and destruction),
//!    `large` (allocating, freeing and resizing large blocks under their
//!    arena's lock).
//! 8. `tls` (where a thread's state lives), `thread` (which heap a thread
//!    uses, its exit).
//! 9. `purger` (the housekeeper: reads the records, claims idle heaps,
//!    gives memory back).
//! 10. This file (the API), `c_contract`, `library_routing`,
//!     `exit_summary`, and `process` (the one-time set-up and the `fork`
//!     handlers, which take every lock below in one order). The housekeeper
//!     reaches library routing's rescan only through a hook it is given.
//!
//! Nothing reachable from these functions allocates through `std`, formats
//! or unwinds; misuse that would corrupt memory (a foreign or doubly freed
//! pointer, where detected) prints a line to stderr and aborts.
#![no_std]

pub mod arena;
pub mod c_contract;
pub mod claim;
pub mod diag;
pub mod exit_summary;
pub mod heap;
pub mod housekeeping;
pub mod large;
pub mod large_block;
pub mod library_routing;
pub mod os;
pub mod process;
pub mod purger;
pub mod race_hooks;
pub mod registry;
pub mod roster;
pub mod secure;
pub mod segment;
pub mod size_class;
pub mod span;
pub mod stats;
pub mod sync;
pub mod thread;
pub mod tls;

use core::ptr;

use arena::Arena;
use claim::FastClaim;
use segment::{Segment, SegmentKind, OWNERSHIP};
use size_class::{class_of_aligned, class_size, MEDIUM_MAX};
use span::SpanState;

pub use stats::{ArenaStats, Stats};

/// Every block is aligned to at least this (`alignof(max_align_t)`).
pub const MIN_ALIGN: usize = 16;
/// Requests larger than this fail at once: no mapping could hold them.
pub const MAX_ALLOC: usize = isize::MAX as usize / 2;

#[cold]
fn out_of_memory() -> *mut u8 {
    os::set_errno(libc::ENOMEM);
    ptr::null_mut()
}

/// Allocates `size` bytes aligned to [`MIN_ALIGN`]. Returns null (errno
/// `ENOMEM`) on failure. `malloc(0)` returns a unique, freeable block.
#[inline(always)]
pub fn malloc(size: usize) -> *mut u8 {
    // Up to 1 KiB, the common case, first: one compare before the claim.
    if size > size_class::SMALL_TABLE_MAX {
        return malloc_by_class(size);
    }
    // The fast path calls nothing (every other case is a tail call), so it
    // needs no stack frame.
    let me = tls::Current::get();
    if !me.try_enter() {
        return malloc_small_slow(size);
    }
    // SAFETY: the current heap belongs to this thread, which is inside.
    let block = unsafe { heap::try_alloc_direct(me.heap(), size) };
    me.leave_fast();
    if block.is_null() {
        return malloc_small_slow(size);
    }
    block
}

/// `malloc` of more than 1 KiB: a size class up to `MEDIUM_MAX`, a large
/// block beyond. Out of line, so that `malloc`'s fast path for small sizes
/// tests the size once.
#[inline(never)]
fn malloc_by_class(size: usize) -> *mut u8 {
    if size > MEDIUM_MAX {
        return alloc_large(thread::preferred_arena(), size, MIN_ALIGN, false);
    }
    let me = tls::Current::get();
    if !me.try_enter() {
        return malloc_small_slow(size);
    }
    // SAFETY: the current heap belongs to this thread, which is inside.
    let block = unsafe { heap::try_alloc_small(me.heap(), size_class::class_of(size)) };
    me.leave_fast();
    if block.is_null() {
        return malloc_small_slow(size);
    }
    block
}

/// `malloc` of `size <= MEDIUM_MAX` bytes whose fast path found no block or
/// met a claim: the whole allocation again, inside the allocator. A null
/// result has errno set already.
#[cold]
#[inline(never)]
fn malloc_small_slow(size: usize) -> *mut u8 {
    small_slow(thread::preferred_arena(), || match thread::own_heap() {
        // SAFETY: the calling thread's own heap.
        Some(heap) => unsafe { heap::alloc(heap, size) },
        None => ptr::null_mut(),
    })
}

/// A small allocation's slow path: starts the housekeeper if due, then runs
/// `alloc` inside the allocator. If it fails in an arena with a limit, the
/// limit may have refused it while blocks that other threads freed still
/// hold spans: the purger collects them (claiming the heaps of threads
/// outside the allocator, waiting a moment for busy ones) and `alloc` runs
/// once more. Null (errno `ENOMEM`) if it still fails. Here, not in the
/// heap's refill: the purger is a layer above the heaps.
#[cold]
#[inline(never)]
fn small_slow(arena: &'static Arena, alloc: impl Fn() -> *mut u8) -> *mut u8 {
    // The fork handlers and the thread-exit key must be in place before the
    // thread's first heap joins an arena (under its lock).
    process::ensure_init();
    purger::maybe_start();
    let p = thread::inside_allocator(&alloc);
    if !p.is_null() {
        return p;
    }
    if !arena.state.lock().has_limit() {
        return out_of_memory();
    }
    purger::reclaim_for_limit(arena);
    match thread::inside_allocator(&alloc) {
        p if p.is_null() => out_of_memory(),
        p => p,
    }
}

#[cold]
fn alloc_large(arena: &'static Arena, size: usize, align: usize, zero: bool) -> *mut u8 {
    if size > MAX_ALLOC {
        return out_of_memory();
    }
    // The fork handlers must be in place before any arena lock is taken,
    // even in a program whose first allocation is large.
    process::ensure_init();
    purger::maybe_start();
    // A zero-byte block still needs a byte of its own, or it would point
    // just past its mapping.
    let mut block = large::alloc(arena, size.max(1), align);
    if block.is_none() && arena.state.lock().has_limit() {
        // Perhaps refused for the limit while blocks freed by other threads
        // still hold spans: collect them and try once more.
        purger::reclaim_for_limit(arena);
        block = large::alloc(arena, size.max(1), align);
    }
    match block {
        Some((p, fresh)) => {
            if zero && !fresh {
                // SAFETY: `p` has at least `size` usable bytes.
                unsafe { ptr::write_bytes(p, 0, size) };
            }
            p
        }
        None => out_of_memory(),
    }
}

/// Allocates `size` zeroed bytes.
#[inline]
pub fn zalloc(size: usize) -> *mut u8 {
    zalloc_aligned(size, MIN_ALIGN)
}

/// Allocates `size` bytes aligned to `align` (a power of two). Returns null
/// (errno `ENOMEM`, or `EINVAL` for an alignment that is not a power of two).
#[inline(always)]
pub fn malloc_aligned(size: usize, align: usize) -> *mut u8 {
    if align <= MIN_ALIGN && align.is_power_of_two() {
        return malloc(size);
    }
    malloc_aligned_slow(size, align)
}

#[cold]
fn malloc_aligned_slow(size: usize, align: usize) -> *mut u8 {
    if !align.is_power_of_two() {
        os::set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    if let Some(class) = class_of_aligned(size, align) {
        return small_slow(thread::preferred_arena(), || match thread::own_heap() {
            // SAFETY: the calling thread's own heap.
            Some(heap) => unsafe { heap::alloc_small(heap, class) },
            None => ptr::null_mut(),
        });
    }
    alloc_large(thread::preferred_arena(), size, align, false)
}

/// Allocates `size` zeroed bytes aligned to `align`.
pub fn zalloc_aligned(size: usize, align: usize) -> *mut u8 {
    if !align.is_power_of_two() {
        os::set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    let align = align.max(MIN_ALIGN);
    if size > MEDIUM_MAX || align > segment::SLICE_SIZE {
        return alloc_large(thread::preferred_arena(), size, align, true);
    }
    let p = malloc_aligned(size, align);
    if !p.is_null() {
        // SAFETY: a block of at least `size` bytes.
        unsafe { ptr::write_bytes(p, 0, size) };
    }
    p
}

/// What `free`-like operations need to know about a pointer.
enum Owner {
    Span(*mut span::Span),
    Large(*mut large_block::LargeBlock),
}

/// Finds the owner of `p`, aborting with a message if `p` is not ours.
#[inline(always)]
fn owner_of(p: *mut u8, operation: &str) -> Owner {
    let Some(header) = OWNERSHIP.region_of(p as usize) else {
        diag::fatal_pointer(operation, "pointer was not allocated by arenalloc", p)
    };
    // SAFETY: the ownership map only holds live headers of ours.
    unsafe { owner_in(header, p) }
}

/// `free`'s [`owner_of`], without the look at the segment's holes: an
/// address in a hole (someone else's memory, perhaps) leads to a free
/// slice's cleared span entry, whose owner is no thread, so `free_remote`
/// refuses it, off the fast path.
#[inline(always)]
fn owner_of_freed(p: *mut u8) -> Owner {
    let Some(header) = OWNERSHIP.header_of(p as usize) else {
        diag::fatal_pointer("free", "pointer was not allocated by arenalloc", p)
    };
    // SAFETY: the ownership map only holds live headers of ours.
    unsafe { owner_in(header, p) }
}

/// Which span or large block of the region `header` starts holds `p`.
///
/// # Safety
/// `header` is the live header of a region of ours that holds `p`.
#[inline(always)]
unsafe fn owner_in(header: *mut segment::SegmentHeader, p: *mut u8) -> Owner {
    // SAFETY: the caller's guarantee: a live header.
    match unsafe { (*header).kind } {
        SegmentKind::Spans => {
            // SAFETY: `p` lies in this live span segment.
            Owner::Span(unsafe { segment::span_of(header.cast::<Segment>(), p) })
        }
        SegmentKind::Large => Owner::Large(header.cast()),
    }
}

/// Frees a block from any of the allocation functions. Null is ignored.
///
/// # Safety
/// `p` is null or a live block from this allocator, not used afterwards.
#[inline(always)]
pub unsafe fn free(p: *mut u8) {
    // The fast path calls nothing (every other case is a tail call), so it
    // needs no stack frame.
    // Large blocks (and pointers not ours) take the look-up off the fast
    // path: their free costs far more than the call. So does null, whose
    // segment is never ours: no test of its own on the fast path.
    let Some(segment) = OWNERSHIP.span_segment_of(p as usize) else {
        // SAFETY: forwarded.
        return unsafe { free_found_late(p) };
    };
    // SAFETY: the ownership map holds live segments only; `p` lies in this
    // one, so `span` holds `p`.
    unsafe { free_in_span(segment::span_of(segment, p), p) }
}

/// [`free`] for a caller whose language guarantees that `p` is a live block
/// of this allocator aligned to `align` (Rust's `GlobalAlloc::dealloc`
/// contract): the region header is then found by masking alone, without the
/// ownership map's look-up (about ten instructions). A block aligned to less
/// than a segment always lies in the first segment-sized piece of its region
/// (see `large`); larger alignments take [`free`].
///
/// # Safety
/// `p` is a live block from this allocator, allocated with alignment
/// `align`, not used afterwards.
#[inline(always)]
pub unsafe fn free_known_block(p: *mut u8, align: usize) {
    // Secure mode keeps the ownership map's check of what Rust promises
    // (unsafe code can break the promise).
    if align >= segment::SEGMENT_SIZE || secure::enabled() {
        // SAFETY: forwarded.
        return unsafe { free(p) };
    }
    let header = segment::segment_base(p as usize) as *mut segment::SegmentHeader;
    // SAFETY: the caller's guarantee: `p` is a live block of ours aligned to
    // less than a segment, so its region's live header sits at its segment
    // base (span segments are one aligned segment; a large block lies in
    // the first segment-sized piece of its mapping).
    match unsafe { owner_in(header, p) } {
        // SAFETY: `span` holds `p`.
        Owner::Span(span) => unsafe { free_in_span(span, p) },
        // SAFETY: `block` is the header of `p`'s region.
        Owner::Large(block) => unsafe { large::free(block, p) },
    }
}

/// `free` of a block in `span`.
///
/// # Safety
/// `span` is the live span that holds `p`, a block given up by the caller.
#[inline(always)]
unsafe fn free_in_span(span: *mut span::Span, p: *mut u8) {
    // Inside first, then the owner key: a claimer changes the key before
    // its barrier, so the comparison below also tells whether a claim holds
    // this thread's heaps (no separate look at the claim; see `claim`).
    let me = tls::Current::get();
    me.enter_unchecked();
    // SAFETY: `span` is the live span that holds `p` (a purger retires only
    // spans with no live block). Its owner may change meanwhile (another
    // heap adopts an abandoned span), but never to or from this thread's
    // key while this thread is here.
    if unsafe { (*span).owner_thread() } != me.owner_key() {
        me.leave_fast();
        // SAFETY: as above: another thread's span, or this thread's while
        // a claimer holds it; either takes the remote list.
        return unsafe { free_remote(p, span) };
    }
    // SAFETY: this thread owns the span and is inside; `p` is its block.
    match unsafe { heap::try_free_local(span, p) } {
        heap::LocalFree::Done => me.leave_fast(),
        heap::LocalFree::Refused => {
            me.leave_fast();
            // SAFETY: forwarded.
            unsafe { free_local_slow(p, span) }
        }
        // Still inside (the fast flag is set): a tail call.
        // SAFETY: forwarded.
        heap::LocalFree::Emptied => unsafe { span_emptied(p, span) },
    }
}

/// A local free emptied its span (see `heap::LocalFree::Emptied`): the
/// thread goes from the fast path's flag to the nesting depth without
/// leaving the allocator in between (a purger that claimed the heap in a
/// gap could retire the span first), then gives the span back.
///
/// # Safety
/// As for [`heap::span_emptied`], inside through the fast path's flag.
#[cold]
#[inline(never)]
unsafe fn span_emptied(p: *mut u8, span: *mut span::Span) {
    let claim = thread::current_claim();
    let depth = claim.enter_from_fast();
    race_hooks::pause(race_hooks::Point::SpanEmptied);
    // SAFETY: forwarded; inside by the depth now.
    unsafe { heap::span_emptied(span, p) };
    claim.leave(depth);
}

/// A local free that is more than a push (see `heap::try_free_local`), or
/// that met a claim: the whole free again, inside the allocator.
///
/// # Safety
/// As for [`free_in_span`], on the span's owner thread.
#[cold]
#[inline(never)]
unsafe fn free_local_slow(p: *mut u8, span: *mut span::Span) {
    // SAFETY: this thread owns the span; `p` is its block.
    thread::inside_allocator(|| unsafe { heap::free_local(span, p) });
}

/// `free` of a pointer outside the span segments: null, a large block, or
/// not ours.
///
/// # Safety
/// As for [`free`].
#[cold]
#[inline(never)]
unsafe fn free_found_late(p: *mut u8) {
    if p.is_null() {
        return;
    }
    match owner_of_freed(p) {
        // SAFETY: `span` holds `p`.
        Owner::Span(span) => unsafe { free_in_span(span, p) },
        // SAFETY: `block` is the header the ownership map gives for `p`.
        Owner::Large(block) => unsafe { large::free(block, p) },
    }
}

/// `free` of a block in a span that the calling thread may not touch: one
/// of another thread, or its own while a claimer holds it. The block goes
/// onto the span's remote list.
///
/// # Safety
/// `span` is the live span that holds `p`, a block given up by the caller.
#[cold]
#[inline(never)]
unsafe fn free_remote(p: *mut u8, span: *mut span::Span) {
    let index = {
        // SAFETY: the span metadata is live (its segment is mapped, and it
        // holds `p`); this reference ends before the push below, after which
        // the owner may recycle the span.
        let s = unsafe { &*span };
        let index = s.index_of(p);
        if s.state() == SpanState::Free || index >= s.capacity() {
            refuse_remote_free(p);
        }
        index
    };
    if !secure::known_off() {
        // SAFETY: forwarded.
        return unsafe { free_remote_maybe_zeroed(span, p, index) };
    }
    // SAFETY: a block start of the live span, given up by the caller;
    // `free_remote` checks that it does not look freed already. Calls
    // nothing but tail calls and aborts, so this function saves no
    // registers (the secure mode's `memset` is in a function of its own).
    unsafe { span::free_remote(span, p, index, false) };
}

/// [`free_remote`] in secure mode (or before the setting was read): in
/// secure mode the block's bytes are cleared first.
///
/// # Safety
/// As for `span::free_remote`.
#[cold]
#[inline(never)]
unsafe fn free_remote_maybe_zeroed(span: *mut span::Span, p: *mut u8, index: u64) {
    // SAFETY: forwarded.
    unsafe { span::free_remote(span, p, index, secure::enabled()) };
}

/// A remote `free` of something that is not a block in use of its span.
#[cold]
#[inline(never)]
fn refuse_remote_free(p: *mut u8) -> ! {
    let problem = if OWNERSHIP.region_of(p as usize).is_none() {
        "pointer was not allocated by arenalloc"
    } else {
        "pointer is not a block in use"
    };
    diag::fatal_pointer("free", problem, p)
}

/// Bytes usable in the block `p` (at least what was asked for).
///
/// # Safety
/// `p` is null or a live block from this allocator.
pub unsafe fn usable_size(p: *mut u8) -> usize {
    if p.is_null() {
        return 0;
    }
    match owner_of(p, "malloc_usable_size") {
        // SAFETY: live span metadata.
        Owner::Span(span) => unsafe { (*span).block_size() },
        // SAFETY: `block` is the header the ownership map gives for `p`.
        Owner::Large(block) => unsafe { large::usable_size(block, p) },
    }
}

/// Resizes `p` to `new_size` bytes, keeping its contents; in place when the
/// block has room (or, for large blocks, the mapping can grow). Returns null
/// on failure, leaving `p` intact. `p` may be null (then: `malloc`).
///
/// # Safety
/// `p` is null or a live block from this allocator.
pub unsafe fn realloc(p: *mut u8, new_size: usize) -> *mut u8 {
    // SAFETY: forwarded.
    unsafe { realloc_aligned(p, new_size, MIN_ALIGN) }
}

/// [`realloc`] for a block allocated with alignment `align`; the result has
/// the same alignment.
///
/// # Safety
/// `p` is null or a live block from this allocator aligned to `align`.
pub unsafe fn realloc_aligned(p: *mut u8, new_size: usize, align: usize) -> *mut u8 {
    if p.is_null() {
        return malloc_aligned(new_size, align);
    }
    if new_size > MAX_ALLOC {
        return out_of_memory();
    }
    // One look-up serves the whole call: the arena, the size, and the free
    // of the old block, which `free` would look up again.
    let Some(header) = OWNERSHIP.region_of(p as usize) else {
        diag::fatal_pointer("realloc", "pointer was not allocated by arenalloc", p)
    };
    // SAFETY: the ownership map only holds live headers of ours, which name
    // their arena, in the static registry.
    let arena: &'static Arena = unsafe { Arena::owning(&*header) };
    // SAFETY: as above.
    let owner = unsafe { owner_in(header, p) };
    let old_usable = match owner {
        Owner::Span(span) => {
            // SAFETY: `span` is the span the segment maps `p` to.
            unsafe { check_block_in_use(span, p, "realloc") };
            // SAFETY: live span metadata.
            let usable = unsafe { (*span).block_size() };
            // Keep the block if it fits and would not be mostly empty.
            if new_size <= usable && (new_size >= usable / 2 || usable <= 128) {
                return p;
            }
            usable
        }
        Owner::Large(block) => {
            if new_size > MEDIUM_MAX {
                // SAFETY: `block` is the header the ownership map gives for `p`.
                if let Some(q) = unsafe { large::resize(block, p, new_size) } {
                    return q;
                }
            }
            // SAFETY: as above.
            unsafe { large::usable_size(block, p) }
        }
    };
    // The block stays in the arena that owns it, whatever arena this thread
    // prefers now.
    let q = if core::ptr::eq(arena, thread::preferred_arena()) {
        malloc_aligned(new_size, align)
    } else {
        alloc_in(arena, 0, new_size, align, false)
    };
    if q.is_null() {
        return q;
    }
    // SAFETY: both blocks are live and distinct; the copy fits in both.
    unsafe { ptr::copy_nonoverlapping(p, q, old_usable.min(new_size)) };
    match owner {
        // SAFETY: `p` is still live, so its span is the one found above.
        Owner::Span(span) => unsafe { free_in_span(span, p) },
        // SAFETY: as above, its large block's header.
        Owner::Large(block) => unsafe { large::free(block, p) },
    }
    q
}

/// Aborts with a message unless `p` is a block in use of `span`: a block
/// start of a live span that does not look freed (the owner confirms a
/// suspect on its lists; for another thread the look is the answer: a
/// block handed out never looks freed, and data decode to a link with a
/// chance of one in 2^50).
///
/// # Safety
/// `span` is the span entry that the segment of `p` maps `p` to.
unsafe fn check_block_in_use(span: *mut span::Span, p: *mut u8, operation: &str) {
    // SAFETY: span entries live in mapped segment headers.
    let s = unsafe { &*span };
    let index = s.index_of(p);
    if s.state() == SpanState::Free || index >= s.capacity() {
        diag::fatal_pointer(operation, "pointer is not a block in use", p);
    }
    let owner = secure::owner_id(s.owner_thread());
    let mine = owner == thread::current_thread_id();
    if mine && thread::inside_allocator(|| s.is_parked(index)) {
        diag::fatal_pointer(operation, "block was freed already", p);
    }
    // SAFETY: a block start of the span.
    if unsafe { s.looks_free(p) } {
        let freed = if mine {
            thread::inside_allocator(|| s.is_listed_free(index))
        } else {
            true
        };
        if freed {
            diag::fatal_pointer(operation, "block was freed already", p);
        }
    }
}

/// Allocates in `arena` through the calling thread's heap for it (created on
/// first use), without changing the thread's preferred arena.
/// `life` is the raw handle `arena` was resolved from (0: any life); a
/// handle that went stale meanwhile gets null and `EINVAL`.
fn alloc_in(arena: &'static Arena, life: u64, size: usize, align: usize, zero: bool) -> *mut u8 {
    if !align.is_power_of_two() {
        os::set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    let align = align.max(MIN_ALIGN);
    let class = if align == MIN_ALIGN && size <= MEDIUM_MAX {
        Some(size_class::class_of(size))
    } else {
        class_of_aligned(size, align)
    };
    let Some(class) = class else {
        return alloc_large(arena, size, align, zero);
    };
    let p = small_slow(arena, || match thread::heap_in(arena, life) {
        // SAFETY: `heap` is the calling thread's own heap for `arena`.
        Some(heap) => unsafe { heap::alloc_small(heap, class) },
        None => ptr::null_mut(),
    });
    if p.is_null() {
        let stale = life != 0
            && ArenaHandle::from_raw(life)
                .and_then(registry::resolve)
                .is_none();
        if stale {
            os::set_errno(libc::EINVAL);
            return ptr::null_mut();
        }
        return out_of_memory();
    }
    if zero {
        // SAFETY: a block of at least `size` bytes.
        unsafe { ptr::write_bytes(p, 0, size) };
    }
    p
}

pub use registry::ArenaHandle;

/// Creates an arena: a separate set of segments that no other arena's blocks
/// share. Returns `None` (errno `ENOMEM`) when no more arenas can exist.
pub fn arena_new() -> Option<ArenaHandle> {
    let handle = registry::create();
    if handle.is_none() {
        os::set_errno(libc::ENOMEM);
    }
    handle
}

/// The default arena's handle.
pub fn arena_default() -> ArenaHandle {
    registry::default_handle()
}

/// The calling thread's preferred arena.
pub fn arena_current() -> ArenaHandle {
    registry::handle_of(thread::preferred_arena()).unwrap_or_else(registry::default_handle)
}

/// Makes `handle` the calling thread's preferred arena and returns the
/// previous one. A stale or foreign handle is refused (`None`, errno
/// `EINVAL`) and the preferred arena stays as it was.
#[inline]
pub fn arena_set(handle: ArenaHandle) -> Option<ArenaHandle> {
    let Some(arena) = registry::resolve(handle) else {
        os::set_errno(libc::EINVAL);
        return None;
    };
    let current = thread::current_heap();
    // SAFETY: the current heap is the thread's own or the read-only empty
    // heap (whose handle is the default arena's, as is a dead heap's).
    let (current_arena, previous) = unsafe { ((*current).arena_ptr(), (*current).arena_handle()) };
    let already = core::ptr::eq(current_arena, arena) && previous == handle.to_raw();
    if !already && !thread::switch_back(arena, handle.to_raw()) {
        return arena_set_slow(arena, handle, previous);
    }
    ArenaHandle::from_raw(previous)
}

/// [`arena_set`] when the thread's heap for the arena is not the one it
/// last switched away from: find or make it.
#[cold]
#[inline(never)]
fn arena_set_slow(
    arena: &'static Arena,
    handle: ArenaHandle,
    previous: u64,
) -> Option<ArenaHandle> {
    process::ensure_init();
    if thread::set_preferred_arena(arena, handle.to_raw()).is_none() {
        // Stale since it was checked, or no memory for a heap.
        let stale = registry::resolve(handle).is_none();
        os::set_errno(if stale { libc::EINVAL } else { libc::ENOMEM });
        return None;
    }
    ArenaHandle::from_raw(previous)
}

/// Errno `EINVAL` for a handle that was refused (stale or foreign).
fn refused<T>(result: Option<T>) -> Option<T> {
    if result.is_none() {
        os::set_errno(libc::EINVAL);
    }
    result
}

/// Locks the arena `handle` names for an arena-control function, checking
/// the handle under the lock; errno `EINVAL` if it is stale or foreign.
fn lock_live_arena(
    handle: ArenaHandle,
) -> Option<(&'static Arena, sync::MutexGuard<'static, arena::ArenaState>)> {
    refused(registry::lock_live(handle))
}

/// Destroys the arena `handle`: every block of it is freed at once and its
/// memory returned to the OS; threads that prefer it fall back to the
/// default arena; the handle (and every copy) is refused from now on. The
/// default arena cannot be destroyed. False (errno `EINVAL`) for the default
/// arena or a stale or foreign handle, and (errno `EBUSY`) for a routed
/// library's arena, which the library keeps allocating in.
///
/// # Safety
/// No block of the arena is used after this call, and no thread allocates
/// in, frees to or switches to the arena while it runs.
pub unsafe fn arena_destroy(handle: ArenaHandle) -> bool {
    process::ensure_init();
    if library_routing::is_routed_arena(handle) {
        // A routed library keeps allocating in it.
        os::set_errno(libc::EBUSY);
        return false;
    }
    // SAFETY: forwarded from the caller.
    let destroyed = unsafe { registry::destroy(handle) };
    if !destroyed {
        os::set_errno(libc::EINVAL);
    }
    destroyed
}

/// Returns the free memory of one arena to the OS now; the bytes released,
/// or `None` (errno `EINVAL`) for a stale or foreign handle.
pub fn arena_trim(handle: ArenaHandle) -> Option<usize> {
    process::ensure_init();
    let arena = refused(registry::resolve(handle))?;
    refused(purger::purge_arena_now(arena, handle.to_raw()))
}

/// One arena's figures; `None` (errno `EINVAL`) for a stale or foreign
/// handle.
pub fn arena_stats(handle: ArenaHandle) -> Option<ArenaStats> {
    process::ensure_init();
    let (_, state) = lock_live_arena(handle)?;
    Some(registry::arena_stats(&state))
}

/// Caps the bytes an arena may hold in use (spans and large blocks; see
/// [`ArenaStats::in_use_bytes`]): past it, allocations in the arena fail with
/// null and `ENOMEM`. 0 removes the limit. A limit below what the arena
/// holds now only stops it from growing. False (errno `EINVAL`) for a stale
/// or foreign handle.
pub fn arena_set_limit(handle: ArenaHandle, bytes: usize) -> bool {
    process::ensure_init();
    let Some((_, mut state)) = lock_live_arena(handle) else {
        return false;
    };
    state.accounts.limit_bytes = bytes;
    true
}

/// Allocates `size` bytes aligned to `align` in the arena `handle`, without
/// changing the thread's preferred arena; zeroed if `zero`. Null with errno
/// `EINVAL` for a stale or foreign handle or a bad alignment, `ENOMEM` when
/// out of memory.
pub fn arena_alloc(handle: ArenaHandle, size: usize, align: usize, zero: bool) -> *mut u8 {
    let Some(arena) = registry::resolve(handle) else {
        os::set_errno(libc::EINVAL);
        return ptr::null_mut();
    };
    alloc_in(arena, handle.to_raw(), size, align, zero)
}

/// The arena that owns `p`, if `p` is in memory of ours.
pub fn arena_of(p: *const u8) -> Option<ArenaHandle> {
    // SAFETY: `inspect` keeps the header mapped; live headers of ours name
    // their arena, in the static registry.
    let arena = OWNERSHIP.inspect(p as usize, |header| unsafe { Arena::owning(&*header) })?;
    registry::handle_of(arena)
}

/// Returns memory the allocator holds but does not use to the OS, now, in
/// every arena: spans that emptied (also in other threads' heaps, claimed
/// while those threads are outside the allocator), the free 4 KiB pages of
/// spans that still hold live blocks, free slices, empty segments and cached
/// large blocks. Returns the number of bytes released (0: nothing).
pub fn trim() -> usize {
    process::ensure_init();
    purger::purge_all_now()
}

/// The allocator's figures now.
pub fn stats() -> Stats {
    process::ensure_init();
    registry::gather_stats()
}

/// Whether `p` lies in memory this allocator manages (a segment or a large
/// block of ours). Does not say whether it is a live block.
pub fn owns(p: *const u8) -> bool {
    OWNERSHIP.inspect(p as usize, |_| ()).is_some()
}

/// Size class block size for requests of `size` bytes (for tests and tools).
pub fn block_size_for(size: usize) -> usize {
    if size <= MEDIUM_MAX {
        class_size(size_class::class_of(size))
    } else {
        0
    }
}
