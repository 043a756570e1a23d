//! The demonstration. By default (`seed_case.rs`): a C service on Debian's
//! libcurl and GnuTLS, under glibc and under the preloaded `libarenalloc.so`
//! with and without library routing. With `--synthetic`: the
//! desktop-search-service case in Rust, with a simulated library, run in
//! four modes, each in a fresh child process, described below.
//!
//! The service builds about 250 MB of application data (release-history
//! strings of 32-512 B and icons of 4-64 KiB) over 400 requests. In each
//! request it calls a library that allocates thousands of small blocks
//! (16-256 B) and keeps some in a cache for good (about 4 MB at the end).
//! Then the application frees its data, the library keeps its cache, and the
//! process idles. The modes:
//!
//! 1. `glibc`: the system allocator, no trim (what the service saw);
//! 2. `glibc+trim`: the system allocator and one `malloc_trim(0)` after the
//!    free;
//! 3. `arenalloc`: arenalloc, everything in the default arena, no call
//!    after the free (its housekeeper thread gives memory back by itself);
//! 4. `arenalloc+arena`: arenalloc, each library call in a dedicated arena,
//!    no call after the free either.
//!
//! Each child reports its own RSS at every stage; the parent also samples the
//! child's RSS from outside every 50 ms (so the samples cost the child no
//! allocation), prints one table and writes an SVG chart.
//!
//! Usage: `arenalloc-demo` (the seed case: five runs, the table and the
//! chart), `arenalloc-demo --synthetic` (the four runs below), or
//! `arenalloc-demo --child <mode>` (one synthetic run: phase lines, then one
//! result line).

mod chart;
mod sampling;
mod seed_case;
mod workload;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arenalloc::{Arena, ArenaAlloc};

use workload::{AppData, Rng};

/// Routes allocations to arenalloc once `USE_ARENALLOC` is set (at the start
/// of `main` in an arenalloc child), to glibc otherwise; frees go to
/// whichever allocator owns the block, so blocks the runtime allocated
/// before the switch are still freed correctly.
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

/// How often the parent samples a child's RSS.
/// A child that runs longer than this is killed: something is wrong.
const CHILD_TIMEOUT: Duration = Duration::from_secs(40);

/// One way of running the workload.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Glibc,
    GlibcTrim,
    Arenalloc,
    ArenallocArena,
}

impl Mode {
    const ALL: [Mode; 4] = [
        Mode::Glibc,
        Mode::GlibcTrim,
        Mode::Arenalloc,
        Mode::ArenallocArena,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Glibc => "glibc",
            Mode::GlibcTrim => "glibc+trim",
            Mode::Arenalloc => "arenalloc",
            Mode::ArenallocArena => "arenalloc+arena",
        }
    }

    fn from_name(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == name)
    }

    fn uses_arenalloc(self) -> bool {
        matches!(self, Mode::Arenalloc | Mode::ArenallocArena)
    }

    /// Only glibc+trim calls a trim; arenalloc's modes make no call, its
    /// housekeeper gives memory back by itself.
    fn trims(self) -> bool {
        self == Mode::GlibcTrim
    }

    /// Colour and dash pattern of the mode's line in the chart.
    fn style(self) -> (&'static str, &'static str) {
        match self {
            Mode::Glibc => ("#d62728", ""),
            Mode::GlibcTrim => ("#ff8c00", "8 4"),
            Mode::Arenalloc => ("#1f5fbf", ""),
            Mode::ArenallocArena => ("#2ca02c", "8 4"),
        }
    }
}

