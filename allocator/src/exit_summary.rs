//! `ARENALLOC_STATS=1`: a short summary on stderr when the process exits
//! (one line per arena that holds memory, then the totals: RSS now and at
//! peak, live bytes, mapped bytes, what the purger gave back and how long it
//! held a lock). `ARENALLOC_STATS=json`: the same figures as one line of
//! JSON, written to file descriptor `ARENALLOC_STATS_FD` (default 2), for
//! tools such as the `arenalloc` command. Formatted without allocating.
//!
//! It runs from `.fini_array`, not `atexit`: registering with `atexit` from
//! inside the allocator deadlocks when the allocator's first call comes
//! from glibc's `atexit` itself (its 33rd registration allocates under the
//! lock that a nested `atexit` takes). `.fini_array` also runs after every
//! `atexit` handler, so the figures are the last ones. A fork child that
//! exits prints its own summary (each names its pid).

use core::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use crate::arena::Arena;
use crate::diag::Line;
use crate::stats::ArenaStats;
use crate::{os, purger, registry, stats};

static ASKED: AtomicBool = AtomicBool::new(false);
static ASKED_JSON: AtomicBool = AtomicBool::new(false);
static JSON_FD: AtomicI32 = AtomicI32::new(2);

/// How often the summary tries an arena's lock (yielding between tries)
/// before it reports the arena as busy: a thread that holds the lock and
/// never lets go (stopped in a signal handler, say) must not keep the
/// process from exiting.
const LOCK_TRIES: usize = 1000;

/// Reads `ARENALLOC_STATS` (once, at the allocator's initialisation).
pub fn read_setting() {
    match os::env_var(c"ARENALLOC_STATS") {
        Some(b"1") => ASKED.store(true, Ordering::Relaxed),
        Some(b"json") => {
            let fd = os::env_var(c"ARENALLOC_STATS_FD")
                .and_then(parse_fd)
                .unwrap_or(2);
            JSON_FD.store(fd, Ordering::Relaxed);
            ASKED_JSON.store(true, Ordering::Relaxed);
        }
        _ => {}
    }
}

fn parse_fd(text: &[u8]) -> Option<i32> {
    if text.is_empty() || text.len() > 9 {
        return None;
    }
    text.iter().try_fold(0i32, |fd, &b| {
        b.is_ascii_digit().then(|| fd * 10 + i32::from(b - b'0'))
    })
}

#[used]
#[link_section = ".fini_array"]
static PRINT_AT_EXIT: extern "C" fn() = print_summary_if_asked;

extern "C" fn print_summary_if_asked() {
    if ASKED.load(Ordering::Relaxed) {
        print_summary();
    }
    if ASKED_JSON.load(Ordering::Relaxed) {
        write_json(JSON_FD.load(Ordering::Relaxed));
    }
}

/// JSON text into a fixed buffer, written out when full and at the end (one
/// `write` for a document of up to 4 KiB, so documents of processes sharing
/// the descriptor do not interleave).
struct JsonOut {
    buf: [u8; 4096],
    len: usize,
    fd: i32,
}

impl JsonOut {
    fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            if self.len == self.buf.len() {
                self.flush();
            }
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
        self
    }

    fn num(&mut self, value: usize) -> &mut Self {
        let mut line = Line::new();
        line.num(value);
        let digits = line.as_bytes();
        let mut copy = [0u8; 20];
        let n = digits.len().min(copy.len());
        copy.iter_mut().zip(digits).for_each(|(c, &d)| *c = d);
        self.raw(copy.get(..n).unwrap_or(&[]))
    }

    /// `"key":value,` for a number.
    fn field(&mut self, key: &str, value: usize) -> &mut Self {
        self.raw(b"\"")
            .raw(key.as_bytes())
            .raw(b"\":")
            .num(value)
            .raw(b",")
    }

    /// A JSON string: quotes, backslashes and control bytes escaped.
    fn string(&mut self, text: &[u8]) -> &mut Self {
        self.raw(b"\"");
        for &b in text {
            match b {
                b'"' => self.raw(b"\\\""),
                b'\\' => self.raw(b"\\\\"),
                0..=0x1f => {
                    let hex = |n: u8| b"0123456789abcdef".get(usize::from(n)).copied();
                    let escaped = [
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        hex(b >> 4).unwrap_or(b'0'),
                        hex(b & 15).unwrap_or(b'0'),
                    ];
                    self.raw(&escaped)
                }
                _ => self.raw(&[b]),
            };
        }
        self.raw(b"\"")
    }

    fn flush(&mut self) {
        os::write_all(self.fd, self.buf.get(..self.len).unwrap_or(&[]));
        self.len = 0;
    }
}

