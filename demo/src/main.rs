//! The demonstration: a service-like workload run once under glibc and once
//! under arenalloc, each in a fresh process, printing what RSS and each
//! allocator's own counters say at every stage.
//!
//! The workload: 400 "requests"; each builds records (strings of 32-512 B),
//! icons (4-64 KiB buffers) and now and then a large report (1-4 MiB), and a
//! "library" cache keeps a small fraction of the small blocks forever. Then
//! the application drops everything but the cache, and the process idles.
//!
//! Usage: `arenalloc-demo` (runs both and prints the table), or
//! `arenalloc-demo --child glibc|arenalloc` (one run, one line of figures).

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arenalloc::ArenaAlloc;

/// Routes allocations to arenalloc once `USE_ARENALLOC` is set (at the start
/// of `main` in a child run), to glibc otherwise; frees go to whichever
/// allocator owns the block.
struct Switch;

static USE_ARENALLOC: AtomicBool = AtomicBool::new(false);

// SAFETY: every block is allocated by exactly one of two correct allocators
// and freed by the one that owns it (arenalloc recognises its own blocks).
unsafe impl GlobalAlloc for Switch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if USE_ARENALLOC.load(Ordering::Relaxed) {
            // SAFETY: forwarded GlobalAlloc contract.
            unsafe { ArenaAlloc.alloc(layout) }
        } else {
            // SAFETY: forwarded GlobalAlloc contract.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if arenalloc::owns(ptr) {
            // SAFETY: the block is arenalloc's.
            unsafe { ArenaAlloc.dealloc(ptr, layout) }
        } else {
            // SAFETY: the block is glibc's.
            unsafe { System.dealloc(ptr, layout) }
        }
    }
}

#[global_allocator]
static GLOBAL: Switch = Switch;

const REQUESTS: usize = 400;
/// One small block in this many is kept by the "library" cache.
const CACHE_ONE_IN: usize = 64;

/// A deterministic pseudo-random sequence (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() as usize) % (hi - lo + 1)
    }
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// What the allocator itself says it holds: (in use, mapped/system bytes).
fn allocator_counters(arena: bool) -> (usize, usize) {
    if arena {
        let s = arenalloc::stats();
        (s.live_bytes, s.mapped_bytes)
    } else {
        // SAFETY: mallinfo2 only reads glibc's statistics.
        let m = unsafe { libc_mallinfo2() };
        (m.uordblks + m.hblkhd, m.arena + m.hblkhd)
    }
}

#[repr(C)]
struct Mallinfo2 {
    arena: usize,
    ordblks: usize,
    smblks: usize,
    hblks: usize,
    hblkhd: usize,
    usmblks: usize,
    fsmblks: usize,
    uordblks: usize,
    fordblks: usize,
    keepcost: usize,
}

extern "C" {
    #[link_name = "mallinfo2"]
    fn libc_mallinfo2() -> Mallinfo2;
    fn malloc_trim(pad: usize) -> i32;
}

fn trim(arena: bool) {
    if arena {
        arenalloc::trim();
    } else {
        // SAFETY: malloc_trim has no preconditions.
        unsafe { malloc_trim(0) };
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn child(arena: bool) {
    USE_ARENALLOC.store(arena, Ordering::Relaxed);
    let start = rss_bytes();
    let t0 = Instant::now();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut app: Vec<Vec<u8>> = Vec::new();
    let mut cache: Vec<Vec<u8>> = Vec::new();
    let mut peak = 0;
    for request in 0..REQUESTS {
        for i in 0..2000 {
            let record = vec![(request + i) as u8; rng.range(32, 512)];
            if i % CACHE_ONE_IN == 0 {
                cache.push(record);
            } else {
                app.push(record);
            }
        }
        for _ in 0..4 {
            app.push(vec![request as u8; rng.range(4 << 10, 64 << 10)]);
        }
        if request % 50 == 0 {
            app.push(vec![1u8; rng.range(1 << 20, 4 << 20)]);
        }
        peak = peak.max(rss_bytes());
    }
    let build = t0.elapsed();
    let live_cache: usize = cache.iter().map(|b| b.len()).sum();
    drop(app);
    let after_free = rss_bytes();
    let (in_use, system) = allocator_counters(arena);
    trim(arena);
    let after_trim = rss_bytes();
    std::thread::sleep(Duration::from_secs(1));
    let idle = rss_bytes();
    println!(
        "{} {} {} {} {} {} {} {} {} {}",
        if arena { "arenalloc" } else { "glibc" },
        start,
        peak,
        after_free,
        after_trim,
        idle,
        live_cache,
        in_use,
        system,
        build.as_millis()
    );
    drop(cache);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == "--child" {
        child(args[2] == "arenalloc");
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    println!(
        "Workload: {REQUESTS} requests x (2000 records of 32-512 B + 4 icons of 4-64 KiB), \
         a 1-4 MiB report every 50; a cache keeps 1 record in {CACHE_ONE_IN}; then the app frees the rest.\n"
    );
    println!(
        "{:<10} {:>9} {:>9} {:>11} {:>11} {:>12} {:>11} {:>14} {:>14} {:>9}",
        "allocator",
        "start",
        "peak",
        "after free",
        "after trim",
        "idle 1 s",
        "cache live",
        "alloc in-use",
        "alloc system",
        "build ms"
    );
    for which in ["glibc", "arenalloc"] {
        let out = Command::new(&exe)
            .args(["--child", which])
            .output()
            .expect("run child");
        let line = String::from_utf8_lossy(&out.stdout);
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 10 || !out.status.success() {
            eprintln!(
                "child {which} failed: {line} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::process::exit(1);
        }
        let n = |i: usize| f[i].parse::<usize>().unwrap_or(0);
        println!(
            "{:<10} {:>6.1} MiB {:>6.1} MiB {:>8.1} MiB {:>8.1} MiB {:>9.1} MiB {:>8.1} MiB {:>11.1} MiB {:>11.1} MiB {:>9}",
            f[0],
            mib(n(1)),
            mib(n(2)),
            mib(n(3)),
            mib(n(4)),
            mib(n(5)),
            mib(n(6)),
            mib(n(7)),
            mib(n(8)),
            n(9)
        );
    }
    println!(
        "\nRSS is read from /proc/self/statm; 'after trim' follows malloc_trim(0) for glibc and \
         arenalloc::trim() for arenalloc.\n'alloc in-use/system' are each allocator's own counters \
         after the free (glibc: mallinfo2 uordblks+hblkhd / arena+hblkhd; arenalloc: live/mapped bytes)."
    );
}
