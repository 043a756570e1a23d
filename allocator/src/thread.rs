//! Threads: which heap the calling thread uses, who the calling thread is,
//! what happens when it exits, and `fork`.
//!
//! The heap pointer lives in the thread's [`ThreadState`] (defined in `heap`,
//! placed by `tls`), which
//! has no destructor (no registration, so no `calloc` from glibc). Thread
//! exit is seen through a pthread key destructor, created once at start-up
//! while few keys exist.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arena::Arena;
use crate::claim::ThreadClaim;
use crate::heap::{self, Heap, ThreadState};
use crate::registry::{default_arena, for_each_arena};

/// The calling thread's state.
#[inline(always)]
fn this_thread() -> &'static ThreadState {
    // SAFETY: the calling thread's own TLS, alive as long as the thread,
    // which is as long as any caller can hold the reference.
    unsafe { &*crate::tls::state() }
}

/// The calling thread's heap for its preferred arena (`empty_heap()` until
/// the thread first allocates).
#[inline(always)]
pub fn current_heap() -> *mut Heap {
    this_thread().heap.load(Ordering::Relaxed)
}

/// The calling thread's side of the claim handshake, by address (the fast
/// paths reach it through `tls::Current`; see [`inside_allocator`] for the
/// slow paths).
#[inline(always)]
pub fn current_claim() -> &'static ThreadClaim {
    &this_thread().claim
}

/// Whether `claim` is the calling thread's own (a purge run from inside
/// the allocator cannot claim it, and need not wait for it).
pub fn is_own_claim(claim: &ThreadClaim) -> bool {
    let state = current_thread_state();
    // SAFETY: the calling thread's own TLS, alive as long as the thread;
    // only the field's address is taken.
    core::ptr::eq(claim, unsafe { &(*state).claim })
}

/// Runs `f` (which may touch the calling thread's heaps and spans) marked as
/// inside the allocator, so no purger claims the thread's heaps meanwhile;
/// first waits for a claim in progress to end.
#[inline(always)]
pub fn inside_allocator<R>(f: impl FnOnce() -> R) -> R {
    // `f` runs outside `with`'s closure, so that the compiler inlines the
    // TLS access whatever the size of `f`.
    let state = current_thread_state();
    // SAFETY: the calling thread's own TLS, alive as long as the thread.
    let claim = unsafe { &(*state).claim };
    let depth = claim.enter();
    let result = f();
    claim.leave(depth);
    result
}

/// The calling thread's state, for its heaps' links. Valid until the
/// thread exits; its heaps leave their arenas' lists before that.
#[inline(always)]
pub fn current_thread_state() -> *const ThreadState {
    crate::tls::state()
}

/// Makes `heap` the thread's current heap.
fn set_current_heap(heap: *mut Heap) {
    let t = this_thread();
    // Load and store, not a swap: only this thread writes the field, and a
    // swap is a locked instruction on x86.
    t.previous_heap
        .store(t.heap.load(Ordering::Relaxed), Ordering::Relaxed);
    t.heap.store(heap, Ordering::Relaxed);
}

/// Runs `f` with the default arena preferred, then restores the thread's
/// arena: for allocations made on the allocator's own behalf (the
/// housekeeper's thread block, which `pthread_create` allocates), which must
/// not land in an arena the application may destroy.
pub fn in_default_arena<R>(f: impl FnOnce() -> R) -> R {
    let previous = current_heap();
    // The empty heap's slow path allocates in the default arena.
    set_current_heap(heap::empty_heap());
    let result = f();
    set_current_heap(previous);
    result
}

/// A number that identifies the calling thread among live threads: the
/// address of its state. Spans record it as their owner; `free` compares
/// the owner with the copy in the state's claim (the owner key).
/// Aligned to 8, so never 0, never `DEAD_OWNER` and with bit 0 free for
/// `secure::owner_tag`.
#[inline(always)]
pub fn current_thread_id() -> usize {
    crate::tls::state() as usize
}

