//! `ARENALLOC_SECURE=1`: stricter checks that cost more than the default
//! hardening, for programs that want them.
//!
//! - Every free of a small block takes the remote path (one CAS onto the
//!   span's list of blocks freed by other threads), also on the owning
//!   thread: the block is zeroed (all but its link word), and it is not
//!   handed out again until its span has used up its other free blocks and
//!   collects the list (a quarantine that costs no memory of its own), and
//!   a double free is caught however far apart the two frees are.
//! - Large blocks get a guard page (`PROT_NONE`) after their end, are never
//!   cached when freed (unmapped at once, so a use after free faults), and
//!   are never resized in place (the guard would have to move).
//!
//! How the default fast path stays free of any test for the setting: spans
//! adopted in secure mode record their owner as `thread id | 1`, which never
//! equals a thread id (the address of a thread's state, aligned), so
//! `free`'s owner check fails and the block goes down the remote path,
//! where the setting is read.

use core::sync::atomic::{AtomicU8, Ordering};

const UNREAD: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;
static SETTING: AtomicU8 = AtomicU8::new(UNREAD);

/// The bit that marks an owner recorded in secure mode.
const SECURE_OWNER_BIT: usize = 1;

/// Whether `ARENALLOC_SECURE=1` (read once, without allocating).
pub fn enabled() -> bool {
    match SETTING.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => read_setting(),
    }
}

/// Whether the setting is known to be off (read already, and not `1`): a
/// fast path's test that calls nothing; anything else takes the path that
/// asks [`enabled`].
#[inline(always)]
pub fn known_off() -> bool {
    SETTING.load(Ordering::Relaxed) == OFF
}

#[cold]
fn read_setting() -> bool {
    let on = crate::os::env_var(c"ARENALLOC_SECURE").is_some_and(|v| v == b"1");
    SETTING.store(if on { ON } else { OFF }, Ordering::Relaxed);
    on
}

/// The owner a span records for thread `thread_id`: the id itself, or in
/// secure mode one that no thread's `free` matches.
pub fn owner_tag(thread_id: usize) -> usize {
    if enabled() {
        thread_id | SECURE_OWNER_BIT
    } else {
        thread_id
    }
}

/// The thread id in an owner tag (0: none, also for `DEAD_OWNER`).
pub fn owner_id(tag: usize) -> usize {
    tag & !SECURE_OWNER_BIT
}
