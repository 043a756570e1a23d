//! One memory scenario, run through the C `malloc` family, so that
//! `LD_PRELOAD` decides which allocator serves it (see
//! `benches/mem_harness.py`, which runs every scenario under every
//! allocator and samples RSS from outside).
//!
//! Usage: `mem_scenario <burst|small|small-keep|threads|idle|periodic-<gap ms>> [idle_s]`
//!
//! It prints `mark <name> <ms since start> <rss KiB> <vsz KiB>` lines at the
//! points the harness reports (`freed` is the moment the workload has freed
//! its memory), `value <name> <number>` lines for figures measured inside
//! (live bytes kept, burst time), then idles `idle_s` seconds (default 3)
//! without calling the allocator.
//!
//! `MEM_SCENARIO_TRIM_MS=N` starts a thread that calls `malloc_trim(0)`
//! every N ms (the DICOM server's fix, for the glibc+trim column).

use std::ffi::c_void;
use std::io::Write;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

struct Clock(Instant);

impl Clock {
    fn mark(&self, name: &str) {
        let (rss, vsz) = statm_kib();
        println!("mark {name} {} {rss} {vsz}", self.0.elapsed().as_millis());
        let _ = std::io::stdout().flush();
    }
}

fn value(name: &str, v: impl std::fmt::Display) {
    println!("value {name} {v}");
    let _ = std::io::stdout().flush();
}

/// (RSS, VSZ) in KiB.
fn statm_kib() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let mut f = text
        .split_whitespace()
        .map(|x| x.parse::<u64>().unwrap_or(0));
    let vsz = f.next().unwrap_or(0) * 4;
    let rss = f.next().unwrap_or(0) * 4;
    (rss, vsz)
}

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Log-uniform in `[lo, hi]`.
    fn log_uniform(&mut self, lo: usize, hi: usize) -> usize {
        let (l, h) = ((lo as f64).ln(), (hi as f64).ln());
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((l + (h - l) * u).exp() as usize).clamp(lo, hi)
    }
}

fn malloc(size: usize) -> *mut u8 {
    // SAFETY: plain C malloc.
    let p = unsafe { libc::malloc(size) }.cast::<u8>();
    assert!(!p.is_null(), "malloc({size}) failed");
    p
}

/// # Safety
/// `p` came from `malloc` and is not used again.
unsafe fn free(p: *mut u8) {
    // SAFETY: forwarded.
    unsafe { libc::free(p.cast::<c_void>()) }
}

/// Writes one byte per 4 KiB page so the block is resident, as real data
/// would be.
fn touch(p: *mut u8, size: usize) {
    let mut off = 0;
    while off < size {
        // SAFETY: inside the block.
        unsafe { p.add(off).write_volatile(off as u8) };
        off += 4 * KIB;
    }
    // SAFETY: the last byte is inside the block.
    unsafe { p.add(size - 1).write_volatile(1) };
}