/// The thread-exit key plus one (0: not created yet; key 0 is a valid key,
/// and usually another library's).
static THREAD_KEY: AtomicU64 = AtomicU64::new(0);

/// The thread-exit key. A heap made before the process's set-up created it
/// would never be handed back at thread exit: that is a bug here, reported.
fn exit_key() -> libc::pthread_key_t {
    match THREAD_KEY.load(Ordering::Relaxed).checked_sub(1) {
        Some(key) => key as libc::pthread_key_t,
        None => crate::diag::fatal("a thread heap made before the process set-up"),
    }
}

/// Creates the key whose destructor sees each thread exit. Called once, by
/// the process's one-time set-up (`process::ensure_init`), before any heap
/// exists; `pthread_key_create` does not allocate.
pub fn create_exit_key() {
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out-pointer; the destructor is an
    // `extern "C"` function that lives forever.
    let rc = unsafe { libc::pthread_key_create(&mut key, Some(on_thread_exit)) };
    if rc != 0 {
        crate::diag::fatal("pthread_key_create failed");
    }
    THREAD_KEY.store(u64::from(key) + 1, Ordering::Relaxed);
}

/// The calling thread's heap for its preferred arena. A thread without a
/// heap yet, or whose preferred arena was destroyed, gets (and from now on
/// prefers) its heap in the default arena. `None` if out of memory.
#[inline]
pub fn own_heap() -> Option<*mut Heap> {
    let heap = current_heap();
    // SAFETY: the current heap is the thread's own or the read-only empty
    // heap; a destroyed arena's heap is dead (null arena).
    if unsafe { (*heap).arena_ptr().is_null() } {
        return heap_in_default_arena();
    }
    Some(heap)
}

#[cold]
fn heap_in_default_arena() -> Option<*mut Heap> {
    let heap = heap_in(default_arena(), 0)?;
    set_current_heap(heap);
    Some(heap)
}

/// The calling thread's heap for `arena`, created on first use. A thread's
/// heaps form a chain from the first one, which the thread-exit key holds;
/// heaps whose arena was destroyed stay in the chain, dead, until reused.
///
/// `life` is the raw handle the caller resolved `arena` from (0: any life):
/// `None` if the arena is no longer in that life.
pub fn heap_in(arena: &'static Arena, life: u64) -> Option<*mut Heap> {
    let first = this_thread().heaps.load(Ordering::Relaxed);
    let mut heap = first;
    let mut dead = core::ptr::null_mut();
    while !heap.is_null() {
        // SAFETY: the chain holds this thread's own heaps.
        let h = unsafe { &*heap };
        if core::ptr::eq(h.arena_ptr(), arena) {
            // A thread has one heap per arena: one of another life means
            // the caller's handle went stale.
            return (life == 0 || h.arena_handle() == life).then_some(heap);
        }
        // The current heap, even dead, must not silently change arena.
        if h.arena_ptr().is_null() && heap != current_heap() {
            dead = heap;
        }
        heap = h.next_in_thread;
    }
    if !dead.is_null() {
        // SAFETY: a dead heap of this thread's chain.
        return unsafe { heap::revive_heap(dead, arena, life) }.then_some(dead);
    }
    new_heap_in(arena, first, life)
}

#[cold]
fn new_heap_in(arena: &'static Arena, first: *mut Heap, life: u64) -> Option<*mut Heap> {
    if first.is_null() {
        // Before the heap is listed: no claimer can see this claim yet.
        current_claim().set_owner_key(current_thread_id());
    }
    // Before the heap exists: checked here, not only where it is used.
    let key = if first.is_null() { exit_key() } else { 0 };
    let heap = heap::new_heap(arena, this_thread(), life)?;
    if first.is_null() {
        this_thread().heaps.store(heap, Ordering::Relaxed);
        // Register for thread exit after the heap is in place: this call may
        // allocate (glibc calloc's key blocks past the first 32 keys), and
        // that allocation must find the heap.
        // SAFETY: the key was created by `create_exit_key` (`exit_key`
        // checked).
        let rc = unsafe { libc::pthread_setspecific(key, heap.cast()) };
        if rc != 0 {
            // Without the key the heap would outlive its thread unnoticed.
            crate::diag::fatal("pthread_setspecific failed");
        }
    } else {
        // SAFETY: `first` is this thread's live first heap; `heap` is new.
        unsafe {
            (*heap).next_in_thread = (*first).next_in_thread;
            (*first).next_in_thread = heap;
        }
    }
    Some(heap)
}

