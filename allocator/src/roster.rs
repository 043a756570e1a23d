//! An arena's roster of heaps, and what the purger reads of each heap: its
//! thread's side of the claim handshake and whether the heap was active
//! since the purger last looked. The roster sees only these links, never
//! the heap itself: the `heap` module keeps the links beside each heap (not
//! in it, so the owner's `&mut Heap` never covers what other threads touch)
//! and turns a link back into its heap.

use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::claim::ThreadClaim;

/// What an arena needs of one of its heaps. All-zero bytes are a valid,
/// unlisted value (heaps come from fresh mappings).
pub struct HeapLinks {
    /// Links in the arena's roster. Arena lock.
    next: Cell<*const HeapLinks>,
    prev: Cell<*const HeapLinks>,
    /// The owner thread's state, type-erased (the `heap` module reads it
    /// as its `ThreadState`), and the owner's side of the claim handshake.
    /// Set by the owner before the heap joins a roster, under that lock.
    thread: Cell<*const ()>,
    claim: Cell<*const ThreadClaim>,
    /// Bumped by the owner on every slow path (plain load and store): a
    /// heap whose count did not move between two purger passes is idle.
    activity: AtomicU32,
    /// `activity` as the purger last saw it. Arena lock.
    seen_activity: Cell<u32>,
    /// The purge pass that last looked (0: none) and what it decided: one
    /// decision per pass, also when the pass lets go of the lock between
    /// slices (a second look 1 ms later would call a busy heap idle).
    looked_in_pass: Cell<u64>,
    idle_in_pass: Cell<bool>,
}

// SAFETY: the `Cell`s are only touched under the arena lock (`thread` and
// `claim` are set by the owner before the heap joins its arena's roster
// under that lock); `activity` is atomic.
unsafe impl Sync for HeapLinks {}

impl HeapLinks {
    /// Owner, before the heap joins a roster: records its thread.
    pub fn set_thread(&self, thread: *const (), claim: &'static ThreadClaim) {
        self.thread.set(thread);
        self.claim.set(claim);
    }

    /// The owner thread's state, as given to [`HeapLinks::set_thread`].
    pub fn thread(&self) -> *const () {
        self.thread.get()
    }

    /// The claim handshake of the heap's thread. A listed heap's thread is
    /// alive (it leaves every roster before it exits), and its TLS with it.
    pub fn claim(&self) -> &ThreadClaim {
        let claim = self.claim.get();
        if claim.is_null() {
            // Links that never went through `set_thread` are in no roster.
            crate::diag::fatal("a heap in an arena's roster without its thread");
        }
        // SAFETY: set before the heap was listed, to the owner's TLS claim,
        // which outlives the heap's membership (see above); not null.
        unsafe { &*claim }
    }

    /// Owner, on a slow path: the heap is in use.
    #[inline]
    pub fn note_activity(&self) {
        self.activity.store(
            self.activity.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }

    /// Purger, under the arena lock: whether the heap had no slow path since
    /// the previous pass looked (and remembers what it saw). Pass `pass`
    /// (never 0) gets the same answer however often it asks.
    pub fn is_idle_since_last_pass(&self, pass: u64) -> bool {
        if self.looked_in_pass.get() == pass {
            return self.idle_in_pass.get();
        }
        let now = self.activity.load(Ordering::Relaxed);
        let idle = now == self.seen_activity.get();
        self.seen_activity.set(now);
        self.looked_in_pass.set(pass);
        self.idle_in_pass.set(idle);
        idle
    }
}

/// The heaps of one arena, linked through their [`HeapLinks`]. Arena lock.
pub struct Roster {
    head: *const HeapLinks,
}

impl Roster {
    pub const EMPTY: Roster = Roster { head: ptr::null() };

    /// # Safety
    /// `links` are a pool heap's, in no roster; they stay valid memory (pool
    /// heaps are never unmapped). Members are kept as the raw pointers given
    /// here, so the `heap` module can turn them back into their heaps.
    pub unsafe fn push(&mut self, links: *const HeapLinks) {
        // SAFETY: the caller's promise; members are valid memory.
        unsafe {
            (*links).prev.set(ptr::null());
            (*links).next.set(self.head);
            if !self.head.is_null() {
                (*self.head).prev.set(links);
            }
        }
        self.head = links;
    }

    /// # Safety
    /// `links` are a member of this roster.
    pub unsafe fn remove(&mut self, links: *const HeapLinks) {
        // SAFETY: a member and its neighbours are members, valid memory.
        unsafe {
            let (prev, next) = ((*links).prev.get(), (*links).next.get());
            if prev.is_null() {
                self.head = next;
            } else {
                (*prev).next.set(next);
            }
            if !next.is_null() {
                (*next).prev.set(prev);
            }
            (*links).next.set(ptr::null());
            (*links).prev.set(ptr::null());
        }
    }

    /// The first member (null if none).
    pub fn first(&self) -> *const HeapLinks {
        self.head
    }

    /// Calls `f` on every member.
    pub fn for_each(&self, mut f: impl FnMut(*const HeapLinks)) {
        let mut links = self.head;
        while !links.is_null() {
            // SAFETY: members are valid memory.
            let next = unsafe { (*links).next.get() };
            f(links);
            links = next;
        }
    }

    /// Copies up to `out.len()` members, from the `skip`-th on, into `out`;
    /// returns how many.
    pub fn members(&self, skip: usize, out: &mut [*const HeapLinks]) -> usize {
        let mut links = self.head;
        let mut index = 0;
        let mut n = 0;
        while !links.is_null() && n < out.len() {
            if index >= skip {
                if let Some(slot) = out.get_mut(n) {
                    *slot = links;
                }
                n += 1;
            }
            index += 1;
            // SAFETY: members are valid memory.
            links = unsafe { (*links).next.get() };
        }
        n
    }

    /// Removes the members for which `keep` says no (it sees every member).
    pub fn retain(&mut self, mut keep: impl FnMut(&HeapLinks) -> bool) {
        let mut links = self.head;
        while !links.is_null() {
            // SAFETY: members are valid memory.
            let next = unsafe { (*links).next.get() };
            // SAFETY: as above.
            if !keep(unsafe { &*links }) {
                // SAFETY: a member.
                unsafe { self.remove(links) };
            }
            links = next;
        }
    }
}
