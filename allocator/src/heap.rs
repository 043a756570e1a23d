//! Thread heaps: where a thread's small blocks come from, with no lock and no
//! atomic read-modify-write on the fast paths.
//!
//! A heap belongs to one thread and one arena. Per size class it has a
//! `current` span (the fast path pops its free list), a list of other spans
//! with free blocks (`avail`) and a list of spans that were full when last
//! looked at (`full`). The current span carries one extra count in `used`
//! (the pin) so that the owner's free path never finds it empty and never
//! has to ask "is this the current span?".
//!
//! Slow paths (refill, a span becoming empty or un-full, thread exit) take
//! the arena's lock only when they exchange spans with the arena.

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use crate::claim::ThreadClaim;

use crate::arena::{Arena, ArenaState, PurgeKind};
use crate::diag;
use crate::housekeeping::Budget;
use crate::roster::{HeapLinks, Roster};
use crate::size_class::{class_of, direct_entries_of, direct_index, CLASS_COUNT, DIRECT_ENTRIES};
use crate::span::{LinkCode, Span, SpanList, SpanState};
use crate::sync::Mutex;

/// How many spans of the `full` list one refill inspects for blocks that
/// other threads freed. Bounds the work of a refill; the list rotates, so
/// repeated refills look at all of it.
const FULL_SCAN_LIMIT: usize = 16;

#[repr(C)]
pub struct Heap {
    /// Span the fast path allocates from, per class (`EMPTY_SPAN` if none).
    /// Atomic (relaxed: plain moves) because a destroy of the heap's arena
    /// resets it from another thread (see [`Heap::detach`]).
    current: [AtomicPtr<Span>; CLASS_COUNT],
    /// `current` again, by `(size + 15) / 16` for requests up to
    /// `SMALL_TABLE_MAX`: `malloc`'s fast path reaches the span with no
    /// load of the size's class first (one dependent load fewer). Kept equal
    /// to `current` by [`Heap::set_current`].
    direct: [AtomicPtr<Span>; DIRECT_ENTRIES],
    avail: [SpanList; CLASS_COUNT],
    full: [SpanList; CLASS_COUNT],
    /// Null once the arena has been destroyed: the heap is dead, holds no
    /// span, and its thread falls back to the default arena. Atomic (relaxed,
    /// plain moves) because a destroy on another thread writes it while the
    /// owner may be looking through its heaps for another arena.
    arena: AtomicPtr<Arena>,
    /// The owning thread's id (see `thread::current_thread_id`).
    pub thread_id: usize,
    /// The arena's handle, kept here so an arena switch can return the
    /// previous one without a registry lookup (1: the default arena).
    /// Atomic for the same reason as `arena`.
    arena_handle: AtomicU64,
    /// The thread's other heaps (one per arena it used).
    pub next_in_thread: *mut Heap,
    /// This heap, as the pool handed it out: a pointer that reaches the
    /// whole `HeapSlot`, links included. Spans name their heap by it, and
    /// the roster is given its links through it; a pointer taken from a
    /// `&mut Heap` reaches the heap's own bytes only, and following it to
    /// the links was undefined behaviour (Miri's Stacked Borrows). Set by
    /// `new_heap` whenever the pool hands the heap out (always to the same
    /// value; null in the empty heap, which never joins an arena).
    this: *mut Heap,
    /// Link in the pool of unused heaps.
    pool_next: *mut Heap,
    /// Secure mode: the size class the next sweep for emptied spans starts
    /// at (see [`Heap::sweep_for_emptied`]).
    sweep_class: usize,
    /// Bytes of the empty spans this heap keeps in `avail` for their
    /// class's next refill (see `free_local_slow`); its share of
    /// [`KEPT_EMPTY_BYTES`]. For the policy only: never unsafe if off.
    kept_bytes: usize,
}

/// What all heaps together keep of empty spans for reuse at most: a thread
/// that frees a batch and allocates the next reuses its span instead of
/// giving it back and taking one again. Process-wide, so that a program
/// with hundreds of threads that each free everything holds no more than a
/// program with two (with a per-heap bound, 256 threads each keeping 4
/// spans held 60 MB more in `mem_scenario threads`).
const KEPT_EMPTY_LIMIT: usize = 4 << 20;

/// A span that empties stays with its heap while its class has fewer than
/// this many other spans with room, besides the current one (see
/// `free_local_slow`). One kept per class made a program that frees
/// batches of many sizes (`sh6bench`) give back and take again a span of
/// each of its busier classes at every batch; four took 5% off its time
/// (pinned to one CPU, paired) and 3% of its instructions; sixteen did no
/// better. The process-wide [`KEPT_EMPTY_LIMIT`] bounds them all the same.
pub const KEEP_EMPTY_PER_CLASS: usize = 4;

/// Bytes of empty spans kept by all heaps (see [`KEPT_EMPTY_LIMIT`]).
static KEPT_EMPTY_BYTES: AtomicUsize = AtomicUsize::new(0);

/// A `Sync` wrapper for read-only statics that contain raw pointers.
#[repr(transparent)]
pub struct ReadOnly<T>(pub T);
// SAFETY: the wrapped statics are never written (their only pointers lead to
// other such statics), so sharing them between threads is sound.
unsafe impl<T> Sync for ReadOnly<T> {}

static EMPTY_SPAN: ReadOnly<Span> = ReadOnly(Span::empty());

/// The span every empty `current` entry points at: no free block, so the
/// fast path falls into the slow path, which never writes to it.
#[inline(always)]
pub fn empty_span() -> *mut Span {
    &EMPTY_SPAN.0 as *const Span as *mut Span
}

