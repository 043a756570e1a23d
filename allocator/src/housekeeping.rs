//! What the allocator's data structures tell the housekeeper, and its
//! settings: a layer below the purger. Spans, large blocks and heaps call
//! [`note_pending`] when memory may have become free and read
//! [`background_enabled`]; the purger (`purger`) reads these records and
//! acts, and no module here calls up into it. A purge's time budget per lock
//! hold ([`Budget`]) is here too, for the arena's and heaps' purge steps.

use core::cell::Cell;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::os;
use crate::sync::futex_wake_one;

/// Default purge delay. See the README for the measurement behind it.
pub const DEFAULT_PURGE_DELAY_MS: u64 = 250;
/// The housekeeper thread's state.
pub const NOT_STARTED: u8 = 0;
pub const STARTING: u8 = 1;
pub const RUNNING: u8 = 2;
/// Switched off, or the thread could not be created.
pub const OFF: u8 = 3;

pub static STATE: AtomicU8 = AtomicU8::new(NOT_STARTED);
/// 1 while something may be waiting to be purged; the housekeeper's futex.
pub static PENDING: AtomicU32 = AtomicU32::new(0);
static DELAY_MS: AtomicU64 = AtomicU64::new(DEFAULT_PURGE_DELAY_MS);
/// Whether the settings were read (0: no, 1: yes).
static SETTINGS_READ: AtomicU8 = AtomicU8::new(0);
static BACKGROUND_ENABLED: AtomicU8 = AtomicU8::new(1);
/// What the housekeeper runs after each pass, if set: library routing's
/// rescan for objects loaded behind the C ABI's back. A function pointer, so
/// that the purger does not reach up into the module that sets it.
static AFTER_PASS: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// Asks the housekeeper to call `task` after every pass (the last call wins).
pub fn set_after_pass(task: fn()) {
    AFTER_PASS.store(task as *mut (), Ordering::Release);
}

/// The task set with [`set_after_pass`], if any.
pub fn after_pass() -> Option<fn()> {
    let task = AFTER_PASS.load(Ordering::Acquire);
    // SAFETY: only `set_after_pass` stores here, and it stores a `fn()`.
    (!task.is_null()).then(|| unsafe { core::mem::transmute::<*mut (), fn()>(task) })
}

/// Whether the housekeeper runs now (started, and not switched off): only
/// then may the data structures keep memory for it to give back later.
pub fn housekeeper_running() -> bool {
    STATE.load(Ordering::Acquire) == RUNNING && background_enabled()
}

/// Something may have become free: wake the housekeeper if it sleeps.
#[inline]
pub fn note_pending() {
    if PENDING.load(Ordering::Relaxed) == 0
        && PENDING.swap(1, Ordering::AcqRel) == 0
        && STATE.load(Ordering::Acquire) == RUNNING
    {
        futex_wake_one(&PENDING);
    }
}

pub fn purge_delay_ms() -> u64 {
    read_settings();
    DELAY_MS.load(Ordering::Relaxed)
}

/// Sets the purge delay (also read from `ARENALLOC_PURGE_DELAY_MS`).
pub fn set_purge_delay_ms(ms: u64) {
    read_settings();
    DELAY_MS.store(ms, Ordering::Relaxed);
}

/// Whether the housekeeper runs (or will start when there is work).
pub fn background_enabled() -> bool {
    read_settings();
    BACKGROUND_ENABLED.load(Ordering::Relaxed) == 1
}

/// Turns the housekeeper on or off (also `ARENALLOC_BACKGROUND=0`). Off, a
/// running housekeeper finishes its pass and sleeps for good; on again, it
/// resumes (or starts on the next slow path).
pub fn set_background(enabled: bool) {
    read_settings();
    BACKGROUND_ENABLED.store(u8::from(enabled), Ordering::Relaxed);
    if enabled {
        // Undo an earlier switch-off (a failed start stays off).
        let _ = STATE.compare_exchange(OFF, NOT_STARTED, Ordering::AcqRel, Ordering::Relaxed);
    }
    futex_wake_one(&PENDING);
}

pub fn read_settings() {
    if SETTINGS_READ.load(Ordering::Acquire) == 1 {
        return;
    }
    if os::env_var(c"ARENALLOC_BACKGROUND").is_some_and(|v| v == b"0") {
        BACKGROUND_ENABLED.store(0, Ordering::Relaxed);
    }
    if let Some(ms) = os::env_var(c"ARENALLOC_PURGE_DELAY_MS").and_then(os::parse_decimal) {
        DELAY_MS.store(ms as u64, Ordering::Relaxed);
    }
    if let Some(us) = os::env_var(c"ARENALLOC_PURGE_SLICE_US").and_then(os::parse_decimal) {
        SLICE_US.store(us as u64, Ordering::Relaxed);
    }
    SETTINGS_READ.store(1, Ordering::Release);
}

/// How long one purge may hold an arena's lock before it lets go (and
/// lets the arena's threads in) and then goes on where it stopped. Purging
/// single pages between live blocks releases about 1 MiB per millisecond
/// on the development machine (227 MiB of 16 B blocks with every 1000th
/// kept held the lock 193 ms in one piece); whole free slices go faster.
pub const DEFAULT_SLICE_US: u64 = 1000;
static SLICE_US: AtomicU64 = AtomicU64::new(DEFAULT_SLICE_US);

/// The time one purge of an arena may take under its lock. It is spent once
/// the time is up and the purge has made progress since it (re)started:
/// released memory or moved its cursor on, so a purge that goes on where it
/// stopped always gets further, whatever the lock and the barrier cost.
pub struct Budget {
    deadline_us: u64,
    progressed: Cell<bool>,
}

impl Budget {
    pub fn starting_now() -> Budget {
        Budget {
            deadline_us: os::now_us() + SLICE_US.load(Ordering::Relaxed),
            progressed: Cell::new(false),
        }
    }

    /// No time limit: for a purge that must finish in one lock hold.
    pub fn unlimited() -> Budget {
        Budget {
            deadline_us: u64::MAX,
            progressed: Cell::new(false),
        }
    }

    /// Whether the purge should stop and let go of the lock.
    pub fn spent(&self) -> bool {
        self.progressed.get() && os::now_us() >= self.deadline_us
    }

    /// The purge got further (a segment done, a span retired).
    pub fn progress(&self) {
        self.progressed.set(true);
    }

    /// `bytes` were released: progress if any. Returns `bytes`.
    pub fn released(&self, bytes: usize) -> usize {
        if bytes > 0 {
            self.progress();
        }
        bytes
    }
}
