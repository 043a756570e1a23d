//! `ARENALLOC_STATS=1`: a short summary on stderr when the process exits
//! (peak and final RSS, live bytes, what the purger gave back, and one line
//! per arena that holds memory). Registered with `atexit` at the
//! allocator's first initialisation; formatted without allocating.

use crate::diag::Line;
use crate::{os, purger, registry, stats};

/// Registers the summary if `ARENALLOC_STATS=1`. Called once, from the
/// allocator's initialisation (glibc's `atexit` may allocate: that call
/// re-enters an initialisation that is already under way, which is allowed).
pub fn register_if_asked() {
    if os::env_var(c"ARENALLOC_STATS").is_some_and(|v| v == b"1") {
        // SAFETY: the handler is an `extern "C"` function that lives forever.
        unsafe { libc::atexit(print_summary) };
    }
}

extern "C" fn print_summary() {
    let all = stats::snapshot();
    Line::new()
        .text("arenalloc: exit summary of pid ")
        .num(os::process_id())
        .text("\n")
        .emit();
    Line::new()
        .text("arenalloc:   rss ")
        .size(all.resident_bytes)
        .text(" now, ")
        .size(os::peak_resident_bytes().unwrap_or(0))
        .text(" peak; live ")
        .size(all.live_bytes)
        .text(" in ")
        .num(all.live_blocks)
        .text(" blocks; mapped ")
        .size(all.mapped_bytes)
        .text(" now, ")
        .size(all.peak_mapped_bytes)
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
    let default = registry::default_arena();
    registry::for_each_arena(|arena| {
        let s = arena.state.lock().stats(arena);
        if s.mapped_bytes == 0 && !core::ptr::eq(arena, default) {
            return;
        }
        let mut line = Line::new();
        line.text("arenalloc:   arena ")
            .hex(registry::handle_of(arena).to_raw() as usize);
        if core::ptr::eq(arena, default) {
            line.text(" (default)");
        }
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
}