/// One line of JSON: the process's figures and one object per arena that
/// holds memory (with the routed library it serves, if any).
#[cold]
#[inline(never)]
#[link_section = "arenalloc_cold"]
fn write_json(fd: i32) {
    let mut out = JsonOut {
        buf: [0; 4096],
        len: 0,
        fd,
    };
    out.raw(b"{")
        .field("pid", os::process_id())
        .field("rss_bytes", os::resident_bytes().unwrap_or(0))
        .field("peak_rss_bytes", os::peak_resident_bytes().unwrap_or(0))
        .field("mapped_bytes", stats::mapped_bytes())
        .field("peak_mapped_bytes", stats::peak_mapped_bytes())
        .field("purged_bytes", purger::purged_bytes())
        .field("housekeeper_passes", purger::passes());
    let default = registry::default_arena();
    let (mut live, mut blocks) = (0, 0);
    let mut first = true;
    out.raw(b"\"arenas\":[");
    registry::for_each_arena(|arena| {
        let is_default = core::ptr::eq(arena, default);
        let handle = registry::handle_of(arena).map_or(0, |h| h.to_raw());
        let s = arena_stats(arena);
        if s.is_some_and(|s| s.mapped_bytes == 0) && !is_default {
            return;
        }
        if !first {
            out.raw(b",");
        }
        first = false;
        out.raw(b"{\"handle\":");
        let mut hex = Line::new();
        hex.hex(handle as usize);
        let mut copy = [0u8; 18];
        let n = hex.as_bytes().len().min(copy.len());
        copy.iter_mut()
            .zip(hex.as_bytes())
            .for_each(|(c, &d)| *c = d);
        out.string(copy.get(..n).unwrap_or(&[]))
            .raw(if is_default {
                b",\"default\":true"
            } else {
                b",\"default\":false"
            })
            .raw(b",\"routed_object\":");
        let mut routed = false;
        if let Some(h) = registry::handle_of(arena) {
            crate::library_routing::routed_object_of(h, |path| {
                out.string(path);
                routed = true;
            });
        }
        if !routed {
            out.raw(b"null");
        }
        out.raw(b",");
        match s {
            Some(s) => {
                live += s.live_bytes;
                blocks += s.live_blocks;
                out.field("live_bytes", s.live_bytes)
                    .field("live_blocks", s.live_blocks)
                    .field("resident_bytes", s.resident_bytes)
                    .field("mapped_bytes", s.mapped_bytes)
                    .field("peak_in_use_bytes", s.peak_in_use_bytes)
                    .field("purged_bytes", arena.purged_bytes())
                    .field("threads", s.threads)
                    .raw(b"\"busy\":false}");
            }
            None => {
                out.raw(b"\"busy\":true}");
            }
        }
    });
    out.raw(b"],");
    out.field("live_bytes", live);
    out.raw(b"\"live_blocks\":").num(blocks).raw(b"}\n");
    out.flush();
}

/// One arena's figures, or `None` if its lock stayed taken.
fn arena_stats(arena: &Arena) -> Option<ArenaStats> {
    for _ in 0..LOCK_TRIES {
        if let Some(state) = arena.state.try_lock() {
            return Some(registry::arena_stats(&state));
        }
        os::yield_now();
    }
    None
}

#[cold]
#[inline(never)]
#[link_section = "arenalloc_cold"]
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
