//! Claims: how the purger gets exclusive use of an idle thread's heaps
//! without putting an atomic read-modify-write on the owner's fast path.
//!
//! An asymmetric Dekker handshake. The owner marks "inside the allocator"
//! with plain stores (a nesting depth for slow paths, a flag for the fast
//! paths) and then reads the `claimed` flag; the claimer sets `claimed` (a
//! CAS: several claimers may race), makes every thread pass a full barrier
//! with `membarrier`, and only then reads the owner's depth and flag. The
//! barrier stands in for the fence the owner never executes: either the
//! claimer sees the owner inside (and backs off), or the owner's next entry
//! sees the claim (`malloc` and the slow paths wait until the claimer
//! releases; `free` takes the remote list, below). Without a working
//! `membarrier` nothing is ever claimed.
//!
//! The fast paths' side is `FastClaim`, written here once over four
//! accesses to the fields that `tls::Current` provides: through a
//! reference, or in the preloaded library relative to the thread pointer,
//! so that a fast path never loads the thread pointer itself.
//!
//! `free`'s fast path does not read `claimed`: it enters with
//! `FastClaim::enter_unchecked` and then compares the span's owner with
//! the thread's `FastClaim::owner_key`, which it must read anyway. A
//! claimer changes the key before its barrier, so an owner that enters
//! after it finds its own spans foreign and frees as another thread would
//! (onto the span's remote list, which needs no claim).
//!
//! Claims are taken only under an arena lock, so `fork` (which holds every
//! arena lock) never copies a claim in progress into the child.

use core::sync::atomic::{compiler_fence, AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};

// Thread ids are addresses of 8-aligned thread states: the bit is free in
// every id, and differs from the secure-mode tag bit and `DEAD_OWNER` (1).
const _: () = assert!(CLAIMED_KEY_BIT > 1 && CLAIMED_KEY_BIT < 8);

/// A thread's owner key before it has a heap (`tls` writes it into every
/// new thread's state).
pub const NO_HEAP_KEY: usize = CLAIMED_KEY_BIT;

/// Set in a thread's owner key while a claimer holds its heaps. Spans
/// record thread ids (8-aligned) and secure-mode tags (bit 0): none has
/// this bit, so no span's owner matches a claimed key.
const CLAIMED_KEY_BIT: usize = 2;

/// One thread's side of the handshake. Lives in the thread's TLS; the
/// purger reaches it through the thread's heaps while they are in an arena's
/// list (a thread leaves every list under the arena lock before it exits).
/// Laid out as `tls` initialises it.
#[repr(C)]
pub struct ThreadClaim {
    /// How deep the owner is inside the allocator's slow paths (nested
    /// calls count). Written only by the owner, with plain stores.
    depth: AtomicU32,
    /// The owner is on a fast path (`try_enter` to `leave_fast`). A flag of
    /// its own, stored as constants: no load of the depth and no branch on
    /// it, and no chain through memory from one call to the next. A fast
    /// path inside a slow one sets and clears it while `depth` still says
    /// "inside"; fast paths call nothing, so they never nest in each other
    /// (short of a signal handler that calls `malloc`, which POSIX forbids).
    fast: AtomicU8,
    /// A claimer holds this thread's heaps.
    claimed: AtomicBool,
    /// What `free`'s fast path compares a span's owner with: the thread's
    /// id, or the id with [`CLAIMED_KEY_BIT`] while a claim is marked
    /// ([`CLAIMED_KEY_BIT`] alone until the thread's first heap exists: 0
    /// would match a free span's owner). The owner writes its id when its
    /// heap chain starts (always the same value, and before any heap of its
    /// is listed); otherwise only a claimer writes it.
    pub(crate) owner_key: AtomicUsize,
}

impl ThreadClaim {
    pub const fn new() -> Self {
        Self {
            depth: AtomicU32::new(0),
            fast: AtomicU8::new(0),
            claimed: AtomicBool::new(false),
            owner_key: AtomicUsize::new(NO_HEAP_KEY),
        }
    }

    /// Owner, before its first heap is listed in an arena (so before any
    /// claimer can reach this claim): records the thread's id as the key.
    pub fn set_owner_key(&self, thread_id: usize) {
        self.owner_key.store(thread_id, Ordering::Relaxed);
    }

