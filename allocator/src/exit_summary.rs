//! `ARENALLOC_STATS=1`: a short summary on stderr when the process exits
//! (one line per arena that holds memory, then the totals: RSS now and at
//! peak, live bytes, mapped bytes, what the purger gave back and how long it
//! held a lock). Formatted without allocating.
//!
//! It runs from `.fini_array`, not `atexit`: registering with `atexit` from
//! inside the allocator deadlocks when the allocator's first call comes
//! from glibc's `atexit` itself (its 33rd registration allocates under the
//! lock that a nested `atexit` takes). `.fini_array` also runs after every
//! `atexit` handler, so the figures are the last ones. A fork child that
//! exits prints its own summary (each names its pid).

use core::sync::atomic::{AtomicBool, Ordering};

use crate::arena::Arena;
use crate::diag::Line;
use crate::stats::ArenaStats;
use crate::{os, purger, registry, stats};

static ASKED: AtomicBool = AtomicBool::new(false);

/// How often the summary tries an arena's lock (yielding between tries)
/// before it reports the arena as busy: a thread that holds the lock and
/// never lets go (stopped in a signal handler, say) must not keep the
/// process from exiting.
const LOCK_TRIES: usize = 1000;

/// Reads `ARENALLOC_STATS` (once, at the allocator's initialisation).
pub fn read_setting() {
    if os::env_var(c"ARENALLOC_STATS").is_some_and(|v| v == b"1") {
        ASKED.store(true, Ordering::Relaxed);
    }
}

#[used]
#[link_section = ".fini_array"]
static PRINT_AT_EXIT: extern "C" fn() = print_summary_if_asked;

extern "C" fn print_summary_if_asked() {
    if ASKED.load(Ordering::Relaxed) {
        print_summary();
    }
}

/// One arena's figures, or `None` if its lock stayed taken.
fn arena_stats(arena: &Arena) -> Option<ArenaStats> {
    for _ in 0..LOCK_TRIES {
        if let Some(state) = arena.state.try_lock() {
            return Some(state.stats(arena));
        }
        os::yield_now();
    }
    None
}

fn print_summary() {
    Line::new()
        .text("arenalloc: exit summary of pid ")
        .num(os::process_id())
        .text("\n")
        .emit();
    let default = registry::default_arena();
    let (mut live, mut blocks, mut busy) = (0, 0, 0);
    registry::for_each_arena(|arena| {
        let is_default = core::ptr::eq(arena, default);
        let mut line = Line::new();
        line.text("arenalloc:   arena ")
            .hex(registry::handle_of(arena).map_or(0, |h| h.to_raw()) as usize);
        if is_default {
            line.text(" (default)");
        }
        let Some(s) = arena_stats(arena) else {
            busy += 1;
            line.text(": busy (its lock stayed taken)\n").emit();
            return;
        };
        if s.mapped_bytes == 0 && !is_default {
            return;
        }
        live += s.live_bytes;
        blocks += s.live_blocks;
        line.text(": live ")
            .size(s.live_bytes)
            .text(" in ")
            .num(s.live_blocks)
            .text(" blocks, peak in use ")
            .size(s.peak_in_use_bytes)
            .text(", resident ")
            .size(s.resident_bytes)
            .text(", mapped ")
            .size(s.mapped_bytes)
            .text(", threads ")
            .num(s.threads)
            .text("\n")
            .emit();
    });
    let mut totals = Line::new();
    totals
        .text("arenalloc:   rss ")
        .size(os::resident_bytes().unwrap_or(0))
        .text(" now, ")
        .size(os::peak_resident_bytes().unwrap_or(0))
        .text(" peak; live ")
        .size(live)
        .text(" in ")
        .num(blocks)
        .text(" blocks");
    if busy > 0 {
        totals.text(" (without ").num(busy).text(" busy arenas)");
    }
    totals
        .text("; mapped ")
        .size(stats::mapped_bytes())
        .text(" now, ")
        .size(stats::peak_mapped_bytes())
        .text(" peak\n")
        .emit();
    Line::new()
        .text("arenalloc:   purged ")
        .size(purger::purged_bytes())
        .text(" in all; housekeeper passes: ")
        .num(purger::passes())
        .text("; arena lock held ")
        .num(purger::purge_lock_holds())
        .text(" times, at most ")
        .num(purger::longest_lock_hold_us() as usize)
        .text(" us\n")
        .emit();
}
