//! The purger: gives free memory back to the OS, in the background while the
//! process is idle, and on demand (`malloc_trim`).
//!
//! A housekeeper thread sleeps on a futex until some memory becomes free
//! (`note_pending`, called on slow paths and on the first remote free into a
//! span), waits one purge delay so memory in active reuse is left alone,
//! then makes one pass over every arena: free slices and cached large blocks
//! free for at least the delay are discarded (`MADV_DONTNEED`) or unmapped,
//! and heaps that had no slow path since the previous pass are claimed (see
//! `claim`) and purged down to single 4 KiB pages (see `Span::
//! purge_free_pages`). It sleeps again with nothing pending, so an idle
//! process costs no CPU.
//!
//! It starts lazily: on a malloc slow path, outside every allocator lock,
//! once the process has mapped [`START_AFTER_MAPPED`] bytes. Never from
//! `free`: glibc frees thread blocks while holding the lock that
//! `pthread_create` takes. After `fork` the child starts its own the same
//! way.
//!
//! Settings come from the environment, read without allocating at the first
//! start attempt: `ARENALLOC_BACKGROUND=0` turns the thread off (purging
//! then happens on explicit calls only), `ARENALLOC_PURGE_DELAY_MS` sets the
//! delay, `ARENALLOC_PURGE_SLICE_US` the longest a purge holds an arena's
//! lock before it lets the arena's threads in (0: after every step, for
//! tests).

use core::ptr;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::arena::{Arena, ArenaState, PurgeKind, PurgeOutcome};
pub use crate::housekeeping::{
    background_enabled, note_pending, purge_delay_ms, set_background, set_purge_delay_ms, Budget,
    DEFAULT_PURGE_DELAY_MS, DEFAULT_SLICE_US,
};
use crate::housekeeping::{read_settings, NOT_STARTED, OFF, PENDING, RUNNING, STARTING, STATE};
use crate::os;
use crate::registry::for_each_arena;
use crate::roster::HeapLinks;
use crate::sync::{futex_wait, futex_wake_one};

/// The housekeeper starts once this much has been mapped: small, short
/// programs never get a thread.
pub const START_AFTER_MAPPED: usize = 8 << 20;

/// Bytes given back so far (statistics).
static PURGED_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Passes the housekeeper made (statistics, tests).
static PASSES: AtomicUsize = AtomicUsize::new(0);

pub fn purged_bytes() -> usize {
    PURGED_BYTES.load(Ordering::Relaxed)
}

pub fn passes() -> usize {
    PASSES.load(Ordering::Relaxed)
}

/// Malloc slow path, outside every allocator lock: starts the housekeeper
/// if it is due.
#[inline]
pub fn maybe_start() {
    if STATE.load(Ordering::Relaxed) == NOT_STARTED {
        start_slow();
    }
}