    /// Owner, inside through `FastClaim::enter_unchecked`: the thread's id,
    /// unless a claimer holds the heaps (then a value no span's owner
    /// matches).
    #[inline(always)]
    pub fn owner_key(&self) -> usize {
        // Acquire, as `enter`'s look at `claimed`: an owner that sees the
        // key its last claimer restored (a Release store) sees that
        // claimer's writes to its spans too. (A plain load on x86;
        // ThreadSanitizer reported the span fields as raced with Relaxed.)
        self.owner_key.load(Ordering::Acquire)
    }

    /// Owner: marks the thread inside the allocator; waits first if a
    /// claimer holds its heaps. Returns the depth to give to [`leave`].
    ///
    /// [`leave`]: ThreadClaim::leave
    #[inline(always)]
    pub fn enter(&self) -> u32 {
        let depth = self.depth.load(Ordering::Relaxed);
        self.depth.store(depth + 1, Ordering::Relaxed);
        // Keep the store before the load below in program order; the
        // claimer's membarrier supplies the hardware fence.
        compiler_fence(Ordering::SeqCst);
        if self.claimed.load(Ordering::Acquire) {
            self.wait_unclaimed(depth);
        }
        depth
    }

    /// Owner, entering a fast path: sets the fast path's flag (a plain
    /// store; see `FastClaim`).
    #[inline(always)]
    pub fn set_fast(&self) {
        self.fast.store(1, Ordering::Relaxed);
    }

    /// Owner, leaving a fast path: clears the flag (every write before it
    /// is published to the next claimer).
    #[inline(always)]
    pub fn clear_fast(&self) {
        self.fast.store(0, Ordering::Release);
    }

    /// Owner: whether a claimer has marked this claim (an acquire load: the
    /// owner's later reads of its heaps stay after it).
    #[inline(always)]
    pub fn is_claimed(&self) -> bool {
        #[cfg(all(target_arch = "x86_64", not(arenalloc_tsan)))]
        {
            // One compare of the flag in memory (the compiler never merges
            // an atomic load into a compare). Not `readonly`: like the
            // acquire load it replaces (a plain load on x86), it keeps the
            // caller's later reads of the heap after it.
            // SAFETY: `claimed` is a live byte of this claim; an aligned
            // one-byte read is single-copy atomic.
            unsafe {
                core::arch::asm!(
                    "cmp byte ptr [{claim} + {claimed}], 0",
                    "jne {taken}",
                    claim = in(reg) self,
                    claimed = const CLAIMED_AT,
                    taken = label {
                        return true;
                    },
                    options(nostack),
                );
            }
            false
        }
        #[cfg(any(not(target_arch = "x86_64"), arenalloc_tsan))]
        {
            self.claimed.load(Ordering::Acquire)
        }
    }

    /// Owner, on `free`'s fast path (entered with
    /// `FastClaim::enter_unchecked`): goes on inside as
    /// a slow path does, by the depth, and clears the fast path's flag;
    /// returns the depth to give to [`leave`]. The thread is inside all the
    /// while (the depth is raised before the flag goes), so no claim can be
    /// confirmed in between, and none needs to be waited for.
    ///
    /// [`leave`]: ThreadClaim::leave
    #[inline(always)]
    pub fn enter_from_fast(&self) -> u32 {
        let depth = self.depth.load(Ordering::Relaxed);
        self.depth.store(depth + 1, Ordering::Relaxed);
        // The depth's store before the flag's, in program order (x86
        // keeps stores in order; the claimer's barrier orders them for it).
        compiler_fence(Ordering::SeqCst);
        self.fast.store(0, Ordering::Release);
        depth
    }

    /// Owner: leaves the allocator (every heap and span write before this is
    /// published to the next claimer).
    #[inline(always)]
    pub fn leave(&self, depth: u32) {
        self.depth.store(depth, Ordering::Release);
    }

    /// A claim was seen on entry at `depth`.
    #[cold]
    #[inline(never)]
    fn wait_unclaimed(&self, depth: u32) {
        // A nested entry does not wait: the outer one already excluded any
        // claim, and a claim that starts now sees the depth and backs off
        // (the flag is set only until then).
        if depth != 0 {
            return;
        }
        loop {
            self.depth.store(0, Ordering::Release);
            while self.claimed.load(Ordering::Acquire) {
                crate::os::yield_now();
            }
            self.depth.store(1, Ordering::Relaxed);
            compiler_fence(Ordering::SeqCst);
            if !self.claimed.load(Ordering::Acquire) {
                return;
            }
        }
    }