/// The heap of threads that have not allocated yet: every class leads to the
/// slow path, which sets up a real heap.
pub static EMPTY_HEAP: ReadOnly<Heap> = ReadOnly(Heap {
    current: [const { AtomicPtr::new(&EMPTY_SPAN.0 as *const Span as *mut Span) }; CLASS_COUNT],
    direct: [const { AtomicPtr::new(&EMPTY_SPAN.0 as *const Span as *mut Span) }; DIRECT_ENTRIES],
    avail: [SpanList::EMPTY; CLASS_COUNT],
    full: [SpanList::EMPTY; CLASS_COUNT],
    arena: AtomicPtr::new(ptr::null_mut()),
    thread_id: 0,
    arena_handle: AtomicU64::new(1),
    next_in_thread: ptr::null_mut(),
    this: ptr::null_mut(),
    pool_next: ptr::null_mut(),
    sweep_class: 0,
    kept_bytes: 0,
});

#[inline(always)]
pub fn empty_heap() -> *mut Heap {
    &EMPTY_HEAP.0 as *const Heap as *mut Heap
}

/// Pops a block of `class` from `heap`'s current span, or goes slow; null
/// (errno `ENOMEM`) if out of memory.
///
/// # Safety
/// `heap` is a live heap of the calling thread (`thread::own_heap`), not
/// the empty heap or a dead one.
#[inline(always)]
pub unsafe fn alloc_small(heap: *mut Heap, class: usize) -> *mut u8 {
    // SAFETY: `class` < CLASS_COUNT (from the size-class functions); the
    // current span is the heap's own or the read-only empty span, and only
    // the owner thread touches the free-list head (with the count) of its
    // spans.
    unsafe {
        let span = &*(*heap).current.get_unchecked(class).load(Ordering::Relaxed);
        let block = span.pop_counted();
        if !block.is_null() {
            return block;
        }
        alloc_small_slow(heap, class)
    }
}

/// `malloc`'s fast path: pops a block of `class` from `heap`'s current span;
/// null if it has none (the caller then goes slow). Calls nothing.
///
/// # Safety
/// As for [`alloc_small`], and the caller is inside the allocator.
#[inline(always)]
pub unsafe fn try_alloc_small(heap: *mut Heap, class: usize) -> *mut u8 {
    // SAFETY: as in `alloc_small`.
    unsafe { (*(*heap).current.get_unchecked(class).load(Ordering::Relaxed)).pop_counted() }
}

/// `malloc`'s fast path for `size <= SMALL_TABLE_MAX`: as
/// [`try_alloc_small`], with the span found by size.
///
/// # Safety
/// As for [`try_alloc_small`].
#[inline(always)]
pub unsafe fn try_alloc_direct(heap: *mut Heap, size: usize) -> *mut u8 {
    // SAFETY: `direct_index(size)` < DIRECT_ENTRIES for such sizes; the
    // rest as in `alloc_small`.
    unsafe {
        (*(*heap)
            .direct
            .get_unchecked(direct_index(size))
            .load(Ordering::Relaxed))
        .pop_counted()
    }
}

/// Allocates `size <= MEDIUM_MAX` bytes from `heap`.
///
/// # Safety
/// As for [`alloc_small`].
#[inline(always)]
pub unsafe fn alloc(heap: *mut Heap, size: usize) -> *mut u8 {
    // SAFETY: forwarded.
    unsafe { alloc_small(heap, class_of(size)) }
}

#[cold]
#[inline(never)]
unsafe fn alloc_small_slow(heap: *mut Heap, class: usize) -> *mut u8 {
    // SAFETY: the calling thread's own heap (a live pool heap).
    unsafe { note_activity(heap) };
    crate::race_hooks::pause(crate::race_hooks::Point::MallocSlowPath);
    // SAFETY: as above.
    let h = unsafe { &mut *heap };
    if crate::secure::enabled() {
        h.sweep_for_emptied();
    }
    let Some(span) = h.refill(class) else {
        return out_of_memory();
    };
    // SAFETY: `refill` returns the current span of this thread's heap, with
    // a free block.
    let s = unsafe { &*span };
    let block = s.pop();
    if block.is_null() {
        s.report_corrupt_list();
    }
    s.set_used(s.used() + 1);
    block
}

/// Null with errno `ENOMEM`: what the slow path returns when it fails, so
/// that the fast path needs no test of its own.
#[cold]
fn out_of_memory() -> *mut u8 {
    crate::os::set_errno(libc::ENOMEM);
    ptr::null_mut()
}

/// What [`try_free_local`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LocalFree {
    /// The block is on the free list; nothing more to do.
    Done,
    /// Nothing changed: the free is more than a push (see
    /// [`try_free_local`]), for the caller's slow path.
    Refused,
    /// The block is on the free list and its span has no block out now:
    /// the caller, still inside the allocator, hands the span back with
    /// [`span_emptied`].
    Emptied,
}

/// `free`'s fast path: puts `p`, an address in `span`, on the owner's free
/// list if it is a block start handed out, not looking freed, in a span
/// with no parked blocks that is not in the `full` list. Refused, with
/// nothing changed, otherwise: the caller then takes [`free_local`]. The
/// span's count of blocks out is tested after the push, not before (a
/// current span never reaches 0: it is pinned). Calls nothing.
///
/// # Safety
/// As for [`free_local`], and the caller is inside the allocator.
#[inline(always)]
pub unsafe fn try_free_local(span: *mut Span, p: *mut u8) -> LocalFree {
    // SAFETY: the caller owns the span and `p` lies in it.
    let s = unsafe { &*span };
    // Read before the block is written, which the compiler cannot tell
    // apart from the span's fields.
    let (fast_below, code) = (s.fast_free_below(), s.link_code());
    // SAFETY: the caller owns the span.
    let index = unsafe { s.index_of_owned(p) };
    // SAFETY: `p` lies in the caller's span, whose memory is mapped.
    // `fast_below` is 0 for a span in the `full` list (see `Span`).
    if index >= fast_below || unsafe { crate::span::may_be_link(p, code) } {
        return LocalFree::Refused;
    }
    // SAFETY: a block of the caller's own span, given up by the caller.
    if unsafe { s.push_local(p, index, code) } {
        return LocalFree::Emptied;
    }
    LocalFree::Done
}

