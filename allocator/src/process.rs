//! The process's life: the one-time set-up before the first allocation
//! (the thread-exit key, the `fork` handlers, the exit summary's setting)
//! and the `fork` handlers themselves. The top layer: the handlers take the
//! lock of every module below, in one order.

use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use crate::{heap, os, thread};

const UNINIT: u8 = 0;
const RUNNING: u8 = 1;
const READY: u8 = 2;
static INIT_STATE: AtomicU8 = AtomicU8::new(UNINIT);
/// The thread running the one-time set-up, so that an allocation it makes
/// from inside `pthread_atfork` (musl's does) proceeds instead of waiting for
/// itself.
static INIT_THREAD: AtomicUsize = AtomicUsize::new(0);

/// Initialises when the program is loaded (a constructor, before `main`):
/// `pthread_atfork` must not first be called from inside a `malloc` that
/// glibc's own `pthread_atfork` makes while it holds its lock (its 49th
/// registration allocates), or the process deadlocks. Lazy initialisation
/// still covers allocations made before this runs.
#[used]
#[link_section = ".init_array"]
static INIT_AT_LOAD: extern "C" fn() = init_at_load;

extern "C" fn init_at_load() {
    ensure_init();
}

/// One-time set-up: the thread-exit key, then the fork handlers, before any
/// thread allocates. Safe to re-enter from the set-up thread itself. Called
/// before the first use of any allocator lock.
pub fn ensure_init() {
    if INIT_STATE.load(Ordering::Acquire) == READY {
        return;
    }
    let me = thread::current_thread_id();
    if INIT_STATE
        .compare_exchange(UNINIT, RUNNING, Ordering::Acquire, Ordering::Acquire)
        .is_ok()
    {
        INIT_THREAD.store(me, Ordering::Relaxed);
        thread::create_exit_key();
        // SAFETY: the handlers are `extern "C"` functions that live forever.
        unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
        crate::exit_summary::read_setting();
        INIT_STATE.store(READY, Ordering::Release);
        return;
    }
    if INIT_THREAD.load(Ordering::Relaxed) == me {
        // Re-entered from pthread_atfork: the key already exists.
        return;
    }
    while INIT_STATE.load(Ordering::Acquire) != READY {
        os::yield_now();
    }
}

/// Fork: hold every allocator lock across `fork` so the child never inherits
/// one held by a thread that does not exist there.
#[link_section = "arenalloc_cold"]
extern "C" fn fork_prepare() {
    // First: a rescan holds it while it creates arenas (the create lock).
    crate::library_routing::lock_for_fork();
    crate::registry::create_lock().raw_lock();
    // Every slot ever used, not only live arenas: a purge may hold the lock
    // of an arena destroyed while it was between slices.
    crate::registry::for_each_slot(|arena| arena.state.raw_lock());
    heap::POOL.raw_lock();
}

/// Releases the locks [`fork_prepare`] took, in the reverse order.
///
/// # Safety
/// After `fork_prepare` on this thread, in the parent or the child (whose
/// only thread it is).
unsafe fn unlock_after_fork() {
    // SAFETY: the caller's promise: this thread holds these locks.
    unsafe { heap::POOL.force_unlock() };
    // SAFETY: as above.
    crate::registry::for_each_slot(|arena| unsafe { arena.state.force_unlock() });
    // SAFETY: as above.
    unsafe { crate::registry::create_lock().force_unlock() };
    // SAFETY: as above.
    unsafe { crate::library_routing::unlock_after_fork() };
}

#[link_section = "arenalloc_cold"]
extern "C" fn fork_parent() {
    // SAFETY: fork_prepare took the locks on this thread.
    unsafe { unlock_after_fork() };
}

#[link_section = "arenalloc_cold"]
extern "C" fn fork_child() {
    // SAFETY: fork_prepare took the locks on this thread, the child's only
    // thread.
    unsafe { unlock_after_fork() };
    crate::purger::after_fork_child();
    crate::segment::OWNERSHIP.after_fork_child();
    thread::after_fork_child();
}