#[cold]
#[inline(never)]
fn start_slow() {
    if crate::stats::mapped_bytes() < START_AFTER_MAPPED {
        return;
    }
    if STATE
        .compare_exchange(NOT_STARTED, STARTING, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    if !background_enabled() {
        STATE.store(OFF, Ordering::Release);
        return;
    }
    // pthread_create allocates the new thread's TLS block: that re-enters
    // the allocator (and finds STARTING here), in the default arena, never
    // in a dedicated arena this thread may prefer now.
    if crate::thread::in_default_arena(|| os::spawn_thread(housekeeper_main)) {
        STATE.store(RUNNING, Ordering::Release);
        // Work noted before the start.
        futex_wake_one(&PENDING);
    } else {
        STATE.store(OFF, Ordering::Release);
    }
}

/// In the child after `fork`: the housekeeper did not survive.
pub fn after_fork_child() {
    if STATE.load(Ordering::Relaxed) != OFF {
        STATE.store(NOT_STARTED, Ordering::Relaxed);
    }
}

extern "C" fn housekeeper_main(_: *mut libc::c_void) -> *mut libc::c_void {
    os::name_this_thread(c"arenalloc-purge");
    loop {
        let pending = PENDING.load(Ordering::Acquire);
        if pending == 0 || !background_enabled() {
            // Until note_pending or set_background wakes us (spurious
            // wake-ups just go round again).
            futex_wait(&PENDING, pending);
            continue;
        }
        let delay = purge_delay_ms();
        os::sleep_ms(delay);
        // What becomes free from here on asks for the next pass.
        PENDING.store(0, Ordering::Release);
        let more = pass(os::now_ms().saturating_sub(delay));
        PASSES.fetch_add(1, Ordering::Relaxed);
        // Library routing's rescan, if routing is on (objects loaded by a
        // `dlopen` the C ABI did not see get routed here).
        if let Some(task) = crate::housekeeping::after_pass() {
            task();
        }
        if more {
            PENDING.store(1, Ordering::Release);
        }
    }
}

/// The longest an arena's lock was held by one purge (statistics).
static LONGEST_HOLD_US: AtomicU64 = AtomicU64::new(0);

/// Purges of one arena begun (the last one's number).
static PURGE_PASS: AtomicU64 = AtomicU64::new(0);

/// Lock holds of all purges (a purge cut into slices counts each).
static LOCK_HOLDS: AtomicUsize = AtomicUsize::new(0);

pub fn purge_lock_holds() -> usize {
    LOCK_HOLDS.load(Ordering::Relaxed)
}

pub fn longest_lock_hold_us() -> u64 {
    LONGEST_HOLD_US.load(Ordering::Relaxed)
}

/// Purges one arena to the end in slices of about [`DEFAULT_SLICE_US`]
/// under its lock, yielding the CPU between them; returns the bytes
/// released and whether something is left for a later pass.
///
/// `life` is the raw handle of the arena's life to purge (0: whatever life
/// it has at the first lock). The purge stops when the arena is closed, or
/// destroyed and created again, while it lets go of the lock; `None` if it
/// was not in that life at the first lock.
#[link_section = "arenalloc_cold"]
fn purge_arena(arena: &Arena, life: u64, kind: PurgeKind) -> Option<PurgeTotals> {
    read_settings();
    // Not under the lock: the first call is slow.
    os::membarrier_register();
    let mut cursor = PurgeCursor::new(PURGE_PASS.fetch_add(1, Ordering::Relaxed) + 1);
    let mut totals = PurgeTotals::default();
    let mut life = life;
    let mut first = true;
    loop {
        let mut state = arena.state.lock();
        crate::race_hooks::pause(crate::race_hooks::Point::PurgeLocked);
        if life == 0 {
            life = state.life();
        }
        if !state.is_life(life) {
            drop(state);
            if first {
                return None;
            }
            break;
        }
        first = false;
        let started = os::now_us();
        let outcome = purge_slice(&mut state, kind, &mut cursor, &Budget::starting_now());
        let held = os::now_us().saturating_sub(started);
        drop(state);
        LONGEST_HOLD_US.fetch_max(held, Ordering::Relaxed);
        LOCK_HOLDS.fetch_add(1, Ordering::Relaxed);
        totals.more |= outcome.more;
        totals.busy_heaps += outcome.busy_heaps;
        totals.released += outcome.finish();
        if cursor.is_done() {
            break;
        }
        os::yield_now();
        crate::race_hooks::pause(crate::race_hooks::Point::PurgeBetweenSlices);
    }
    PURGED_BYTES.fetch_add(totals.released, Ordering::Relaxed);
    arena.purged_add(totals.released);
    Some(totals)
}

// ---- One arena purge, in slices: the stages and where to go on ----

/// Where a purge of one arena goes on after its budget ran out.
#[derive(Clone, Copy)]
pub struct PurgeCursor {
    /// The purge pass (never 0): heaps are judged idle once per pass.
    pass: u64,
    stage: PurgeStage,
    /// Within the stage: heaps or segments done, or the class of abandoned
    /// spans to go on with.
    position: usize,
    /// Heap stage: the size class to go on with in the heap at `position`.
    class: usize,
    /// The arena's `changes` when the purge let go of the lock.
    changes_seen: u64,
    /// Times the stage started again because its list changed.
    restarts: u32,
}

/// A stage whose list keeps changing starts again this often, then goes on
/// by position (and asks for another pass, since it may skip an item).
const MAX_RESTARTS: u32 = 4;

#[derive(Clone, Copy, PartialEq, Eq)]
enum PurgeStage {
    Heaps,
    Abandoned,
    Segments,
    LargeCache,
    Done,
}

impl PurgeCursor {
    /// The start of pass `pass` (not 0).
    pub fn new(pass: u64) -> PurgeCursor {
        PurgeCursor {
            pass,
            stage: PurgeStage::Heaps,
            position: 0,
            class: 0,
            changes_seen: 0,
            restarts: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.stage == PurgeStage::Done
    }

    fn next_stage(&mut self) {
        self.stage = match self.stage {
            PurgeStage::Heaps => PurgeStage::Abandoned,
            PurgeStage::Abandoned => PurgeStage::Segments,
            PurgeStage::Segments => PurgeStage::LargeCache,
            PurgeStage::LargeCache | PurgeStage::Done => PurgeStage::Done,
        };
        self.position = 0;
        self.class = 0;
        self.restarts = 0;
    }

    /// Back at the start of the stage (its list changed while unlocked).
    fn restart_stage(&mut self) {
        self.position = 0;
        self.class = 0;
        self.restarts += 1;
    }
}

/// One slice of a purge of the arena whose lock is `state` (see
/// [`PurgeKind`]), from
/// `cursor` on, until it is done or `budget` is spent (then `cursor`
/// says where to go on after the lock has been released and taken
/// again): spans of claimed heaps and abandoned spans that emptied go
/// back as free slices, and their free pages to the OS; old enough free
/// slices are discarded, and such cached large blocks are handed back
/// in the outcome for the caller to unmap once the lock is released.
#[link_section = "arenalloc_cold"]
fn purge_slice(
    state: &mut ArenaState,
    kind: PurgeKind,
    cursor: &mut PurgeCursor,
    budget: &Budget,
) -> PurgeOutcome {
    let freed_by_ms = kind.freed_by_ms();
    let force = kind == PurgeKind::Trim;
    let mut outcome = PurgeOutcome::default();
    let resumed = cursor.position != 0 || cursor.class != 0;
    if resumed && cursor.changes_seen != state.changes() {
        if cursor.restarts < MAX_RESTARTS {
            cursor.restart_stage();
        } else {
            // Going on by position may skip an item: look again later.
            outcome.more = true;
        }
    }
    loop {
        let finished = match cursor.stage {
            PurgeStage::Heaps => purge_heaps(state, kind, &mut outcome, cursor, budget),
            PurgeStage::Abandoned => {
                state.purge_abandoned(kind, &mut outcome, &mut cursor.position, budget)
            }
            PurgeStage::Segments if kind == PurgeKind::Reclaim => true,
            PurgeStage::Segments => state.purge_segments(
                freed_by_ms,
                force,
                &mut outcome,
                &mut cursor.position,
                budget,
            ),
            PurgeStage::LargeCache => {
                state.evict_cached(freed_by_ms, &mut outcome);
                true
            }
            PurgeStage::Done => return outcome,
        };
        if !finished {
            // The caller lets go of the lock and calls again.
            cursor.changes_seen = state.changes();
            return outcome;
        }
        cursor.next_stage();
    }
}

/// The heap stage of [`purge_slice`]: claims the arena's idle
/// heaps in batches (one `membarrier` each) and purges them. With
/// `force`, busy-looking heaps are claimed too (the claim still fails on
/// a thread that is inside the allocator). The cursor's position counts
/// the heaps already done; its class is where to go on in the next one.
/// False if the budget ran out first.
fn purge_heaps(
    state: &mut ArenaState,
    kind: PurgeKind,
    outcome: &mut PurgeOutcome,
    cursor: &mut PurgeCursor,
    budget: &Budget,
) -> bool {
    const BATCH: usize = 32;
    loop {
        if budget.spent() {
            return false;
        }
        let mut batch = [ptr::null::<HeapLinks>(); BATCH];
        let n = state.heaps().members(cursor.position, &mut batch);
        // Claimed heaps, with their place in the list.
        let mut claimed = [(ptr::null::<HeapLinks>(), 0usize); BATCH];
        let mut count = 0;
        for (offset, &links) in batch.iter().take(n).enumerate() {
            // SAFETY: members of the locked arena's roster.
            let l = unsafe { &*links };
            if !kind.claims_busy_heaps() && !l.is_idle_since_last_pass(cursor.pass) {
                outcome.more = true;
                continue;
            }
            let claim = l.claim();
            if claim.try_claim() {
                if let Some(slot) = claimed.get_mut(count) {
                    *slot = (links, cursor.position + offset);
                    count += 1;
                }
            } else {
                outcome.more = true;
                outcome.busy_heaps += usize::from(!crate::thread::is_own_claim(claim));
            }
        }
        let mut stopped_at = None;
        if count > 0 {
            let barrier = crate::claim::barrier();
            for &(links, place) in claimed.iter().take(count) {
                // SAFETY: members of the locked arena's roster.
                let claim = unsafe { &*links }.claim();
                if stopped_at.is_some() {
                    // Out of time: let go of the claims not used.
                    claim.release();
                } else if barrier && claim.confirm() {
                    crate::race_hooks::pause(crate::race_hooks::Point::ClaimConfirmed);
                    let first_class = if place == cursor.position {
                        cursor.class
                    } else {
                        0
                    };
                    // SAFETY: confirmed claim; the lock is ours; rosters hold
                    // the links of pool heaps.
                    let (purged, stopped) = unsafe {
                        (*crate::heap::heap_of(links)).purge_idle(state, first_class, kind, budget)
                    };
                    outcome.purged += purged;
                    claim.release();
                    if let Some(class) = stopped {
                        stopped_at = Some((place, class));
                    }
                } else {
                    // A failed `confirm` has dropped the claim already.
                    if !barrier {
                        claim.release();
                    }
                    outcome.more = true;
                    // Without the barrier no claim is ever confirmed:
                    // waiting for the owner would not help.
                    outcome.busy_heaps +=
                        usize::from(barrier && !crate::thread::is_own_claim(claim));
                }
            }
        }
        if let Some((place, class)) = stopped_at {
            // Go on with the heap that was not finished.
            cursor.position = place;
            cursor.class = class;
            return false;
        }
        cursor.position += n;
        cursor.class = 0;
        if n < BATCH {
            return true;
        }
    }
}

/// What one purge of an arena did, over all its lock holds.
#[derive(Default)]
struct PurgeTotals {
    /// Bytes given back to the OS.
    released: usize,
    /// Something was left for a later pass.
    more: bool,
    /// Heaps of other threads skipped because they could not be claimed.
    busy_heaps: usize,
}

/// One pass over every arena; true if something is left for a later pass.
fn pass(freed_by_ms: u64) -> bool {
    let mut more = false;
    for_each_arena(|arena| {
        more |= purge_arena(arena, 0, PurgeKind::Decay { freed_by_ms }).is_some_and(|t| t.more)
    });
    more
}

/// Gives back everything free now, in every arena (`malloc_trim`); returns
/// the bytes released.
pub fn purge_all_now() -> usize {
    let mut released = 0;
    for_each_arena(|arena| {
        released += purge_arena(arena, 0, PurgeKind::Trim).map_or(0, |t| t.released)
    });
    released
}

/// Gives back everything free now in the arena whose life the raw `handle`
/// names; returns the bytes released, or `None` if the handle is stale.
pub fn purge_arena_now(arena: &Arena, handle: u64) -> Option<usize> {
    purge_arena(arena, handle, PurgeKind::Trim).map(|t| t.released)
}

/// An allocation in `arena` is about to be refused for the arena's limit:
/// collects the blocks other threads freed into the spans of its heaps
/// (claiming the heaps of threads that are not inside the allocator) and of
/// its abandoned spans, and gives back the spans that emptied, so that the
/// limit counts what is really in use. The caller's own heap cannot be
/// claimed from inside the allocator: see `Heap::release_emptied`.
///
/// A thread that is inside the allocator right now (preempted in its own
/// `malloc`, say) holds its heaps; while blocks freed by other threads
/// still wait in the arena's spans, the reclaim waits for it, yielding, for
/// at most [`RECLAIM_WAIT_US`], rather than refuse an allocation for blocks
/// that are already free.
pub fn reclaim_for_limit(arena: &Arena) {
    let mut deadline_us = os::now_us() + RECLAIM_WAIT_US;
    // Every round reclaims the same life of the arena (0: closed).
    let life = arena.state.lock().life();
    if life == 0 {
        return;
    }
    loop {
        let Some(totals) = purge_arena(arena, life, PurgeKind::Reclaim) else {
            return;
        };
        if totals.busy_heaps == 0 {
            return;
        }
        if crate::race_hooks::pause(crate::race_hooks::Point::ReclaimFoundBusy) {
            // A test held this thread here: the wait starts now.
            deadline_us = os::now_us() + RECLAIM_WAIT_US;
        }
        if os::now_us() >= deadline_us || !arena.state.lock().has_pending_remote_frees() {
            // Waited long enough, or nothing a busy heap could give back.
            return;
        }
        os::yield_now();
    }
}

/// How long an allocation about to be refused for its arena's limit waits
/// for busy threads to leave the allocator, so their heaps can be reclaimed.
pub const RECLAIM_WAIT_US: u64 = 20_000;