/// This process's resident set size (0 if /proc cannot be read).
fn rss_now() -> usize {
    sampling::statm_rss("/proc/self/statm").unwrap_or(0)
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// What a child measured, in bytes (times in ms).
#[derive(Default)]
struct Report {
    start: usize,
    peak: usize,
    after_free: usize,
    after_trim: usize,
    idle_1s: usize,
    idle_5s: usize,
    cache_live: usize,
    app_bytes: usize,
    build_ms: usize,
    /// After the trim, the allocator's own count of bytes in live blocks:
    /// arenalloc's `live_bytes`, glibc's mallinfo2 `uordblks + hblkhd`.
    alloc_live: usize,
    /// After the trim, what the allocator holds from the OS: arenalloc's
    /// `mapped_bytes`, glibc's mallinfo2 `arena + hblkhd`.
    alloc_held: usize,
}

impl Report {
    /// The report's fields as (name, accessor) pairs, for one place that
    /// both writes and parses the result line.
    fn fields(&mut self) -> [(&'static str, &mut usize); 11] {
        [
            ("start", &mut self.start),
            ("peak", &mut self.peak),
            ("after_free", &mut self.after_free),
            ("after_trim", &mut self.after_trim),
            ("idle_1s", &mut self.idle_1s),
            ("idle_5s", &mut self.idle_5s),
            ("cache_live", &mut self.cache_live),
            ("app_bytes", &mut self.app_bytes),
            ("build_ms", &mut self.build_ms),
            ("alloc_live", &mut self.alloc_live),
            ("alloc_held", &mut self.alloc_held),
        ]
    }

    /// `result name=value ...`: the child's last line.
    fn into_line(mut self) -> String {
        let mut line = String::from("result");
        for (name, value) in self.fields() {
            line.push_str(&format!(" {name}={value}"));
        }
        line
    }

    fn from_line(line: &str) -> Option<Report> {
        let mut report = Report::default();
        let mut words = line.split_whitespace();
        if words.next()? != "result" {
            return None;
        }
        let mut seen = 0;
        for word in words {
            let (name, value) = word.split_once('=')?;
            let (_, slot) = report.fields().into_iter().find(|(n, _)| *n == name)?;
            *slot = value.parse().ok()?;
            seen += 1;
        }
        (seen == report.fields().len()).then_some(report)
    }
}

/// The allocator's own figures now: (bytes in live blocks, bytes held).
fn allocator_counters(mode: Mode) -> (usize, usize) {
    if mode.uses_arenalloc() {
        let s = arenalloc::stats();
        (s.live_bytes, s.mapped_bytes)
    } else {
        // SAFETY: mallinfo2 only reads glibc's statistics.
        let m = unsafe { libc::mallinfo2() };
        (m.uordblks + m.hblkhd, m.arena + m.hblkhd)
    }
}

/// Tells the parent that a phase begins; it timestamps the line on arrival.
/// Rust's stdout is line-buffered, so the line leaves at once.
fn phase(name: &str) {
    println!("phase {name}");
}

/// One run of the workload in this process.
fn child(mode: Mode) {
    USE_ARENALLOC.store(mode.uses_arenalloc(), Ordering::Relaxed);
    let mut report = Report {
        start: rss_now(),
        ..Report::default()
    };
    // Created once, before the first request, as a library would at init.
    let library_arena = (mode == Mode::ArenallocArena)
        .then(|| Arena::new().expect("a dedicated arena for the library"));

    phase("build");
    let t0 = Instant::now();
    let mut rng = Rng::new(workload::SEED);
    let mut app = AppData::default();
    for _ in 0..workload::REQUESTS {
        app.add_history(&mut rng);
        match library_arena {
            Some(arena) => arena.run(|| workload::library_call(&mut rng)),
            None => workload::library_call(&mut rng),
        }
        app.add_icons(&mut rng);
        report.peak = report.peak.max(rss_now());
    }
    report.build_ms = t0.elapsed().as_millis() as usize;
    report.app_bytes = app.bytes();
    report.cache_live = workload::library_cache_bytes();

    phase("free");
    drop(app);
    report.after_free = rss_now();
    if mode.trims() {
        phase("trim");
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        report.after_trim = rss_now();
    } else {
        report.after_trim = report.after_free;
    }
    phase("idle");
    std::thread::sleep(Duration::from_secs(1));
    report.idle_1s = rss_now();
    std::thread::sleep(Duration::from_secs(4));
    report.idle_5s = rss_now();
    (report.alloc_live, report.alloc_held) = allocator_counters(mode);
    println!("{}", report.into_line());
}

/// A finished child run as the parent saw it.
struct Run {
    mode: Mode,
    report: Report,
    /// (seconds since spawn, RSS bytes), sampled by the parent.
    samples: Vec<(f64, usize)>,
    /// (phase name, seconds since spawn), as the child announced them.
    phases: Vec<(String, f64)>,
}

/// Runs one mode in a fresh process, sampling its RSS from outside.
fn run_child(exe: &std::path::Path, mode: Mode) -> Result<Run, String> {
    let watched = sampling::watch(
        Command::new(exe).args(["--child", mode.name()]),
        &format!("the {} child", mode.name()),
        CHILD_TIMEOUT,
    )?;
    let phases = watched.phases();
    let samples = watched.samples;
    let lines = watched.lines;
    let report = lines.iter().find_map(|(_, line)| Report::from_line(line));
    let report = report.ok_or_else(|| format!("no result line from the {} child", mode.name()))?;
    Ok(Run {
        mode,
        report,
        samples,
        phases,
    })
}

/// Where a chart goes: `target/` next to the running binary's profile
/// directory (`target/release/arenalloc-demo`), else `./target`.
fn chart_path(exe: &std::path::Path, file_name: &str) -> PathBuf {
    exe.parent()
        .and_then(|profile| profile.parent())
        .filter(|dir| dir.file_name().is_some_and(|n| n == "target"))
        .map(|dir| dir.to_path_buf())
        .unwrap_or_else(|| PathBuf::from("target"))
        .join(file_name)
}

fn print_table(runs: &[Run]) {
    println!(
        "{:<16} {:>8} {:>8} {:>11} {:>11} {:>9} {:>9} {:>11} {:>9}",
        "mode (MiB)",
        "start",
        "peak",
        "after free",
        "after trim",
        "idle 1 s",
        "idle 5 s",
        "cache live",
        "build ms"
    );
    for run in runs {
        let r = &run.report;
        println!(
            "{:<16} {:>8.1} {:>8.1} {:>11.1} {:>11.1} {:>9.1} {:>9.1} {:>11.1} {:>9}",
            run.mode.name(),
            mib(r.start),
            mib(r.peak),
            mib(r.after_free),
            mib(r.after_trim),
            mib(r.idle_1s),
            mib(r.idle_5s),
            mib(r.cache_live),
            r.build_ms
        );
    }
}

/// The reading of the table, with this run's figures in it. The mechanisms
/// are stated as design facts; every number comes from the runs.
fn explain(runs: &[Run]) {
    let find = |mode: Mode| {
        runs.iter()
            .find(|r| r.mode == mode)
            .map(|r| &r.report)
            .expect("every mode ran")
    };
    let glibc = find(Mode::Glibc);
    let glibc_trim = find(Mode::GlibcTrim);
    let arena_default = find(Mode::Arenalloc);
    let arena_lib = find(Mode::ArenallocArena);
    let retained = |r: &Report| mib(r.idle_5s.saturating_sub(r.start));
    let cache = mib(arena_lib.cache_live);

    println!(
        "\nWhat it shows. The library's cache is {cache:.1} MiB of live data in every mode; what \
         each process still holds 5 s after the free, above its starting RSS:"
    );
    for (mode, r) in [
        (Mode::Glibc, glibc),
        (Mode::GlibcTrim, glibc_trim),
        (Mode::Arenalloc, arena_default),
        (Mode::ArenallocArena, arena_lib),
    ] {
        println!(
            "  {:<16} {:>7.1} MiB ({:>4.0}% of its peak, {:>5.1}x the cache)",
            mode.name(),
            retained(r),
            100.0 * r.idle_5s as f64 / r.peak.max(1) as f64,
            retained(r) / cache.max(f64::MIN_POSITIVE)
        );
    }
    println!(
        "- glibc: free() puts chunks back on glibc's free lists; only free memory at the top of \
         the heap can go back by itself, and cached blocks are spread through the whole heap."
    );
    println!(
        "- glibc+trim: malloc_trim(0) gives back every whole free page inside the heap; pages that \
         hold a cached block (or part of a free chunk's header) stay."
    );
    println!(
        "- arenalloc: no call after the free. The housekeeper thread waits the purge delay \
         ({} ms), then gives back emptied spans and every 4 KiB page inside a span that no live \
         block touches; the cached blocks share spans with the application's small blocks, so \
         the pages they sit on stay.",
        arenalloc::purge_delay().as_millis()
    );
    println!(
        "- arenalloc+arena: no call either. The library allocates in its own arena, so the \
         application's spans empty completely and the housekeeper returns them whole; what \
         stays is the library arena (cache and its partly used spans) and the process's \
         baseline."
    );
    println!(
        "The 'after trim' column is the free's figure again for the modes that make no call; \
         'idle 1 s' and 'idle 5 s' are read without any call in every mode."
    );
    println!("\nThe allocator's own counters after 5 s idle (arenalloc: stats() live_bytes / mapped_bytes; glibc: mallinfo2 uordblks+hblkhd / arena+hblkhd):");
    for run in runs {
        let r = &run.report;
        println!(
            "  {:<16} live {:>7.1} MiB   held from the OS {:>7.1} MiB",
            run.mode.name(),
            mib(r.alloc_live),
            mib(r.alloc_held)
        );
    }
}

/// Writes the RSS-over-time chart; returns where.
fn write_chart(exe: &std::path::Path, runs: &[Run]) -> std::io::Result<PathBuf> {
    let series: Vec<chart::Series> = runs
        .iter()
        .map(|run| {
            let (colour, dash) = run.mode.style();
            chart::Series {
                label: run.mode.name(),
                colour,
                dash,
                points: run.samples.iter().map(|&(t, b)| (t, mib(b))).collect(),
                phases: run.phases.clone(),
            }
        })
        .collect();
    let svg = chart::render(
        "arenalloc demo: RSS of the search-service workload",
        &format!(
            "{} requests, app data freed after the build, library cache kept; \
             sampled from /proc/<pid>/statm every {} ms",
            workload::REQUESTS,
            sampling::SAMPLE_EVERY.as_millis()
        ),
        &series,
    );
    let path = chart_path(exe, "arenalloc-demo-synthetic.svg");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, svg)?;
    Ok(std::fs::canonicalize(&path).unwrap_or(path))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let exe = std::env::current_exe().expect("own path");
    match args.get(1).map(String::as_str) {
        Some("--child") => {
            let name = args.get(2).map_or("", String::as_str);
            let Some(mode) = Mode::from_name(name) else {
                eprintln!("unknown mode {name}");
                std::process::exit(2);
            };
            child(mode);
        }
        Some("--synthetic") => synthetic(&exe),
        None => {
            if let Err(e) = seed_case::run(&exe, &chart_path(&exe, "arenalloc-demo.svg")) {
                eprintln!("arenalloc-demo: {e}");
                std::process::exit(1);
            }
        }
        Some(other) => {
            eprintln!("usage: arenalloc-demo [--synthetic]   (unknown argument {other})");
            std::process::exit(2);
        }
    }
}

/// The synthetic demonstration: four modes of the Rust workload.
fn synthetic(exe: &std::path::Path) {
    println!(
        "Workload: {} requests; each builds {} release-history strings (32-512 B) and {} icons \
         (4-64 KiB), and calls a library that allocates {} blocks of 16-256 B and keeps about \
         1 in {} in a cache for good. Then the application frees its data. One fresh process per \
         mode.",
        workload::REQUESTS,
        workload::RECORDS_PER_REQUEST,
        workload::ICONS_PER_REQUEST,
        workload::LIBRARY_BLOCKS_PER_CALL,
        workload::LIBRARY_KEEP_ONE_IN
    );
    let mut runs = Vec::new();
    for mode in Mode::ALL {
        eprintln!("running {} ...", mode.name());
        match run_child(exe, mode) {
            Ok(run) => runs.push(run),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
    }
    println!(
        "Application data built: {:.1} MiB (counted by the child).\n",
        mib(runs[0].report.app_bytes)
    );
    print_table(&runs);
    explain(&runs);
    match write_chart(exe, &runs) {
        Ok(path) => println!("\nChart of RSS over time: {}", path.display()),
        Err(e) => {
            eprintln!("cannot write the chart: {e}");
            std::process::exit(1);
        }
    }
}