/// After [`try_free_local`] said [`LocalFree::Emptied`]: gives the span
/// back (or, for a current span, which is pinned and never empties,
/// reports the double free that made its count reach 0).
///
/// # Safety
/// The caller owns `span`, whose last block out it just freed (`p`), and
/// is inside the allocator.
pub unsafe fn span_emptied(span: *mut Span, p: *mut u8) {
    // SAFETY: forwarded.
    unsafe { free_local_slow(span, p) }
}

/// Frees `p`, an address in `span`, which the calling thread owns: a block
/// start that does not look freed already goes on the free list; anything
/// else takes the checked path.
///
/// # Safety
/// `span` is owned by the calling thread and `p` lies in it.
#[inline(always)]
pub unsafe fn free_local(span: *mut Span, p: *mut u8) {
    // SAFETY: the caller owns the span and `p` lies in it.
    let s = unsafe { &*span };
    // Read before the block is written, which the compiler cannot tell
    // apart from the span's fields.
    let (fast_below, code) = (s.fast_free_below(), s.link_code());
    // SAFETY: the caller owns the span.
    let index = unsafe { s.index_of_owned(p) };
    // Below `fast_below`: a block start that was handed out, in a span with
    // no parked blocks.
    // SAFETY: `p` lies in the caller's span, whose memory is mapped.
    if index >= fast_below || unsafe { crate::span::may_be_link(p, code) } {
        // SAFETY: forwarded.
        return unsafe { free_local_checked(span, p, index) };
    }
    // SAFETY: a block of the caller's own span, given up by the caller.
    unsafe { release_local(span, p, index, code) }
}

/// The owner's push of block `p` (index `index`) and its accounting.
///
/// # Safety
/// As for [`free_local`], and `p` is the block of index `index`, not free.
#[inline(always)]
unsafe fn release_local(span: *mut Span, p: *mut u8, index: u64, code: LinkCode) {
    // SAFETY: the caller's own span, reached through a shared reference.
    let s = unsafe { &*span };
    // SAFETY: `p` is block `index` of the caller's own span, given up by the
    // caller, and `code` is the span's link code.
    let none_out = unsafe { s.push_local(p, index, code) };
    if none_out || s.is_full() {
        // SAFETY: forwarded.
        unsafe { free_local_slow(span, p) };
    }
}

/// How many of its owner's frees a current span with parked blocks takes
/// on the checked path before it puts them back on its list.
const RESTORE_AFTER_FREES: u32 = 64;

/// A local free whose pointer is not a block start of a block handed out,
/// whose block looks freed already, or whose span has parked blocks: abort
/// with a message if it is misuse, else free it (and, in a current span
/// freed into often enough, put the parked blocks back on the list).
#[cold]
#[inline(never)]
unsafe fn free_local_checked(span: *mut Span, p: *mut u8, index: u64) {
    // SAFETY: the caller owns the span.
    let s = unsafe { &*span };
    if index >= s.reserved() {
        diag::fatal_pointer("free", "pointer is not the start of a block", p);
    }
    if index >= s.capacity() {
        diag::fatal_pointer(
            "free",
            "pointer is not a block in use (never handed out)",
            p,
        );
    }
    // A block on a list has a link word that decodes: only then is a walk
    // of the lists worth it (a span with parked blocks sends every free
    // here, and a walk per free made such frees cost O(free blocks)).
    // SAFETY: `p` is a block start of the caller's span, mapped.
    if s.is_parked(index) || (unsafe { s.looks_free(p) } && s.is_listed_free(index)) {
        diag::fatal_pointer("free", "double free", p);
    }
    // The heap's current span with parked blocks, freed into again and
    // again: its owner is at work in it after a purge, so the blocks go
    // back on the list. That writes a link into each, so their pages fault
    // back in now: not at the first such free, or a thread that frees a
    // few blocks and idles again (or exits) would bring back the span's
    // pages for nothing. Else every free into it came here until an
    // `extend` needed them, which a loop that reuses a few blocks never
    // does: twice the fast path's cost, for good. Only frees into the
    // current span count.
    // SAFETY: the caller owns the span, so its heap is the caller's; the
    // caller is inside the allocator (by depth), so no claimer holds it.
    if s.has_parked()
        && unsafe { (*s.heap().cast::<Heap>()).current(s.class()) } == span
        && s.count_free_while_parked() >= RESTORE_AFTER_FREES
    {
        // Blocks other threads freed first: their collection checks each
        // against the parked ones (a remote double free of a parked block
        // aborts there), which the restore's relinking would otherwise cut
        // short. The count stays above 0: the span is pinned, and `p` is out.
        s.collect_remote();
        let _ = s.restore_parked();
        // At work: the next purge should not count this heap idle and give
        // the pages back again at once (only slow paths mark activity).
        // SAFETY: as above.
        unsafe { note_activity(s.heap().cast()) };
    }
    // The program's data only happened to decode to a link.
    // SAFETY: a block start of the caller's span, not on a free list.
    unsafe { release_local(span, p, index, s.link_code()) }
}