/// Two threads churn ~2 GB of 1 KiB-8 MiB buffers with ~300 MB in flight;
/// 1% of the small (< 64 KiB) buffers are kept. Then everything else is
/// freed.
fn burst(clock: &Clock) {
    const PER_THREAD_TOTAL: usize = 1024 * MIB;
    const PER_THREAD_IN_FLIGHT: usize = 150 * MIB;
    let start = Instant::now();
    let kept: Vec<(usize, usize)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2u64)
            .map(|t| {
                scope.spawn(move || {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
                    let mut slots: Vec<(usize, usize)> = Vec::new();
                    let mut in_flight = 0;
                    let mut total = 0;
                    let mut kept = Vec::new();
                    while total < PER_THREAD_TOTAL {
                        let size = rng.log_uniform(KIB, 8 * MIB);
                        let p = malloc(size);
                        touch(p, size);
                        total += size;
                        in_flight += size;
                        slots.push((p as usize, size));
                        while in_flight > PER_THREAD_IN_FLIGHT {
                            let i = (rng.next() as usize) % slots.len();
                            let (q, qsize) = slots.swap_remove(i);
                            in_flight -= qsize;
                            if qsize < 64 * KIB && rng.next().is_multiple_of(100) {
                                kept.push((q, qsize));
                            } else {
                                // SAFETY: allocated above, freed once.
                                unsafe { free(q as *mut u8) };
                            }
                        }
                    }
                    for (q, _) in slots {
                        // SAFETY: as above.
                        unsafe { free(q as *mut u8) };
                    }
                    kept
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect()
    });
    value("burst_ms", start.elapsed().as_millis());
    value("live_bytes", kept.iter().map(|&(_, s)| s).sum::<usize>());
    clock.mark("freed");
    std::mem::forget(kept);
}

/// 20 M blocks of 16 B allocated, then all freed (or all but every
/// `keep_every`-th).
fn small(clock: &Clock, keep_every: usize) {
    const COUNT: usize = 20_000_000;
    let mut blocks: Vec<usize> = Vec::with_capacity(COUNT);
    for i in 0..COUNT {
        let p = malloc(16);
        // SAFETY: a 16-byte block.
        unsafe { p.cast::<u64>().write(i as u64) };
        blocks.push(p as usize);
    }
    clock.mark("allocated");
    let mut live = 0;
    for (i, &p) in blocks.iter().enumerate() {
        if keep_every != 0 && i.is_multiple_of(keep_every) {
            live += 16;
        } else {
            // SAFETY: allocated above, freed once.
            unsafe { free(p as *mut u8) };
        }
    }
    // The index itself goes too (160 MB of glibc's or the preloaded
    // allocator's memory): only the kept blocks stay live.
    let kept: Vec<usize> = blocks.iter().copied().step_by(keep_every.max(1)).collect();
    drop(blocks);
    value("live_bytes", if keep_every == 0 { 0 } else { live });
    clock.mark("freed");
    if keep_every != 0 {
        std::mem::forget(kept);
    }
}

/// Allocates blocks of `size()` bytes, writing every page, until `total`
/// bytes; pushes them onto `blocks`.
fn allocate_touched(blocks: &mut Vec<usize>, total: usize, mut size: impl FnMut() -> usize) {
    let mut bytes = 0;
    while bytes < total {
        let n = size();
        let p = malloc(n);
        touch(p, n);
        blocks.push(p as usize);
        bytes += n;
    }
}

/// Frees and forgets every block of `blocks`.
fn free_all(blocks: &mut Vec<usize>) {
    for p in blocks.drain(..) {
        // SAFETY: blocks of `allocate_touched`, each freed once.
        unsafe { free(p as *mut u8) };
    }
}

/// 256 threads (256 KiB stacks) each allocate and free 2 MB of small
/// blocks, then park; later they exit.
fn threads(clock: &Clock, idle: Duration) {
    const THREADS: usize = 256;
    let parked = Arc::new(Barrier::new(THREADS + 1));
    let release = Arc::new(Barrier::new(THREADS + 1));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (parked, release) = (parked.clone(), release.clone());
            std::thread::Builder::new()
                .stack_size(256 * KIB)
                .spawn(move || {
                    let mut rng = Rng(t as u64 + 7);
                    let mut blocks = Vec::with_capacity(32 * KIB);
                    allocate_touched(&mut blocks, 2 * MIB, || 16 + (rng.next() as usize % 240));
                    free_all(&mut blocks);
                    drop(blocks);
                    parked.wait();
                    release.wait();
                })
                .expect("spawn")
        })
        .collect();
    parked.wait();
    clock.mark("freed");
    std::thread::sleep(idle);
    clock.mark("parked_idle");
    if std::env::var_os("MEM_SCENARIO_MALLOC_STATS").is_some() {
        // SAFETY: malloc_stats has no preconditions (it prints to stderr).
        unsafe { malloc_stats() };
    }
    release.wait();
    for h in handles {
        h.join().expect("join");
    }
    clock.mark("exited");
}

