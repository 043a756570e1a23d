//! Pause points for deterministic race tests.
//!
//! A race between two sides of a protocol (a thread exiting while its arena
//! is destroyed, a purge between two lock holds, a reader of the ownership
//! map while a segment goes) happens only when one thread stops at one
//! instruction while the other acts. A test arms a [`Point`] for one thread;
//! when that thread reaches the point it parks until the test releases it,
//! so the test forces the exact interleaving instead of hoping for it.
//!
//! Compiled only with the `race-hooks` feature (the test suite's); without
//! it [`pause`] is an empty inline function, and release builds of the
//! library never enable the feature. Points sit on slow paths only.

/// Places in the engine where a test can park a thread.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(usize)]
pub enum Point {
    /// `Heap::abandon_all` (thread exit) has read the heap's arena and is
    /// about to take its lock.
    AbandonBeforeLock = 0,
    /// A purge of one arena let go of the lock between two slices and is
    /// about to take it again.
    PurgeBetweenSlices = 1,
    /// An arena-control call (trim, stats, limit) resolved its handle and
    /// is about to lock the arena.
    ControlBeforeLock = 2,
    /// `Segment::unmap_free_runs` unmapped a run of free slices.
    HoleUnmapped = 3,
    /// The ownership map said an address is ours; its header is about to be
    /// read (`owns`, `arena_of`).
    OwnershipMarkSeen = 4,
    /// A segment is about to be unmapped (its ownership mark is clear).
    SegmentBeforeUnmap = 5,
    /// A purge of one arena has just taken the arena's lock (again) and not
    /// yet looked at the arena's life.
    PurgeLocked = 6,
    /// An inspection of the ownership map has counted itself in and not
    /// yet read a bit.
    InspectCounted = 7,
    /// A heap is about to join its arena (its handle was checked without
    /// the lock).
    JoinBeforeLock = 8,
    /// The owner is inside the allocator, on `malloc`'s slow path, before
    /// it refills (its heaps must not be claimed meanwhile).
    MallocSlowPath = 9,
    /// A remote free's push has landed; the freeing thread has not returned.
    RemotePushed = 10,
    /// A reclaim for an arena's limit skipped a busy heap of another thread
    /// and is about to look again (no lock held).
    ReclaimFoundBusy = 11,
    /// A remote free has checked its block (not freed already, as far as
    /// its link word says) and is about to push it.
    RemoteChecked = 12,
    /// A local free emptied its span and the owner went on inside the
    /// allocator by the depth (`lib.rs`, `span_emptied`); it has not given
    /// the span back yet.
    SpanEmptied = 13,
    /// A purge has confirmed its claim of a heap (the owner was outside the
    /// allocator) and holds it, with its arena's lock, before it purges.
    ClaimConfirmed = 14,
}

#[cfg(feature = "race-hooks")]
mod armed {
    use super::Point;

    const POINTS: usize = 15;
    use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

    const IDLE: u8 = 0;
    const ARMED: u8 = 1;
    const PARKED: u8 = 2;
    const RELEASED: u8 = 3;

    /// The thread (its [`thread_id`](super::thread_id)) that parks at each point; 0: any.
    static TARGET: [AtomicUsize; POINTS] = [const { AtomicUsize::new(0) }; POINTS];
    static PHASE: [AtomicU8; POINTS] = [const { AtomicU8::new(IDLE) }; POINTS];

    pub fn pause(point: Point) -> bool {
        let i = point as usize;
        let (Some(phase), Some(target)) = (PHASE.get(i), TARGET.get(i)) else {
            return false;
        };
        if phase.load(Ordering::Acquire) != ARMED {
            return false;
        }
        let want = target.load(Ordering::Relaxed);
        if want != 0 && want != super::thread_id() {
            return false;
        }
        if phase
            .compare_exchange(ARMED, PARKED, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        while phase.load(Ordering::Acquire) == PARKED {
            crate::os::yield_now();
        }
        phase.store(IDLE, Ordering::Release);
        true
    }

    pub fn arm(point: Point, thread_id: usize) {
        let i = point as usize;
        TARGET[i].store(thread_id, Ordering::Relaxed);
        PHASE[i].store(ARMED, Ordering::Release);
    }

    pub fn is_parked(point: Point) -> bool {
        PHASE[point as usize].load(Ordering::Acquire) == PARKED
    }

    pub fn release(point: Point) {
        let phase = &PHASE[point as usize];
        if phase
            .compare_exchange(PARKED, RELEASED, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            // Never reached: disarm.
            phase.store(IDLE, Ordering::Release);
        }
    }
}

/// Parks the calling thread here if a test armed `point` for it; true if
/// it was parked (a timed wait may then start its clock again).
#[inline(always)]
pub fn pause(point: Point) -> bool {
    #[cfg(feature = "race-hooks")]
    return armed::pause(point);
    #[cfg(not(feature = "race-hooks"))]
    {
        let _ = point;
        false
    }
}

/// Test side: the next thread with id `thread_id` (0: any thread) to reach
/// `point` parks there until [`release`].
#[cfg(feature = "race-hooks")]
pub fn arm(point: Point, thread_id: usize) {
    armed::arm(point, thread_id)
}

/// Test side: whether a thread is parked at `point` now.
#[cfg(feature = "race-hooks")]
pub fn is_parked(point: Point) -> bool {
    armed::is_parked(point)
}

/// Test side: lets the thread parked at `point` go on (or disarms the point
/// if nobody reached it).
#[cfg(feature = "race-hooks")]
pub fn release(point: Point) {
    armed::release(point)
}

/// The calling thread's id as the pause points compare it (its pthread
/// handle: the hooks sit below the thread module, and need no heap).
pub fn thread_id() -> usize {
    crate::os::pthread_id()
}