/// A local free made a span empty, or gave a block to a span in the `full`
/// list.
#[cold]
#[inline(never)]
unsafe fn free_local_slow(span: *mut Span, p: *mut u8) {
    // SAFETY: the caller owns `span`, so its heap is the caller's.
    let s = unsafe { &*span };
    // SAFETY: the span's heap is the caller's own pool heap.
    unsafe { note_activity(s.heap().cast()) };
    // Free blocks that the purger may give back later.
    crate::housekeeping::note_pending();
    // SAFETY: as above.
    let heap = unsafe { &mut *s.heap().cast::<Heap>() };
    let class = s.class().min(CLASS_COUNT - 1);
    match s.state() {
        SpanState::Full => {
            // SAFETY: a Full span is in its heap's full list.
            unsafe { heap.full[class].remove(span) };
            if s.used() == 0
                && !(heap.avail[class].shorter_than(KEEP_EMPTY_PER_CLASS) && heap.try_keep_empty(s))
            {
                heap.retire(span);
            } else {
                s.set_state(SpanState::Available);
                // SAFETY: just unlinked.
                unsafe { heap.avail[class].push_back(span) };
            }
        }
        // A span that empties while its class has fewer than
        // `KEEP_EMPTY_PER_CLASS` other spans with room besides the current
        // one stays, empty, for the next refills: a program that frees a
        // batch and allocates the next one would otherwise hand its spans
        // back and take them again (a retire's walk, the arena lock, fresh
        // blocks carved) at every batch. As mimalloc keeps a class's only
        // page. `KEPT_EMPTY_LIMIT` bytes in all; the purger gives them back
        // once the heap idles. (This span is in the list: hence the + 1.)
        SpanState::Available
            if heap.avail[class].shorter_than(KEEP_EMPTY_PER_CLASS + 1)
                && heap.try_keep_empty(s) => {}
        SpanState::Available => {
            // SAFETY: an Available span is in its heap's avail list.
            unsafe { heap.avail[class].remove(span) };
            heap.retire(span);
        }
        // The current span is pinned: reaching zero means a block was freed
        // twice.
        _ => diag::fatal_pointer("free", "double free (block count underflow)", p),
    }
}

impl Heap {
    /// Counts the emptied span `s` as kept, if [`KEPT_EMPTY_LIMIT`] has
    /// room for it (two heaps at once may go past it by a span each).
    fn try_keep_empty(&mut self, s: &Span) -> bool {
        let bytes = s.slice_count() * crate::segment::SLICE_SIZE;
        if KEPT_EMPTY_BYTES.load(Ordering::Relaxed) + bytes > KEPT_EMPTY_LIMIT {
            return false;
        }
        KEPT_EMPTY_BYTES.fetch_add(bytes, Ordering::Relaxed);
        self.kept_bytes += bytes;
        true
    }

    /// In a `fork` child, whose only thread is the caller: the budget in use
    /// is what the heaps of that thread (the chain from `first`) keep; the
    /// other threads' heaps are gone with their threads.
    ///
    /// # Safety
    /// `first` is null or the calling thread's first heap.
    pub unsafe fn recount_kept_after_fork(first: *mut Heap) {
        let mut kept = 0;
        let mut heap = first;
        while !heap.is_null() {
            // SAFETY: the caller's own chain.
            let h = unsafe { &*heap };
            kept += h.kept_bytes;
            heap = h.next_in_thread;
        }
        KEPT_EMPTY_BYTES.store(kept, Ordering::Relaxed);
    }