    /// Claimer, first step: marks the claim. False if another claimer holds
    /// it. Follow with one `membarrier` (for any number of claims) and
    /// [`ThreadClaim::confirm`].
    pub fn try_claim(&self) -> bool {
        let marked = self
            .claimed
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok();
        if marked {
            // Before the barrier, as the flag: see
            // `FastClaim::enter_unchecked`.
            let key = self.owner_key.load(Ordering::Relaxed);
            self.owner_key
                .store(key | CLAIMED_KEY_BIT, Ordering::SeqCst);
        }
        marked
    }

    /// Claimer, after the barrier: true if the owner is outside the
    /// allocator, so its heaps are the claimer's until [`release`]; false
    /// (and the claim dropped) if it is inside.
    ///
    /// [`release`]: ThreadClaim::release
    pub fn confirm(&self) -> bool {
        // The flag first: an owner that goes from the fast path to the
        // depth (`enter_from_fast`) raises the depth before it clears the
        // flag (a Release store), so a claimer that sees the flag clear
        // then sees the depth raised; read the other way round, it could
        // see the old depth and then the cleared flag.
        let fast = self.fast.load(Ordering::Acquire);
        if fast == 0 && self.depth.load(Ordering::Acquire) == 0 {
            true
        } else {
            self.release();
            false
        }
    }

    /// Whether the owner is outside the allocator and no claim is marked.
    pub fn is_at_rest(&self) -> bool {
        self.depth.load(Ordering::Relaxed) == 0
            && self.fast.load(Ordering::Relaxed) == 0
            && !self.claimed.load(Ordering::Relaxed)
    }

    /// Claimer: hands the heaps back (every write to them before this is
    /// published to the owner).
    pub fn release(&self) {
        let key = self.owner_key.load(Ordering::Relaxed);
        self.owner_key
            .store(key & !CLAIMED_KEY_BIT, Ordering::Release);
        self.claimed.store(false, Ordering::Release);
    }
}

/// Where `fast` lies in a [`ThreadClaim`] (for `tls`'s accesses relative
/// to the thread pointer).
pub const FAST_AT: usize = core::mem::offset_of!(ThreadClaim, fast);
/// Where `claimed` lies in a [`ThreadClaim`].
pub const CLAIMED_AT: usize = core::mem::offset_of!(ThreadClaim, claimed);
/// Where `owner_key` lies in a [`ThreadClaim`].
pub const OWNER_KEY_AT: usize = core::mem::offset_of!(ThreadClaim, owner_key);

/// The owner's side of the handshake on its fast paths, which call nothing
/// (so they stay leaf functions): written once here, over four accesses to
/// the calling thread's claim that `tls::Current` provides with the
/// orderings each names (the fences between them are here). Crate-private:
/// the handshake is only as sound as those accesses.
pub(crate) trait FastClaim: Copy {
    /// `fast = 1`, a plain store.
    fn set_fast(self);
    /// `fast = 0`, a release store.
    fn clear_fast(self);
    /// `claimed`, an acquire load.
    fn is_claimed(self) -> bool;
    /// `owner_key`, an acquire load: see [`ThreadClaim::owner_key`].
    fn owner_key(self) -> usize;

    /// Marks the thread inside, unless a claimer holds the heaps (then
    /// false, and the thread is outside again): the caller takes its slow
    /// path, which enters with [`ThreadClaim::enter`] and waits. Leave with
    /// [`FastClaim::leave_fast`].
    #[inline(always)]
    fn try_enter(self) -> bool {
        self.set_fast();
        // As in `ThreadClaim::enter`.
        compiler_fence(Ordering::SeqCst);
        if self.is_claimed() {
            self.clear_fast();
            return false;
        }
        true
    }

    /// `free`'s entry: marks the thread inside without looking at the
    /// claim. The caller must then read [`FastClaim::owner_key`] and touch
    /// only spans whose owner equals it: a claim marked before the owner's
    /// entry has changed the key (the claimer's barrier orders the two),
    /// and one marked after sees the flag and backs off. Leave with
    /// [`FastClaim::leave_fast`].
    #[inline(always)]
    fn enter_unchecked(self) {
        self.set_fast();
        // As in `ThreadClaim::enter`.
        compiler_fence(Ordering::SeqCst);
    }

    /// Leaves a fast path entered with [`FastClaim::try_enter`] or
    /// [`FastClaim::enter_unchecked`] (its writes are published to the next
    /// claimer).
    #[inline(always)]
    fn leave_fast(self) {
        self.clear_fast();
    }
}

impl Default for ThreadClaim {
    fn default() -> Self {
        Self::new()
    }
}

/// The process-wide barrier that completes a batch of claims; false where
/// the kernel cannot provide it (then no claim may be confirmed).
pub fn barrier() -> bool {
    crate::os::membarrier()
}