/// The arena the calling thread allocates from.
pub fn preferred_arena() -> &'static Arena {
    let heap = current_heap();
    // SAFETY: the current heap is the thread's own or the read-only empty
    // heap, whose arena is null.
    let arena = unsafe { (*heap).arena_ptr() };
    if arena.is_null() {
        default_arena()
    } else {
        // SAFETY: arenas live in the static registry.
        unsafe { &*arena }
    }
}

/// Makes `arena` the calling thread's preferred arena; `None` if the
/// thread's heap for it cannot be created.
///
/// `life` is the raw handle `arena` was resolved from: a handle that went
/// stale meanwhile is refused (`None`).
pub fn set_preferred_arena(arena: &'static Arena, life: u64) -> Option<()> {
    if switch_back(arena, life) {
        return Some(());
    }
    set_current_heap(heap_in(arena, life)?);
    Some(())
}

/// Makes the heap the thread last switched away from current again if it
/// is the heap for `arena` in the life `life` (the common case of a
/// library call wrapped in a switch); false otherwise.
#[inline(always)]
pub fn switch_back(arena: &'static Arena, life: u64) -> bool {
    let previous = this_thread().previous_heap.load(Ordering::Relaxed);
    // SAFETY: the previous heap is the empty heap or one of this thread's
    // pool heaps (a dead one has a null arena and never matches).
    let (previous_arena, previous_life) =
        unsafe { ((*previous).arena_ptr(), (*previous).arena_handle()) };
    let matches = core::ptr::eq(previous_arena, arena) && previous_life == life;
    if matches {
        set_current_heap(previous);
    }
    matches
}

/// Thread exit: every heap of the thread hands its spans to its arena and
/// goes back to the pool. A destructor that allocates after this gets a new
/// heap, and pthread calls this again for it.
extern "C" fn on_thread_exit(value: *mut libc::c_void) {
    inside_allocator(|| abandon_heaps(value.cast::<Heap>()));
}

fn abandon_heaps(first: *mut Heap) {
    set_current_heap(heap::empty_heap());
    // The heaps go back to the pool: forget the one switched away from.
    let t = this_thread();
    t.previous_heap.store(heap::empty_heap(), Ordering::Relaxed);
    t.heaps.store(core::ptr::null_mut(), Ordering::Relaxed);
    let mut heap = first;
    while !heap.is_null() {
        // SAFETY: the key's value is the thread's first heap; its chain holds
        // the thread's other heaps; the thread is exiting and marked inside
        // the allocator, so no purger holds them.
        let next = unsafe { (*heap).next_in_thread };
        // SAFETY: as above.
        unsafe {
            (*heap).abandon_all();
            heap::recycle_heap(heap);
        }
        heap = next;
    }
}

/// In the child after `fork`, on its only thread: the other threads' heaps
/// may have been caught mid-update: leave them alone (their memory stays
/// with the child, as glibc's does), but make sure no new thread can take
/// their spans for its own.
pub fn after_fork_child() {
    let survivor = current_thread_id();
    for_each_arena(|arena| {
        let mut state = arena.state.lock();
        state.orphan_spans_of_other_threads(survivor);
        state.forget_heaps_of_other_threads(survivor);
    });
    // SAFETY: this thread's own first heap (or null).
    unsafe { Heap::recount_kept_after_fork(this_thread().heaps.load(Ordering::Relaxed)) };
}