/// Requests with pauses between them: each of 10 rounds allocates 64 MiB
/// in blocks of 4-256 KiB, writes them, frees them all, then the process
/// sleeps `gap`. A purge delay shorter than the gap gives the memory back
/// between rounds and the next round faults it in again; the work time
/// (rounds without the sleeps) shows what that costs.
fn periodic(clock: &Clock, gap: Duration) {
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 64 * MIB;
    let mut rng = Rng(0x005e_ed0f_9e41);
    let mut work = Duration::ZERO;
    let mut blocks: Vec<usize> = Vec::with_capacity(PER_ROUND / (4 * KIB));
    for _ in 0..ROUNDS {
        let started = Instant::now();
        allocate_touched(&mut blocks, PER_ROUND, || {
            rng.log_uniform(4 * KIB, 256 * KIB)
        });
        free_all(&mut blocks);
        work += started.elapsed();
        std::thread::sleep(gap);
    }
    value("work_ms", work.as_millis());
    value("live_bytes", 0);
    clock.mark("freed");
}

extern "C" {
    /// glibc's (or the preloaded allocator's) statistics on stderr.
    fn malloc_stats();
}

/// CPU time (user + system) of the process so far, in clock ticks.
fn cpu_ticks() -> u64 {
    stat_cpu_ticks("/proc/self/stat")
}

/// CPU time of the thread named `arenalloc-purge` (arenalloc's
/// housekeeper), if the process has one, in clock ticks.
fn housekeeper_cpu_ticks() -> Option<u64> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .find_map(|task| {
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            (comm.trim() == "arenalloc-purge")
                .then(|| stat_cpu_ticks(&task.path().join("stat").to_string_lossy()))
        })
}

/// utime + stime of a `stat` file of /proc, in clock ticks.
fn stat_cpu_ticks(path: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let after = text.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after ')'.
    field(11) + field(12)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().unwrap_or_default();
    let idle_s: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let clock = Clock(Instant::now());
    if let Some(ms) = std::env::var("MEM_SCENARIO_TRIM_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(ms));
            // SAFETY: malloc_trim has no preconditions.
            unsafe { libc::malloc_trim(0) };
        });
    }
    clock.mark("start");
    match scenario.as_str() {
        "burst" => burst(&clock),
        "small" => small(&clock, 0),
        "small-keep" => small(&clock, 1000),
        "threads" => threads(&clock, Duration::from_secs(idle_s)),
        "idle" => {
            // 16 MiB kept live (enough for arenalloc's housekeeper to
            // start), one burst of frees that the housekeeper purges, then
            // nothing to purge for the idle time.
            let kept: Vec<usize> = (0..256)
                .map(|_| {
                    let p = malloc(64 * KIB);
                    touch(p, 64 * KIB);
                    p as usize
                })
                .collect();
            std::mem::forget(kept);
            std::thread::sleep(Duration::from_secs(1));
            clock.mark("freed");
            let threads = std::fs::read_to_string("/proc/self/status")
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_string()))
                .unwrap_or_default();
            value("threads", threads);
        }
        other if other.starts_with("periodic-") => {
            let gap_ms = other["periodic-".len()..].parse().unwrap_or(200);
            periodic(&clock, Duration::from_millis(gap_ms));
        }
        other => {
            eprintln!(
                "unknown scenario {other:?}: burst, small, small-keep, threads, idle, periodic-<gap ms>"
            );
            std::process::exit(2);
        }
    }
    let ticks_before = cpu_ticks();
    let housekeeper_before = housekeeper_cpu_ticks();
    // Idle CPU is measured from here: the allocator is not called again.
    let idle_start = Instant::now();
    let mut marked_1s = false;
    while idle_start.elapsed() < Duration::from_secs(idle_s) {
        std::thread::sleep(Duration::from_millis(50));
        if !marked_1s && idle_start.elapsed() >= Duration::from_secs(1) {
            clock.mark("idle_1s");
            marked_1s = true;
        }
    }
    clock.mark("idle_end");
    value("idle_cpu_ticks", cpu_ticks() - ticks_before);
    if let (Some(before), Some(after)) = (housekeeper_before, housekeeper_cpu_ticks()) {
        value("housekeeper_idle_cpu_ticks", after - before);
    }
    // SAFETY: sysconf has no preconditions.
    value("ticks_per_s", unsafe { libc::sysconf(libc::_SC_CLK_TCK) });
}