    /// A kept empty span of `bytes` was taken again or given back; all of
    /// them with `usize::MAX`.
    fn unkeep_empty(&mut self, bytes: usize) {
        let bytes = bytes.min(self.kept_bytes);
        if bytes != 0 {
            self.kept_bytes -= bytes;
            KEPT_EMPTY_BYTES.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Makes the heap an empty heap of `arena` for `thread_id`, keeping its
    /// place in its thread's chain.
    fn init(&mut self, arena: *const Arena, thread_id: usize, next_in_thread: *mut Heap) {
        self.clear_current();
        self.avail = [SpanList::EMPTY; CLASS_COUNT];
        self.full = [SpanList::EMPTY; CLASS_COUNT];
        self.arena.store(arena.cast_mut(), Ordering::Relaxed);
        self.thread_id = thread_id;
        // Set under the arena's lock when the heap joins it.
        let default = crate::arena::DEFAULT_LIFE;
        self.arena_handle.store(default, Ordering::Relaxed);
        self.next_in_thread = next_in_thread;
        self.pool_next = ptr::null_mut();
        self.sweep_class = 0;
        self.kept_bytes = 0;
    }

    /// The heap's arena is being destroyed, and with it every span: forget
    /// them and become dead (the thread then falls back to the default
    /// arena). Arena lock; the owner thread is not inside the allocator for
    /// this arena (the destroy contract), and the destroyer's membarrier
    /// orders these stores before the owner's next look.
    fn detach(&mut self) {
        self.clear_current();
        self.avail = [SpanList::EMPTY; CLASS_COUNT];
        self.full = [SpanList::EMPTY; CLASS_COUNT];
        self.unkeep_empty(usize::MAX);
        self.forget_arena();
    }

    /// Makes the heap dead: no arena, the default arena's handle.
    fn forget_arena(&self) {
        self.arena.store(ptr::null_mut(), Ordering::Relaxed);
        let default = crate::arena::DEFAULT_LIFE;
        self.arena_handle.store(default, Ordering::Relaxed);
    }

    /// The heap's arena; null if the heap is dead (or the empty heap).
    #[inline]
    pub fn arena_ptr(&self) -> *const Arena {
        self.arena.load(Ordering::Relaxed)
    }

    /// The raw handle of the heap's arena (the default arena's if dead).
    #[inline]
    pub fn arena_handle(&self) -> u64 {
        self.arena_handle.load(Ordering::Relaxed)
    }

    fn arena(&self) -> &'static Arena {
        // SAFETY: arenas live in static storage and are never moved or
        // unmapped, so the reference is good for the life of the process.
        unsafe { &*self.arena_ptr() }
    }

    /// The current span of `class` (`empty_span()` if none).
    fn current(&self, class: usize) -> *mut Span {
        self.current
            .get(class)
            .map_or(empty_span(), |c| c.load(Ordering::Relaxed))
    }

    fn set_current(&self, class: usize, span: *mut Span) {
        if let Some(c) = self.current.get(class) {
            c.store(span, Ordering::Relaxed);
        }
        for entry in direct_entries_of(class) {
            if let Some(d) = self.direct.get(entry) {
                d.store(span, Ordering::Relaxed);
            }
        }
    }

    fn clear_current(&self) {
        for c in self.current.iter().chain(&self.direct) {
            c.store(empty_span(), Ordering::Relaxed);
        }
    }

    /// Secure mode sends every free through the remote lists, so a span
    /// that empties is noticed only when its own class refills: a thread
    /// that moved on to other sizes would keep it for good. Each slow path
    /// therefore looks at a few spans of the other classes' lists, collects
    /// the blocks freed into them and gives back the spans that emptied.
    fn sweep_for_emptied(&mut self) {
        const SPANS_PER_SWEEP: usize = 16;
        let mut looked = 0;
        for step in 0..CLASS_COUNT {
            let class = (self.sweep_class + step) % CLASS_COUNT;
            for which in [SpanState::Full, SpanState::Available] {
                let mut span = if which == SpanState::Full {
                    self.full[class].head
                } else {
                    self.avail[class].head
                };
                while !span.is_null() && looked < SPANS_PER_SWEEP {
                    looked += 1;
                    // SAFETY: a member of this heap's list: ours.
                    let next = unsafe { SpanList::next_of(span) };
                    // SAFETY: as above.
                    let s = unsafe { &*span };
                    s.collect_remote();
                    if s.used() == 0 || (which == SpanState::Full && s.has_free()) {
                        // SAFETY: a member of the list named by `which`.
                        unsafe {
                            if which == SpanState::Full {
                                self.full[class].remove(span);
                            } else {
                                self.avail[class].remove(span);
                            }
                        }
                        if s.used() == 0 {
                            self.retire(span);
                        } else {
                            s.set_state(SpanState::Available);
                            // SAFETY: unlinked above.
                            unsafe { self.avail[class].push_back(span) };
                        }
                    }
                    span = next;
                }
            }
            if looked >= SPANS_PER_SWEEP {
                self.sweep_class = class;
                return;
            }
        }
        self.sweep_class = (self.sweep_class + 1) % CLASS_COUNT;
    }

    /// Makes `current[class]` a span with a free block and returns it.
    fn refill(&mut self, class: usize) -> Option<*mut Span> {
        let current = self.current(class);
        if current != empty_span() {
            // SAFETY: a real current span of this heap.
            let s = unsafe { &*current };
            if s.free_list_is_corrupt() {
                s.report_corrupt_list();
            }
            s.collect_remote();
            if s.has_free() || s.extend() {
                return Some(current);
            }
            // Exhausted: unpin and park it until blocks come back.
            s.set_used(s.used() - 1);
            s.set_state(SpanState::Full);
            // SAFETY: the current span is in no list.
            unsafe { self.full[class].push_back(current) };
            self.set_current(class, empty_span());
        }
        let span = self.find_span(class)?;
        // SAFETY: `find_span` returns a span of this heap in no list.
        let s = unsafe { &*span };
        if !s.has_free() && !s.extend() {
            diag::fatal("refill found a span without room");
        }
        s.set_state(SpanState::Current);
        s.set_used(s.used() + 1);
        self.set_current(class, span);
        Some(span)
    }

    /// A span of `class` with room, owned by this heap and in no list.
    fn find_span(&mut self, class: usize) -> Option<*mut Span> {
        let mut reclaimed = false;
        loop {
            if let Some(span) = self.avail[class].pop_front() {
                // SAFETY: a span of this heap's list.
                let s = unsafe { &*span };
                if s.used() == 0 {
                    self.unkeep_empty(s.slice_count() * crate::segment::SLICE_SIZE);
                }
                return Some(span);
            }
            if let Some(span) = self.reclaim_full(class) {
                return Some(span);
            }
            let arena = self.arena();
            let mut state = arena.state.lock();
            while let Some(span) = state.take_abandoned(class) {
                self.adopt(span);
                // SAFETY: adopted: ours now.
                let s = unsafe { &*span };
                s.collect_remote();
                if s.has_room() {
                    return Some(span);
                }
                s.set_state(SpanState::Full);
                // SAFETY: in no list.
                unsafe { self.full[class].push_back(span) };
            }
            match state.alloc_span(arena, class) {
                Some(span) => {
                    drop(state);
                    self.adopt(span);
                    return Some(span);
                }
                None if !reclaimed && state.has_limit() => {
                    // Perhaps refused for the limit while blocks freed by
                    // other threads still hold spans: collect this heap's
                    // (no purge can claim a heap from inside it), then look
                    // again, from this heap's own lists on (full spans that
                    // got blocks back are available now). The other heaps'
                    // are the purger's to collect, after this fails
                    // (`lib.rs`, `small_slow`).
                    // SAFETY: this thread owns the heap; `state` is its
                    // arena's.
                    unsafe {
                        self.purge_idle(&mut state, 0, PurgeKind::Reclaim, &Budget::unlimited())
                    };
                    drop(state);
                    reclaimed = true;
                }
                None => return None,
            }
        }
    }

    /// Looks for blocks that other threads freed into spans of the full
    /// list; returns a span that has some now (unlinked), retiring spans that
    /// became empty.
    fn reclaim_full(&mut self, class: usize) -> Option<*mut Span> {
        let mut first_rotated = ptr::null_mut();
        for _ in 0..FULL_SCAN_LIMIT {
            let span = self.full[class].head;
            if span.is_null() || span == first_rotated {
                return None;
            }
            // SAFETY: the head of our full list: a span of ours.
            unsafe { self.full[class].remove(span) };
            // SAFETY: as above.
            let s = unsafe { &*span };
            s.collect_remote();
            if s.has_free() {
                // Possibly entirely free: reuse it rather than retire it and
                // take it (or another) back from the arena.
                return Some(span);
            }
            if first_rotated.is_null() {
                first_rotated = span;
            }
            // SAFETY: unlinked above; rotate so the next scan moves on.
            unsafe { self.full[class].push_back(span) };
        }
        None
    }

    fn adopt(&mut self, span: *mut Span) {
        // SAFETY: the span was handed over under the arena lock; no other
        // thread owns it.
        let s = unsafe { &*span };
        s.set_owner(self.this.cast(), crate::secure::owner_tag(self.thread_id));
        s.set_state(SpanState::Available);
    }

    /// Gives an empty span (in no list) back to the arena.
    fn retire(&mut self, span: *mut Span) {
        // Counted before the lock: the walk does not lengthen the hold.
        // SAFETY: an empty, unlinked span of this heap (the owner's).
        unsafe { (*span).check_before_retire() };
        let mut state = self.arena().state.lock();
        // SAFETY: empty, unlinked span of this heap's arena, checked above.
        unsafe { state.retire_checked_span(span) };
    }

    /// Gives back what this idle heap holds but does not use: spans that
    /// became empty (also through other threads' frees) go back to the
    /// arena as free slices, and the free pages of the others to the OS.
    /// Starts at size class `first_class`, stops early when `budget` is
    /// spent. Returns the bytes purged now and, if it stopped early, the
    /// class to go on with.
    ///
    /// # Safety
    /// The caller is the heap's thread or holds a confirmed claim on it, and
    /// `state` is the locked state of the heap's arena.
    #[link_section = "arenalloc_cold"]
    pub unsafe fn purge_idle(
        &mut self,
        state: &mut ArenaState,
        first_class: usize,
        kind: PurgeKind,
        budget: &Budget,
    ) -> (usize, Option<usize>) {
        let mut purged = 0;
        for class in first_class..CLASS_COUNT {
            if budget.spent() {
                return (purged, Some(class));
            }
            let current = self.current(class);
            if current != empty_span() {
                // SAFETY: the heap's current span; the claim makes its
                // owner-only fields ours.
                let s = unsafe { &*current };
                s.collect_remote();
                if s.used() == 1 {
                    // Only the pin: unpin and give the span back.
                    s.set_used(0);
                    self.set_current(class, empty_span());
                    // SAFETY: empty; a current span is in no list.
                    purged += unsafe { state.retire_span(current) };
                    budget.progress();
                } else if kind.gives_back_pages() {
                    purged += budget.released(s.purge_free_pages());
                }
            }
            for which in [SpanState::Available, SpanState::Full] {
                let (bytes, finished) = self.purge_list(state, class, which, kind, budget);
                purged += bytes;
                if !finished {
                    // The class again: its current span and the spans done
                    // are skipped in O(1).
                    return (purged, Some(class));
                }
            }
        }
        (purged, None)
    }

    /// [`Heap::purge_idle`] for one of the class's lists.
    fn purge_list(
        &mut self,
        state: &mut ArenaState,
        class: usize,
        which: SpanState,
        kind: PurgeKind,
        budget: &Budget,
    ) -> (usize, bool) {
        let mut purged = 0;
        let list = if which == SpanState::Full {
            &mut self.full[class]
        } else {
            &mut self.avail[class]
        };
        let mut span = list.head;
        let mut moved = SpanList::EMPTY;
        let mut retired_empty_bytes = 0;
        while !span.is_null() {
            if budget.spent() {
                break;
            }
            // SAFETY: a member of the list (ours under the claim).
            let next = unsafe { SpanList::next_of(span) };
            // SAFETY: as above.
            let s = unsafe { &*span };
            // Empty before the collection: a kept span (blocks other
            // threads freed can empty others, which were never counted).
            let kept = which == SpanState::Available && s.used() == 0;
            s.collect_remote();
            if s.used() == 0 {
                if kept {
                    retired_empty_bytes += s.slice_count() * crate::segment::SLICE_SIZE;
                }
                // SAFETY: a member; then empty and unlinked.
                unsafe {
                    list.remove(span);
                    purged += state.retire_span(span);
                }
                budget.progress();
            } else if which == SpanState::Full && s.has_free() {
                // SAFETY: a member; then unlinked.
                unsafe {
                    list.remove(span);
                    moved.push_back(span);
                }
            } else if kind.gives_back_pages() {
                purged += budget.released(s.purge_free_pages());
            }
            span = next;
        }
        self.unkeep_empty(retired_empty_bytes);
        // Full spans that had blocks freed into them become available.
        while let Some(span) = moved.pop_front() {
            // SAFETY: unlinked spans of this heap.
            let s = unsafe { &*span };
            s.set_state(SpanState::Available);
            if kind.gives_back_pages() {
                purged += s.purge_free_pages();
            }
            budget.progress();
            // SAFETY: in no list.
            unsafe { self.avail[class].push_back(span) };
        }
        (purged, span.is_null())
    }

    /// The thread is exiting: hand every span to the arena, empty ones as
    /// free slices, the rest as abandoned, and leave the arena's heap list.
    pub fn abandon_all(&mut self) {
        if self.arena_ptr().is_null() {
            return;
        }
        crate::housekeeping::note_pending();
        let arena = self.arena();
        crate::race_hooks::pause(crate::race_hooks::Point::AbandonBeforeLock);
        let mut state = arena.state.lock();
        // A destroy may have detached the heap between the read and the
        // lock (its arena is null then, and it holds no span): it is in no
        // list, and the arena in that slot may be a new one whose list must
        // not be touched.
        if !core::ptr::eq(self.arena_ptr(), arena) {
            return;
        }
        // SAFETY: this heap is in its arena's list (so it came from
        // `new_heap`, which set `this`); we hold the lock.
        unsafe { state.remove_heap(links_ptr(self.this)) };
        self.unkeep_empty(usize::MAX);
        for class in 0..CLASS_COUNT {
            let current = self.current(class);
            if current != empty_span() {
                // SAFETY: our current span; unpin before handing it over.
                unsafe { (*current).set_used((*current).used() - 1) };
                self.set_current(class, empty_span());
                release_to_arena(&mut state, current);
            }
            while let Some(span) = self.avail[class].pop_front() {
                release_to_arena(&mut state, span);
            }
            while let Some(span) = self.full[class].pop_front() {
                release_to_arena(&mut state, span);
            }
        }
    }
}

/// Hands a span of an exiting heap to its arena.
fn release_to_arena(state: &mut ArenaState, span: *mut Span) {
    // SAFETY: the exiting heap still owns the span.
    let s = unsafe { &*span };
    s.collect_remote();
    s.set_owner(ptr::null_mut(), 0);
    if s.used() == 0 {
        // SAFETY: no live block; in no list.
        unsafe { state.retire_span(span) };
    } else {
        // SAFETY: live blocks remain; in no list, no owner.
        unsafe { state.abandon_span(span) };
    }
}

/// What a thread keeps in its TLS: its current heap, and its side of the
/// purger's claim handshake (in one block, so the fast paths reach both
/// from one TLS offset: see `tls::Current`). Laid out as `tls` initialises
/// it.
#[repr(C)]
pub struct ThreadState {
    /// First, so that the claim's address is the state's (the thread's id,
    /// `thread::current_thread_id`, is both).
    pub(crate) claim: ThreadClaim,
    /// The heap of the thread's preferred arena. Written only by the owner
    /// (relaxed atomics are plain moves); read by statistics, which count
    /// the threads that prefer an arena.
    pub(crate) heap: AtomicPtr<Heap>,
    /// The heap that was current before the last switch: a library call
    /// wrapped in an arena switches back to it, found without a walk. Only
    /// this thread touches it; atomic (relaxed, plain moves) so that the
    /// state stays `Sync` for the purger, which reads other fields.
    pub(crate) previous_heap: AtomicPtr<Heap>,
    /// The thread's first heap; the others hang off it (`next_in_thread`).
    /// Only this thread touches it.
    pub(crate) heaps: AtomicPtr<Heap>,
}

impl ThreadState {
    /// A new thread's state: no heap yet (the empty heap's slow path makes
    /// one), no claim.
    pub const fn initial() -> ThreadState {
        ThreadState {
            claim: ThreadClaim::new(),
            heap: AtomicPtr::new(&EMPTY_HEAP.0 as *const Heap as *mut Heap),
            previous_heap: AtomicPtr::new(&EMPTY_HEAP.0 as *const Heap as *mut Heap),
            heaps: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    pub fn claim(&self) -> &ThreadClaim {
        &self.claim
    }

    /// Whether `heap` is this thread's current heap (a racy read).
    pub fn prefers(&self, heap: *mut Heap) -> bool {
        self.heap.load(Ordering::Relaxed) == heap
    }
}

/// A heap and its roster links, as the pool hands them out (`*mut Heap`
/// points at the start, `repr(C)`).
#[repr(C)]
struct HeapSlot {
    heap: Heap,
    links: HeapLinks,
}

/// The roster links of a heap from the pool, as a raw pointer that keeps the
/// heap's provenance (so [`heap_of`] can turn it back).
///
/// # Safety
/// `heap` came from [`new_heap`] (never the empty heap).
pub unsafe fn links_ptr(heap: *mut Heap) -> *const HeapLinks {
    // SAFETY: pool heaps are the first field of a `HeapSlot`, which is never
    // unmapped.
    unsafe { ptr::addr_of!((*heap.cast::<HeapSlot>()).links) }
}

/// The roster links of a heap from the pool.
///
/// # Safety
/// As for [`links_ptr`].
unsafe fn links<'a>(heap: *mut Heap) -> &'a HeapLinks {
    // SAFETY: forwarded; only shared references to the links are ever made.
    unsafe { &*links_ptr(heap) }
}

/// The heap whose links are `links`.
///
/// # Safety
/// `links` came from [`links_ptr`] (so they are a member of some roster,
/// which only ever holds such pointers).
pub unsafe fn heap_of(links: *const HeapLinks) -> *mut Heap {
    // SAFETY: the links are a field of a `HeapSlot` whose first field is the
    // heap, and the pointer carries the whole slot's provenance.
    unsafe {
        links
            .byte_sub(core::mem::offset_of!(HeapSlot, links))
            .cast::<Heap>()
            .cast_mut()
    }
}

/// Owner, on a slow path: the heap is in use.
///
/// # Safety
/// `heap` came from [`new_heap`].
unsafe fn note_activity(heap: *mut Heap) {
    // SAFETY: forwarded.
    unsafe { links(heap) }.note_activity();
}

/// Threads whose current heap is in `roster`.
pub fn count_preferring(roster: &Roster) -> usize {
    let mut count = 0;
    roster.for_each(|links| {
        // SAFETY: rosters hold links of pool heaps (`links_ptr`); a listed
        // heap's thread is alive, and its TLS with it.
        let (heap, thread) = unsafe { (heap_of(links), (*links).thread()) };
        // SAFETY: as above; `thread` is the owner's `ThreadState`.
        count += usize::from(unsafe { (*thread.cast::<ThreadState>()).prefers(heap) });
    });
    count
}

/// The arena is being destroyed: every heap in its roster forgets its
/// spans and dies; the roster ends empty.
///
/// # Safety
/// The owner threads of the heaps are not inside the allocator for this
/// arena (see `Heap::detach`).
pub unsafe fn detach_all(state: &mut ArenaState) {
    loop {
        let first = state.heaps().first();
        if first.is_null() {
            return;
        }
        // SAFETY: a member; rosters hold links of pool heaps.
        unsafe {
            state.remove_heap(first);
            // The caller's guarantee: nobody else uses the heap now.
            (*heap_of(first)).detach();
        }
    }
}

/// Unused heaps, carved from mapped chunks and never unmapped, so a heap
/// pointer stays valid memory for the life of the process.
pub(crate) struct HeapPool {
    free: *mut Heap,
    cursor: usize,
    end: usize,
}

// SAFETY: only used under its mutex.
unsafe impl Send for HeapPool {}

pub(crate) static POOL: Mutex<HeapPool> = Mutex::new(HeapPool {
    free: ptr::null_mut(),
    cursor: 0,
    end: 0,
});

const POOL_CHUNK: usize = 256 * 1024;

/// A fresh heap of `thread` in `arena`, registered with the arena, or
/// `None` if out of memory, or the arena is closed or not in the life the
/// raw handle `life` names (0: any).
pub fn new_heap(
    arena: &'static Arena,
    thread: &'static ThreadState,
    life: u64,
) -> Option<*mut Heap> {
    // A thread's id is the address of its state (`thread::current_thread_id`).
    let thread_id = thread as *const ThreadState as usize;
    let heap = {
        let mut pool = POOL.lock();
        if !pool.free.is_null() {
            let heap = pool.free;
            // SAFETY: pool members are valid heaps that nobody uses.
            pool.free = unsafe { (*heap).pool_next };
            heap
        } else {
            let size = core::mem::size_of::<HeapSlot>().next_multiple_of(64);
            if pool.cursor + size > pool.end {
                let chunk = crate::os::map(POOL_CHUNK)? as usize;
                crate::stats::mapped_add(POOL_CHUNK);
                pool.cursor = chunk;
                pool.end = chunk + POOL_CHUNK;
            }
            let heap = pool.cursor as *mut Heap;
            pool.cursor += size;
            heap
        }
    };
    // SAFETY: the heap is ours alone: fresh from the pool (mapped, aligned,
    // writable memory that nothing else references; all-zero links are
    // valid ones).
    unsafe { prepare(heap, arena.as_ptr(), thread_id) };
    // SAFETY: as above; the lock in `join_arena` publishes it to the purger.
    unsafe { links(heap) }.set_thread(thread as *const ThreadState as *const (), &thread.claim);
    if join_arena(arena, heap, life) {
        Some(heap)
    } else {
        // SAFETY: nobody else has seen the heap.
        unsafe { recycle_heap(heap) };
        None
    }
}

/// Makes the heap `heap`, fresh from the pool, an empty heap of `arena`
/// for `thread_id`, in no thread's chain yet.
///
/// # Safety
/// `heap` is the pool's pointer to a heap nobody else references (mapped,
/// aligned, writable memory; all-zero links are valid ones).
unsafe fn prepare(heap: *mut Heap, arena: *const Arena, thread_id: usize) {
    // SAFETY: the caller's guarantee.
    let h = unsafe { &mut *heap };
    h.init(arena, thread_id, ptr::null_mut());
    h.this = heap;
}

/// Makes the dead heap `heap` (of the calling thread) a heap of `arena` in
/// the life `life` names (see [`new_heap`]).
///
/// # Safety
/// `heap` is the calling thread's own dead heap.
pub unsafe fn revive_heap(heap: *mut Heap, arena: &'static Arena, life: u64) -> bool {
    // SAFETY: the caller's own heap, in no arena's list.
    let h = unsafe { &mut *heap };
    h.init(arena.as_ptr(), h.thread_id, h.next_in_thread);
    let joined = join_arena(arena, heap, life);
    if !joined {
        // The arena closed meanwhile: stay dead, or a later arena in the
        // same slot would find this heap, which is in no arena's list.
        h.forget_arena();
    }
    joined
}

/// Registers a heap of the calling thread with its arena and records the
/// arena's handle in it, both under the arena's lock; false if the arena is
/// closed, or not in the life the raw handle `life` names (0: any), so a
/// handle that went stale since it was checked is refused.
fn join_arena(arena: &'static Arena, heap: *mut Heap, life: u64) -> bool {
    crate::race_hooks::pause(crate::race_hooks::Point::JoinBeforeLock);
    let mut state = arena.state.lock();
    if !state.is_open() || (life != 0 && state.life() != life) {
        return false;
    }
    // SAFETY: the caller's own heap, not yet in any list.
    unsafe { (*heap).arena_handle.store(state.life(), Ordering::Relaxed) };
    // SAFETY: a pool heap in no list.
    unsafe { state.add_heap(links_ptr(heap)) }
}

/// Returns a heap whose spans were all handed back.
///
/// # Safety
/// `heap` came from [`new_heap`] and nobody uses it any more.
pub unsafe fn recycle_heap(heap: *mut Heap) {
    let mut pool = POOL.lock();
    // SAFETY: the caller no longer uses the heap.
    unsafe { (*heap).pool_next = pool.free };
    pool.free = heap;
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::alloc::{alloc_zeroed, dealloc, Layout};

    /// A span adopted by a heap leads back to the heap's whole pool slot:
    /// the activity a free path records through the span's heap pointer
    /// lands in the slot's links, beyond the heap itself. Run under Miri
    /// (`cargo +nightly miri test -p arenalloc-engine --lib heap::tests`),
    /// it failed with the pointer taken from `&mut Heap` (Stacked Borrows:
    /// no item grants access to the links' bytes).
    #[test]
    fn an_adopted_span_leads_back_to_its_heaps_links() {
        let (slot_layout, span_layout) = (Layout::new::<HeapSlot>(), Layout::new::<Span>());
        // SAFETY: zeroed memory is a valid heap slot and a valid span (the
        // pool and the segments hand out zeroed memory the same way); both
        // are used only here, then freed with their layouts.
        unsafe {
            let slot = alloc_zeroed(slot_layout).cast::<HeapSlot>();
            let span = alloc_zeroed(span_layout).cast::<Span>();
            assert!(!slot.is_null() && !span.is_null());
            let heap = slot.cast::<Heap>();
            prepare(heap, ptr::null(), 1);
            (*heap).adopt(span);
            let links = &*links_ptr(heap);
            assert!(links.is_idle_since_last_pass(1));
            note_activity((*span).heap().cast());
            assert!(!links.is_idle_since_last_pass(2), "the activity was lost");
            dealloc(span.cast(), span_layout);
            dealloc(slot.cast(), slot_layout);
        }
    }
}
