//! The purger: giving free memory back to the OS, by the background
//! housekeeper and by `trim()` (the engine side of `malloc_trim`).
//!
//! - Pages purged under blocks that are still live read back intact, and
//!   the free blocks parked off the free list come back into use: after
//!   `trim()` (1), after the housekeeper's purge of an idle thread (1b), in
//!   abandoned spans that another thread then adopts (1c).
//! - The housekeeper, claiming the heaps of idle threads while others
//!   churn, never frees or purges a block in use (2).
//! - `ARENALLOC_BACKGROUND=0` keeps freed memory until `trim()`; by default
//!   it goes back within a second with no call, and the housekeeper then
//!   sleeps (3, 4).
//! - A child forked while the housekeeper runs starts its own (5).
//! - What `trim()` returns: a second call with nothing freed meanwhile
//!   returns 0 (6; `malloc_trim` returns `trim() > 0`).
//! - What `trim()` finds: pages freed on fast paths since the heap's last
//!   purge (7), pages freed in a span purged before (8), and it counts the
//!   bytes of the segments it unmaps (9).
//! - `ARENALLOC_STATS=1` prints an exit summary whose figures match the
//!   child's own, and nothing without it (10).
//!
//! Every test measures its own process (RSS, `passes()`, `trim()`'s
//! return), so each runs in a child process, one at a time: the test
//! re-runs this binary (`--exact <test>`) with `PURGE_TEST_CHILD=<test>` and
//! the purger settings it needs in the environment (read by the engine at
//! its first start attempt). `run_in_child` of the support library sets only
//! one variable, hence `in_child` here.
//!
//! Freed memory that no purge has seen stays resident only where nothing
//! frees it on the way: a thread that frees all its blocks itself retires
//! emptied spans and unmaps emptied segments at once. So the RSS tests free
//! the blocks of an idle thread from another thread (remote frees): they
//! sit in the idle thread's spans until a purge claims its heap.
//!
//! This binary's global allocator is `ArenaAlloc`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use arenalloc_engine as engine;
use arenalloc_tests::{
    contains, map_page_at, pattern, rss_bytes, run_in_child_timed, stuck_process_report, Rng,
};
use engine::purger;

#[global_allocator]
static GLOBAL: arenalloc::ArenaAlloc = arenalloc::ArenaAlloc;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Makes a re-run of this binary the child of the named test.
const CHILD_VAR: &str = "PURGE_TEST_CHILD";
/// A child that has not finished by then is stuck: killed, test failed.
/// (Above `PURGE_DEADLINE` plus the work around it on a loaded machine.)
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `background_off` leaves the process idle before it checks that
/// nothing was given back (six default purge delays: enough for a
/// housekeeper that should not run to show itself).
const IDLE: Duration = Duration::from_millis(1500);
/// How long the tests that wait for the housekeeper's purge wait at most.
/// It takes about 1 s unloaded (an idle heap is purged on the second pass
/// that sees it idle); the tests poll, so a slow machine only makes them
/// wait longer, and an engine that never purges fails at the deadline.
const PURGE_DEADLINE: Duration = Duration::from_secs(30);

// ------------------------------------------------------------ child runs

/// The children run one at a time: each measures the machine's memory and
/// CPU time as much as its own.
static ONE_CHILD_AT_A_TIME: Mutex<()> = Mutex::new(());

/// In the child (`PURGE_TEST_CHILD=<name>`): runs `body` and prints
/// `<name>: done`. In the test process: runs this binary again for `name`
/// alone with `env` (and no other `ARENALLOC_` purger setting) and checks
/// that the child succeeded.
fn in_child(name: &str, env: &[(&str, &str)], body: fn()) {
    if std::env::var(CHILD_VAR).as_deref() == Ok(name) {
        body();
        println!("{name}: done");
        return;
    }
    let started = Instant::now();
    let (status, stdout, stderr) = run_child(name, env);
    let report = format!(
        "child {name} ({env:?}): {status} after {:.1} s\n--- child stdout:\n{}\n--- child stderr:\n{}",
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    assert!(status == "exit status: 0", "the child failed\n{report}");
    assert!(
        contains(&stdout, &format!("{name}: done")),
        "the child did not run the test\n{report}"
    );
    eprintln!("{report}");
}

/// Runs `<this binary> <name> --exact` with `env`, alone (one child at a
/// time); returns how it ended and its output. Kills it (and reports where
/// it hung) after `CHILD_TIMEOUT`.
fn run_child(name: &str, env: &[(&str, &str)]) -> (String, Vec<u8>, Vec<u8>) {
    let _one = ONE_CHILD_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut env = env.to_vec();
    env.push((CHILD_VAR, name));
    let run = run_in_child_timed(
        name,
        &env,
        &[
            "ARENALLOC_BACKGROUND",
            "ARENALLOC_PURGE_DELAY_MS",
            "ARENALLOC_PURGE_SLICE_US",
        ],
        CHILD_TIMEOUT,
    );
    (run.status, run.stdout, run.stderr)
}

/// Reads the RSS every 20 ms, without allocating (a slow path would keep
/// the polling thread's heap from counting as idle), until `done(rss)` or
/// `deadline` has passed; returns the last reading and the time waited.
fn wait_for_rss(deadline: Duration, done: impl Fn(usize) -> bool) -> (usize, Duration) {
    let started = Instant::now();
    loop {
        let rss = rss_quiet();
        if done(rss) || started.elapsed() >= deadline {
            return (rss, started.elapsed());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- blocks

/// A live block with a pattern: address, size, seed.
#[derive(Clone, Copy, Debug)]
struct Held {
    addr: usize,
    size: usize,
    seed: u64,
}

impl Held {
    /// Allocates `size` bytes and fills all of them with the pattern of
    /// `seed`.
    fn new(size: usize, seed: u64) -> Held {
        let p = engine::malloc(size);
        assert!(!p.is_null(), "malloc({size}) failed");
        // SAFETY: `size` bytes at `p`, ours.
        unsafe { pattern::fill(p, size, seed) };
        Held {
            addr: p as usize,
            size,
            seed,
        }
    }

    /// Panics, saying what it found, unless the block still holds its
    /// pattern.
    fn check(&self, what: &str) {
        let p = self.addr as *const u8;
        // SAFETY: a live block of `size` bytes.
        if let Err(offset) = unsafe { pattern::check(p, self.size, self.seed) } {
            // SAFETY: as above (the word is clipped to the block).
            let page_zero = unsafe {
                let page = (self.addr + offset) & !4095;
                let from = page.max(self.addr);
                let to = (page + 4096).min(self.addr + self.size);
                pattern::first_nonzero(from as *const u8, to - from).is_none()
            };
            panic!(
                "{what}: block {:#x} ({} B, seed {}) is corrupt at offset {offset}{}",
                self.addr,
                self.size,
                self.seed,
                if page_zero {
                    " (its bytes in that page are all zero: the page was purged under a live block)"
                } else {
                    ""
                }
            );
        }
    }

    /// Checks the pattern, then frees the block.
    fn check_and_free(self, what: &str) {
        self.check(what);
        // SAFETY: a live block, freed once.
        unsafe { engine::free(self.addr as *mut u8) };
    }
}

/// Frees a live block of ours.
fn free(addr: usize) {
    // SAFETY: callers pass live blocks and forget them.
    unsafe { engine::free(addr as *mut u8) }
}

/// The size of block `i` of the sparse-survivor workloads: 16 to 48 B.
/// `n` blocks of `size` bytes from the engine, filled with a byte pattern.
fn alloc_filled(n: usize, size: usize) -> Vec<usize> {
    (0..n)
        .map(|_| {
            let p = engine::malloc(size);
            assert!(!p.is_null());
            // SAFETY: `size` bytes at `p`.
            unsafe { p.write_bytes(9, size) };
            p as usize
        })
        .collect()
}

/// Frees the blocks whose index `pick` chooses.
fn free_where(blocks: &[usize], pick: impl Fn(usize) -> bool) {
    for (i, &p) in blocks.iter().enumerate() {
        if pick(i) {
            free(p);
        }
    }
}

fn tiny_size(i: usize) -> usize {
    16 + (pattern::word(0x512e, i) % 33) as usize
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / MIB as f64
}

/// Blocks of a thread that stays alive and idle (outside the allocator,
/// blocked on a channel) until [`IdleOwner::exit`].
struct IdleOwner {
    exit: mpsc::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl IdleOwner {
    /// Starts a thread that allocates at least `total` bytes of small
    /// blocks (16 B to 1 KiB, every byte written) and returns their
    /// addresses; the thread then idles.
    fn allocate(total: usize) -> (Vec<usize>, IdleOwner) {
        let (blocks_tx, blocks_rx) = mpsc::channel();
        let (exit, exit_rx) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            let mut rng = Rng::new(0x1d1e);
            let mut blocks = Vec::with_capacity(total / 200);
            let mut bytes = 0;
            while bytes < total {
                let size = rng.log_range(16, KIB);
                let p = engine::malloc(size);
                assert!(!p.is_null(), "malloc({size}) failed");
                // SAFETY: `size` bytes at `p`, ours.
                unsafe { p.write_bytes(0xa7, size) };
                blocks.push(p as usize);
                bytes += size;
            }
            blocks_tx.send(blocks).unwrap();
            // Idle, outside the allocator, until told to exit.
            let _ = exit_rx.recv();
        });
        let blocks = blocks_rx.recv().expect("the owner thread died");
        (blocks, IdleOwner { exit, thread })
    }

    fn exit(self) {
        let _ = self.exit.send(());
        self.thread.join().expect("the owner thread panicked");
    }
}

/// RSS before and after `IdleOwner::allocate(200 MB)` and the remote frees
/// of all its blocks: (start, peak, after the frees, the idle owner).
fn allocate_200mb_and_free_remotely() -> (usize, usize, usize, IdleOwner) {
    let start = rss_bytes();
    let (blocks, owner) = IdleOwner::allocate(200 * MIB);
    let peak = rss_bytes();
    for &addr in &blocks {
        free(addr);
    }
    drop(blocks);
    let after_free = rss_bytes();
    (start, peak, after_free, owner)
}

// ------------------------------------------------- 1. purged pages are fine

#[test]
fn purged_pages_under_live_blocks_read_back_and_parked_blocks_are_reused() {
    in_child(
        "purged_pages_under_live_blocks_read_back_and_parked_blocks_are_reused",
        &[("ARENALLOC_BACKGROUND", "0")],
        sparse_survivors_after_trim,
    );
}

/// 2M blocks of 16-48 B, one in 500 kept: trim gives back the pages between
/// the survivors and parks the free blocks in them; the survivors keep
/// their bytes, and 2M new blocks reuse the parked blocks (no new memory)
/// without overlapping the survivors or each other.
fn sparse_survivors_after_trim() {
    const N: usize = 2_000_000;
    const KEEP_EVERY: usize = 500;
    assert!(!purger::background_enabled());
    let mut blocks: Vec<Held> = Vec::with_capacity(N);
    for i in 0..N {
        blocks.push(Held::new(tiny_size(i), i as u64));
    }
    let mapped_peak = engine::stats().mapped_bytes;
    let mut survivors = Vec::with_capacity(N / KEEP_EVERY);
    for (i, &b) in blocks.iter().enumerate() {
        if i % KEEP_EVERY == 0 {
            survivors.push(b);
        } else {
            free(b.addr);
        }
    }
    let rss_before = rss_bytes();
    let released = arenalloc::trim();
    let rss_after = rss_bytes();
    println!(
        "trim released {:.1} MiB; RSS {:.1} -> {:.1} MiB",
        mib(released),
        mib(rss_before),
        mib(rss_after)
    );
    // ~78 MB of blocks; with survivors 8-24 KiB apart, ~3/4 of the pages
    // hold none.
    assert!(
        released >= 40 * MIB,
        "trim released only {:.1} MiB",
        mib(released)
    );
    let fell = rss_before.saturating_sub(rss_after);
    assert!(
        fell >= released / 2,
        "RSS fell by {:.1} MiB, trim said {:.1} MiB",
        mib(fell),
        mib(released)
    );
    for s in &survivors {
        s.check("survivor after trim");
    }

    // Round 2 reuses the spans: parked blocks come back as the free lists
    // run dry, in purged (zero-filled) pages.
    blocks.clear();
    for i in 0..N {
        blocks.push(Held::new(tiny_size(i + 7), (N + i) as u64));
    }
    let mapped_round2 = engine::stats().mapped_bytes;
    for b in &blocks {
        b.check("round-2 block");
    }
    for s in &survivors {
        s.check("survivor after round 2 allocated");
    }
    assert!(
        mapped_round2 <= mapped_peak + 8 * MIB,
        "round 2 mapped {:.1} MiB more than round 1's peak: the parked blocks were not reused",
        mib(mapped_round2 - mapped_peak)
    );
    for b in blocks.drain(..) {
        b.check_and_free("round-2 block");
    }
    for s in &survivors {
        s.check("survivor after round 2 freed");
    }
    // And once more through a purge of the re-filled spans.
    let again = arenalloc::trim();
    for s in survivors {
        s.check_and_free("survivor after the second trim");
    }
    println!(
        "round 2 mapped {:.1} MiB (round 1 peak {:.1} MiB); second trim {:.1} MiB",
        mib(mapped_round2),
        mib(mapped_peak),
        mib(again)
    );
}

#[test]
fn housekeeper_purges_pages_between_the_survivors_of_an_idle_thread() {
    in_child(
        "housekeeper_purges_pages_between_the_survivors_of_an_idle_thread",
        &[],
        sparse_survivors_idle,
    );
}

/// The same with the purge cut into one step per lock hold
/// (`ARENALLOC_PURGE_SLICE_US=0`): a purge that lets go of the lock after
/// every span goes on where it stopped and still reaches every page.
#[test]
fn a_purge_cut_after_every_step_still_purges_every_free_page() {
    in_child(
        "a_purge_cut_after_every_step_still_purges_every_free_page",
        &[("ARENALLOC_PURGE_SLICE_US", "0")],
        sparse_survivors_idle,
    );
}

/// Test 1's survivors with the housekeeper on and no trim: while the
/// thread sleeps, its heap is claimed and the pages between the survivors
/// go back.
fn sparse_survivors_idle() {
    const N: usize = 2_000_000;
    assert!(purger::background_enabled());
    let mut blocks: Vec<Held> = Vec::with_capacity(N);
    for i in 0..N {
        blocks.push(Held::new(tiny_size(i), i as u64));
    }
    let mut survivors = Vec::with_capacity(N / 500);
    for (i, &b) in blocks.iter().enumerate() {
        if i % 500 == 0 {
            survivors.push(b);
        } else {
            free(b.addr);
        }
    }
    let purged_before = purger::purged_bytes();
    let rss_before = rss_quiet();
    // This thread idles (polling outside the allocator) until the pages
    // went back, or the deadline: the assertion below then fails.
    let (rss_after, waited) = wait_for_rss(PURGE_DEADLINE, |rss| {
        rss_before.saturating_sub(rss) >= 40 * MIB
    });
    let purged = purger::purged_bytes() - purged_before;
    println!(
        "idle {waited:?}: RSS {:.1} -> {:.1} MiB, housekeeper purged {:.1} MiB in {} passes",
        mib(rss_before),
        mib(rss_after),
        mib(purged),
        purger::passes()
    );
    for s in &survivors {
        s.check("survivor after the housekeeper's purge");
    }
    assert!(
        rss_before.saturating_sub(rss_after) >= 40 * MIB,
        "RSS fell by {:.1} MiB only (purged {:.1} MiB)",
        mib(rss_before.saturating_sub(rss_after)),
        mib(purged)
    );
    // The parked blocks serve new allocations of the woken thread.
    blocks.clear();
    for i in 0..N {
        blocks.push(Held::new(tiny_size(i + 3), (N + i) as u64));
    }
    for b in blocks.drain(..) {
        b.check_and_free("block allocated after the purge");
    }
    for s in survivors {
        s.check_and_free("survivor at the end");
    }
}

#[test]
fn abandoned_spans_are_purged_then_adopted_intact() {
    in_child(
        "abandoned_spans_are_purged_then_adopted_intact",
        &[("ARENALLOC_BACKGROUND", "0")],
        abandoned_then_adopted,
    );
}

/// A thread allocates 1M blocks of 16-48 B, frees all but one in 500 and
/// exits: its spans, still holding the survivors, are abandoned. trim()
/// purges them (the arena's abandoned list, no heap); then this thread
/// allocates as many blocks, adopting the spans and their parked blocks.
fn abandoned_then_adopted() {
    const N: usize = 1_000_000;
    let survivors = thread::spawn(|| {
        let blocks: Vec<Held> = (0..N).map(|i| Held::new(tiny_size(i), i as u64)).collect();
        let mut survivors = Vec::with_capacity(N / 500);
        for (i, b) in blocks.into_iter().enumerate() {
            if i % 500 == 0 {
                survivors.push(b);
            } else {
                free(b.addr);
            }
        }
        survivors
    })
    .join()
    .unwrap();
    let mapped_abandoned = engine::stats().mapped_bytes;
    let rss_before = rss_bytes();
    let released = arenalloc::trim();
    let rss_after = rss_bytes();
    println!(
        "trim of the abandoned spans released {:.1} MiB; RSS {:.1} -> {:.1} MiB",
        mib(released),
        mib(rss_before),
        mib(rss_after)
    );
    for s in &survivors {
        s.check("survivor in an abandoned span after trim");
    }
    assert!(
        released >= 20 * MIB && rss_before.saturating_sub(rss_after) >= 20 * MIB,
        "trim released {:.1} MiB, RSS fell {:.1} MiB",
        mib(released),
        mib(rss_before.saturating_sub(rss_after))
    );
    let mut blocks: Vec<Held> = Vec::with_capacity(N);
    for i in 0..N {
        blocks.push(Held::new(tiny_size(i + 11), (N + i) as u64));
    }
    let mapped_adopted = engine::stats().mapped_bytes;
    for b in &blocks {
        b.check("block allocated from adopted spans");
    }
    for s in &survivors {
        s.check("survivor after its span was adopted");
    }
    assert!(
        mapped_adopted <= mapped_abandoned + 8 * MIB,
        "{:.1} MiB mapped with the abandoned spans, {:.1} MiB after as many blocks again: \
         the purged abandoned spans were not reused",
        mib(mapped_abandoned),
        mib(mapped_adopted)
    );
    for b in blocks {
        b.check_and_free("block allocated from adopted spans");
    }
    for s in survivors {
        s.check_and_free("survivor at the end");
    }
}

// ------------------------------------- 2. no block in use is ever purged

#[test]
fn housekeeper_never_frees_or_purges_a_block_in_use() {
    in_child(
        "housekeeper_never_frees_or_purges_a_block_in_use",
        &[("ARENALLOC_PURGE_DELAY_MS", "0")],
        churn_with_purges,
    );
}

/// The same with the purge letting go of the arena's lock after every step,
/// so the churning threads run between the steps of one purge.
#[test]
fn a_purge_cut_after_every_step_never_frees_or_purges_a_block_in_use() {
    in_child(
        "a_purge_cut_after_every_step_never_frees_or_purges_a_block_in_use",
        &[
            ("ARENALLOC_PURGE_DELAY_MS", "0"),
            ("ARENALLOC_PURGE_SLICE_US", "0"),
        ],
        churn_with_purges,
    );
}

const WORKERS: usize = 4;
const CHURN: Duration = Duration::from_secs(5);
/// Live blocks a worker keeps at most.
const MAX_HELD: usize = 1500;

/// A churning thread: mixed sizes, patterns checked before every free, a
/// quarter of its frees remote (blocks go to another worker through a
/// channel), and for workers 0 and 1 naps of 5-30 ms with all their blocks
/// live, during which the housekeeper (delay 0) claims their heap.
fn churn_worker(
    id: usize,
    stop: Arc<AtomicBool>,
    inbox: mpsc::Receiver<Held>,
    outboxes: Vec<mpsc::Sender<Held>>,
    naps: Arc<AtomicUsize>,
) {
    let mut rng = Rng::new(0xc4a2 + id as u64);
    let mut held: Vec<Held> = Vec::with_capacity(MAX_HELD);
    let mut foreign: Vec<Held> = Vec::new();
    let mut seed = (id as u64) << 48;
    let mut ops = 0usize;
    let check_all = |held: &[Held], foreign: &[Held], what: &str| {
        for b in held.iter().chain(foreign) {
            b.check(what);
        }
    };
    while !stop.load(Ordering::Relaxed) {
        ops += 1;
        while let Ok(b) = inbox.try_recv() {
            if rng.one_in(2) {
                b.check_and_free("block received from another worker");
            } else {
                b.check("block received from another worker");
                foreign.push(b);
            }
        }
        match rng.below(100) {
            0..=44 => {
                let size = if rng.one_in(10) {
                    rng.log_range(4 * KIB + 1, 256 * KIB)
                } else {
                    rng.log_range(16, 4 * KIB)
                };
                seed += 1;
                held.push(Held::new(size, seed));
                if held.len() > MAX_HELD {
                    held.swap_remove(rng.below(held.len()))
                        .check_and_free("held block");
                }
            }
            45..=74 if !held.is_empty() => {
                held.swap_remove(rng.below(held.len()))
                    .check_and_free("held block");
            }
            75..=89 if !held.is_empty() => {
                let b = held.swap_remove(rng.below(held.len()));
                b.check("held block before sending");
                let to = (id + 1 + rng.below(WORKERS - 1)) % WORKERS;
                let _ = outboxes[to].send(b);
            }
            90..=94 if id < 2 => {
                check_all(&held, &foreign, "held block before a nap");
                thread::sleep(Duration::from_millis(rng.range(5, 30) as u64));
                check_all(&held, &foreign, "held block after a nap");
                naps.fetch_add(1, Ordering::Relaxed);
            }
            _ if !foreign.is_empty() => {
                foreign
                    .swap_remove(rng.below(foreign.len()))
                    .check_and_free("block kept from another worker");
            }
            _ => {}
        }
        if ops.is_multiple_of(512) {
            check_all(&held, &foreign, "held block (periodic check)");
        }
    }
    drop(outboxes);
    for b in held.into_iter().chain(foreign) {
        b.check_and_free("held block at the end");
    }
    // What is still in flight, until every other worker has stopped.
    for b in inbox {
        b.check_and_free("block received at the end");
    }
}

fn churn_with_purges() {
    assert_eq!(purger::purge_delay_ms(), 0, "ARENALLOC_PURGE_DELAY_MS=0");
    assert!(purger::background_enabled());
    let stop = Arc::new(AtomicBool::new(false));
    let naps = Arc::new(AtomicUsize::new(0));
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..WORKERS).map(|_| mpsc::channel()).unzip();
    let workers: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(id, inbox)| {
            let outboxes = senders.clone();
            let (stop, naps) = (stop.clone(), naps.clone());
            thread::Builder::new()
                .name(format!("churn-{id}"))
                .spawn(move || churn_worker(id, stop, inbox, outboxes, naps))
                .unwrap()
        })
        .collect();
    drop(senders);
    let trimmer = {
        let stop = stop.clone();
        thread::spawn(move || {
            let (mut calls, mut released) = (0usize, 0usize);
            while !stop.load(Ordering::Relaxed) {
                released += arenalloc::trim();
                calls += 1;
                thread::sleep(Duration::from_millis(2));
            }
            (calls, released)
        })
    };
    thread::sleep(CHURN);
    stop.store(true, Ordering::Relaxed);
    let mut failed = Vec::new();
    for (id, w) in workers.into_iter().enumerate() {
        if let Err(panic) = w.join() {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("worker {id}: {message}"));
        }
    }
    let (trims, trimmed) = trimmer.join().unwrap();
    let (passes, purged) = (purger::passes(), purger::purged_bytes());
    println!(
        "{passes} housekeeper passes, {:.1} MiB purged in all ({trims} trims: {:.1} MiB), {} naps",
        mib(purged),
        mib(trimmed),
        naps.load(Ordering::Relaxed)
    );
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert!(passes > 0, "the housekeeper made no pass");
    assert!(purged > 0, "nothing was purged");
    assert!(naps.load(Ordering::Relaxed) > 0);
}

// ------------------------------------------ 3. background off: trim only

#[test]
fn background_off_keeps_freed_memory_until_trim() {
    in_child(
        "background_off_keeps_freed_memory_until_trim",
        &[("ARENALLOC_BACKGROUND", "0")],
        background_off,
    );
}

fn background_off() {
    assert!(!purger::background_enabled(), "ARENALLOC_BACKGROUND=0");
    let (start, peak, after_free, owner) = allocate_200mb_and_free_remotely();
    thread::sleep(IDLE);
    let idle = rss_bytes();
    let passes = purger::passes();
    let released = arenalloc::trim();
    let trimmed = rss_bytes();
    owner.exit();
    println!(
        "RSS MiB: start {:.1}, peak {:.1}, after free {:.1}, idle {:.1}, after trim {:.1} (trim said {:.1})",
        mib(start),
        mib(peak),
        mib(after_free),
        mib(idle),
        mib(trimmed),
        mib(released)
    );
    let grown = peak - start;
    assert!(grown >= 200 * MIB, "the blocks took {:.1} MiB", mib(grown));
    assert_eq!(passes, 0, "the housekeeper ran although switched off");
    assert!(
        idle >= start + grown * 8 / 10,
        "RSS fell from {:.1} to {:.1} MiB with the housekeeper off and no trim",
        mib(peak),
        mib(idle)
    );
    assert!(released > 0, "trim released nothing");
    assert!(
        trimmed <= start + grown / 10,
        "RSS after trim {:.1} MiB, started at {:.1}",
        mib(trimmed),
        mib(start)
    );
}

// ------------------------------------------------- 4. background default

#[test]
fn background_default_returns_freed_memory_without_a_call() {
    in_child(
        "background_default_returns_freed_memory_without_a_call",
        &[],
        background_default,
    );
}

fn background_default() {
    assert!(purger::background_enabled());
    assert_eq!(purger::purge_delay_ms(), purger::DEFAULT_PURGE_DELAY_MS);
    let (start, peak, after_free, owner) = allocate_200mb_and_free_remotely();
    let grown = peak - start;
    let (idle, waited) = wait_for_rss(PURGE_DEADLINE, |rss| rss <= start + grown / 10);
    // Nothing is pending now: the housekeeper goes to sleep (no CPU when
    // idle). A pass may still be under way or due from the purge just
    // seen, hence "at most one" per window; one that kept making passes
    // makes two or more in every window (250 ms apart) and fails.
    let quiet_deadline = Instant::now() + Duration::from_secs(10);
    let (passes_idle, passes_later) = loop {
        let before = purger::passes();
        thread::sleep(Duration::from_millis(600));
        let after = purger::passes();
        if after <= before + 1 || Instant::now() >= quiet_deadline {
            break (before, after);
        }
    };
    owner.exit();
    println!(
        "RSS MiB: start {:.1}, peak {:.1}, after free {:.1}, after {waited:?} idle {:.1}; passes {passes_idle} then {passes_later}",
        mib(start),
        mib(peak),
        mib(after_free),
        mib(idle)
    );
    assert!(grown >= 200 * MIB, "the blocks took {:.1} MiB", mib(grown));
    assert!(passes_idle > 0, "the housekeeper made no pass");
    assert!(
        idle <= start + grown / 10,
        "RSS {:.1} MiB after {waited:?} idle, started at {:.1}, peak {:.1}",
        mib(idle),
        mib(start),
        mib(peak)
    );
    assert!(
        passes_later <= passes_idle + 1,
        "the housekeeper kept making passes in an idle process (still {passes_idle} -> {passes_later} \
         in 600 ms after 10 s)"
    );
}

// ------------------------------------------------------------- 5. fork

#[test]
fn child_forked_while_the_housekeeper_runs_starts_its_own() {
    in_child(
        "child_forked_while_the_housekeeper_runs_starts_its_own",
        &[],
        fork_with_housekeeper,
    );
}

/// Exit statuses of the forked child.
const FORK_OK: i32 = 0;
const FORK_RSS_STAYED: i32 = 20;
const FORK_NO_PASS: i32 = 21;
const FORK_PANICKED: i32 = 22;

/// Writes to stderr without locks (std's stderr lock may have been held by
/// a thread that does not exist in a forked child).
fn raw_eprint(text: &str) {
    // SAFETY: writing a valid buffer to fd 2.
    unsafe { libc::write(2, text.as_ptr().cast(), text.len()) };
}

fn fork_with_housekeeper() {
    // Start the housekeeper: more than START_AFTER_MAPPED mapped, then
    // freed (pending work).
    let blocks: Vec<usize> = (0..(16 * MIB / 64))
        .map(|_| {
            let p = engine::malloc(64);
            assert!(!p.is_null());
            // SAFETY: 64 bytes at `p`.
            unsafe { p.write_bytes(1, 64) };
            p as usize
        })
        .collect();
    for &p in &blocks {
        free(p);
    }
    drop(blocks);
    let deadline = Instant::now() + Duration::from_secs(5);
    while purger::passes() == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let passes_at_fork = purger::passes();
    assert!(passes_at_fork > 0, "the housekeeper did not start");

    // SAFETY: the child runs allocator calls, std threads and channels (all
    // through arenalloc, which is fork-safe), and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let status = std::panic::catch_unwind(|| {
            let (start, peak, after_free, owner) = allocate_200mb_and_free_remotely();
            let limit = start + (peak - start) / 10;
            let (idle, _) = wait_for_rss(PURGE_DEADLINE, |rss| {
                rss <= limit && purger::passes() > passes_at_fork
            });
            let passes = purger::passes();
            owner.exit();
            raw_eprint(&format!(
                "forked child: RSS MiB start {:.1}, peak {:.1}, after free {:.1}, idle {:.1}; passes {passes_at_fork} at fork, {passes} now\n",
                mib(start),
                mib(peak),
                mib(after_free),
                mib(idle)
            ));
            if passes <= passes_at_fork {
                FORK_NO_PASS
            } else if idle > limit {
                FORK_RSS_STAYED
            } else {
                FORK_OK
            }
        })
        .unwrap_or(FORK_PANICKED);
        // SAFETY: leaves the child at once (no atexit handlers, no
        // destructors of the parent's state).
        unsafe { libc::_exit(status) };
    }
    // The child waits up to PURGE_DEADLINE for its purge.
    let wait = PURGE_DEADLINE + Duration::from_secs(30);
    let deadline = Instant::now() + wait;
    let mut status = 0;
    loop {
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        assert_eq!(r, 0, "waitpid: {}", std::io::Error::last_os_error());
        if Instant::now() >= deadline {
            let stuck = stuck_process_report(pid);
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("forked child still running after {wait:?} (killed)\n{stuck}");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let what = if !libc::WIFEXITED(status) {
        format!("did not exit (wait status {status:#x})")
    } else {
        match libc::WEXITSTATUS(status) {
            FORK_OK => return,
            FORK_RSS_STAYED => "its RSS did not fall back near where it started".to_string(),
            FORK_NO_PASS => "no housekeeper pass happened in it".to_string(),
            FORK_PANICKED => "it panicked".to_string(),
            code => format!("exited with {code}"),
        }
    };
    panic!("forked child: {what}");
}

// ------------------------------------------------- 6. what trim() returns

#[test]
fn second_trim_with_nothing_freed_returns_zero() {
    in_child(
        "second_trim_with_nothing_freed_returns_zero",
        &[("ARENALLOC_BACKGROUND", "0")],
        trim_return_values,
    );
}

/// Trim's return values with the purge cut after every step: the pieces
/// add up to what one piece would release, and a second trim finds nothing.
#[test]
fn a_trim_cut_after_every_step_returns_the_same() {
    in_child(
        "a_trim_cut_after_every_step_returns_the_same",
        &[
            ("ARENALLOC_BACKGROUND", "0"),
            ("ARENALLOC_PURGE_SLICE_US", "0"),
        ],
        trim_return_values,
    );
}

/// `malloc_trim` returns `trim() > 0`. Does a forced pass with nothing
/// freed since the last one release 0? Yes: heaps whose activity and the
/// remote-free epoch did not change are skipped, spans purged before keep
/// their parked blocks (and are not purged again), discarded free slices are
/// no longer dirty, the spare segment and the large cache are gone.
fn trim_return_values() {
    const N: usize = 500_000;
    let blocks: Vec<Held> = (0..N).map(|i| Held::new(tiny_size(i), i as u64)).collect();
    let large: Vec<usize> = (0..4)
        .map(|_| {
            let p = engine::malloc(MIB);
            assert!(!p.is_null());
            // SAFETY: 1 MiB at `p`.
            unsafe { p.write_bytes(3, MIB) };
            p as usize
        })
        .collect();
    let mut survivors = Vec::new();
    for (i, b) in blocks.into_iter().enumerate() {
        if i % 500 == 0 {
            survivors.push(b);
        } else {
            free(b.addr);
        }
    }
    for p in large {
        free(p);
    }
    let first = arenalloc::trim();
    let second = arenalloc::trim();
    let third = arenalloc::trim();
    // One large block freed into the cache: the next trim unmaps it.
    let p = engine::malloc(MIB);
    assert!(!p.is_null());
    // SAFETY: 1 MiB at `p`.
    unsafe { p.write_bytes(5, MIB) };
    free(p as usize);
    let after_large = arenalloc::trim();
    let after_that = arenalloc::trim();
    println!(
        "trim: {:.1} MiB, then {second} B, {third} B; after a freed 1 MiB block {after_large} B, then {after_that} B",
        mib(first)
    );
    assert!(first >= 8 * MIB, "first trim released {first} B");
    assert_eq!(second, 0, "a second trim with nothing freed released bytes");
    assert_eq!(third, 0, "a third trim with nothing freed released bytes");
    assert!(
        after_large >= MIB,
        "trim after freeing a 1 MiB block released {after_large} B"
    );
    assert_eq!(after_that, 0, "trim right after that released bytes");
    for s in survivors {
        s.check_and_free("survivor");
    }
}

// -------------------------------------------- 7-9. what trim() finds

/// Block size of tests 7 and 8: a class of its own (80 B) that nothing else
/// in the child uses much, 819 blocks per 64 KiB span.
const SIZE_80: usize = 80;

/// RSS without allocating (a `String` here could take a slow path).
fn rss_quiet() -> usize {
    engine::os::resident_bytes().expect("/proc/self/statm")
}

/// One slow path of the calling thread's heap: a block of a class this
/// thread has no span of yet.
fn one_slow_path() {
    let p = engine::malloc(40_000);
    assert!(!p.is_null());
    free(p as usize);
}

#[test]
fn trim_finds_pages_freed_on_fast_paths_since_the_last_trim() {
    in_child(
        "trim_finds_pages_freed_on_fast_paths_since_the_last_trim",
        &[("ARENALLOC_BACKGROUND", "0")],
        fast_path_frees_after_trim,
    );
}

/// 1M blocks of 80 B; a few freed in every span (each span's first free
/// takes it off the full list: a slow path); trim; then all but one in 400
/// freed, all on the fast path; trim must give back their pages.
fn fast_path_frees_after_trim() {
    const N: usize = 1_000_000;
    let blocks = alloc_filled(N, SIZE_80);
    free_where(&blocks, |i| i % 128 == 1);
    let first = arenalloc::trim();
    let rss_before = rss_quiet();
    free_where(&blocks, |i| i % 128 != 1 && i % 400 != 0);
    let released = arenalloc::trim();
    let rss_after = rss_quiet();
    one_slow_path();
    let after_slow_path = arenalloc::trim();
    let rss_end = rss_quiet();
    println!(
        "first trim {:.1} MiB; after the fast-path frees trim {:.1} MiB (RSS {:.1} -> {:.1} MiB); \
         after one slow path trim {:.1} MiB (RSS {:.1} MiB)",
        mib(first),
        mib(released),
        mib(rss_before),
        mib(rss_after),
        mib(after_slow_path),
        mib(rss_end)
    );
    // ~80 MB of blocks, survivors 32 KB apart: ~7/8 of the pages are free.
    assert!(
        released >= 40 * MIB && rss_before - rss_after >= 40 * MIB,
        "trim after ~70 MB of fast-path frees released {:.1} MiB (RSS fell {:.1} MiB); \
         after one unrelated slow path the next trim released {:.1} MiB",
        mib(released),
        mib(rss_before.saturating_sub(rss_after)),
        mib(after_slow_path)
    );
}

#[test]
fn trim_finds_pages_freed_in_a_span_purged_before() {
    in_child(
        "trim_finds_pages_freed_in_a_span_purged_before",
        &[("ARENALLOC_BACKGROUND", "0")],
        frees_in_purged_spans,
    );
}

/// 1M blocks of 80 B, one in 100 kept (about every other page holds one);
/// trim; then nine in ten of the survivors freed, and a slow path so the
/// heap counts as changed; trim must give back the pages that emptied.
fn frees_in_purged_spans() {
    const N: usize = 1_000_000;
    let blocks = alloc_filled(N, SIZE_80);
    free_where(&blocks, |i| i % 100 != 0);
    let first = arenalloc::trim();
    let rss_before = rss_quiet();
    free_where(&blocks, |i| i % 100 == 0 && i % 1000 != 0);
    one_slow_path();
    let released = arenalloc::trim();
    let rss_after = rss_quiet();
    let fell = rss_before.saturating_sub(rss_after);
    println!(
        "first trim {:.1} MiB; after freeing 9/10 of the survivors trim {:.1} MiB (RSS {:.1} -> {:.1} MiB)",
        mib(first),
        mib(released),
        mib(rss_before),
        mib(rss_after)
    );
    // Survivors 8 KB apart before (about every other page kept), 80 KB
    // apart after (one page in 20): ~35 MB more pages are free. What does
    // go back is the spans left with no survivor at all (~1 in 5: ~7 MB).
    // (`released` counts whole 64 KiB slices of those spans, pages purged
    // before included: RSS says what really went back.)
    assert!(
        fell >= 20 * MIB,
        "trim after freeing 9/10 of the survivors in spans a trim purged before: RSS fell \
         {:.1} MiB (trim said {:.1} MiB)",
        mib(fell),
        mib(released)
    );
}

#[test]
fn frees_into_the_current_span_take_the_fast_path_again_after_a_trim_parked_its_blocks() {
    in_child(
        "frees_into_the_current_span_take_the_fast_path_again_after_a_trim_parked_its_blocks",
        &[("ARENALLOC_BACKGROUND", "0")],
        || thread::spawn(current_span_after_trim).join().unwrap(),
    );
}

/// In a fresh thread (so its 64-byte span is new and current): 256 blocks
/// of 64 B, the last 128 (two pages) freed; a trim gives those pages back
/// and parks their blocks, so every free into the span takes the checked
/// path. The owner then frees blocks of the span and allocates again, as a
/// loop resuming after an idle spell does: after 64 such frees its frees
/// must take the fast path again (the span lets frees below its capacity
/// through), not the checked one for as long as the blocks stay parked;
/// after one, the blocks stay parked.
fn current_span_after_trim() {
    let blocks = alloc_filled(256, 64);
    // SAFETY: the blocks are live, so their span is.
    let span = unsafe { &*span_holding(blocks[0]) };
    assert!(
        blocks
            .iter()
            .all(|&b| span_holding(b) == span_holding(blocks[0])),
        "the 256 blocks are not in one span"
    );
    free_where(&blocks, |i| i >= 128);
    assert!(arenalloc::trim() > 0, "the trim gave nothing back");
    assert!(
        span.has_parked() && span.fast_free_below() == 0,
        "the trim parked no block of the span"
    );
    // One free is not yet work in the span: a thread that frees a few
    // blocks before it idles again or exits must not fault its pages back.
    free(blocks[1]);
    assert!(
        span.has_parked(),
        "one free into the span brought its parked blocks back"
    );
    // A loop at work in the span: 63 more frees (each of a block allocated
    // just before), and its frees must take the fast path again.
    for _ in 0..63 {
        let q = engine::malloc(64);
        assert_eq!(span_holding(q as usize), span as *const _ as *mut _);
        free(q as usize);
    }
    let again = engine::malloc(64);
    assert!(!again.is_null());
    assert_eq!(
        span.fast_free_below(),
        span.capacity(),
        "after 64 frees of its owner's into it, the current span still sends every free \
         to the checked path (parked blocks: {})",
        span.has_parked()
    );
    // The blocks still live read back intact.
    for &b in blocks[2..128].iter() {
        // SAFETY: live blocks of 64 bytes, filled by `alloc_filled`.
        let bytes = unsafe { std::slice::from_raw_parts(b as *const u8, 64) };
        assert!(bytes.iter().all(|&x| x == 9), "a live block changed");
    }
    free(again as usize);
    free(blocks[0]);
    free_where(&blocks, |i| (2..128).contains(&i));
}

/// The span metadata of one of our small blocks.
fn span_holding(p: usize) -> *mut engine::span::Span {
    let segment = engine::segment::OWNERSHIP
        .span_segment_of(p)
        .expect("a small block of ours");
    // SAFETY: `p` lies in this live span segment.
    unsafe { engine::segment::span_of(segment, p as *mut u8) }
}

#[test]
fn trim_counts_the_segments_it_unmaps() {
    in_child(
        "trim_counts_the_segments_it_unmaps",
        &[("ARENALLOC_BACKGROUND", "0")],
        trim_accounting,
    );
}

fn trim_accounting() {
    let (blocks, owner) = IdleOwner::allocate(64 * MIB);
    for &addr in &blocks {
        free(addr);
    }
    drop(blocks);
    let mapped_before = engine::stats().mapped_bytes;
    let rss_before = rss_bytes();
    let released = arenalloc::trim();
    let mapped_after = engine::stats().mapped_bytes;
    let rss_after = rss_bytes();
    owner.exit();
    let unmapped = mapped_before.saturating_sub(mapped_after);
    println!(
        "trim said {:.1} MiB; mapped {:.1} -> {:.1} MiB; RSS {:.1} -> {:.1} MiB",
        mib(released),
        mib(mapped_before),
        mib(mapped_after),
        mib(rss_before),
        mib(rss_after)
    );
    assert!(
        unmapped >= 48 * MIB,
        "trim unmapped {:.1} MiB",
        mib(unmapped)
    );
    assert!(
        released >= unmapped / 2,
        "trim unmapped {:.1} MiB but returned {:.1} MiB",
        mib(unmapped),
        mib(released)
    );
}

// ------------------------------------------------- 10. the exit summary

/// The child of the exit-summary test: leaves 1000 blocks of 100 B and five
/// of 1 MiB live in a dedicated arena, frees 64 MiB in the default arena,
/// trims, and prints the arena's handle, its live bytes (usable sizes) and
/// the bytes trimmed.
fn exit_summary_child() {
    let arena = arenalloc::Arena::new().unwrap();
    let mut kept = Vec::with_capacity(1005);
    arena.run(|| {
        kept.extend((0..1000).map(|_| engine::malloc(100) as usize));
        kept.extend((0..5).map(|_| engine::malloc(MIB) as usize));
    });
    assert!(kept.iter().all(|&p| p != 0));
    // SAFETY: live blocks of ours.
    let live: usize = kept
        .iter()
        .map(|&p| unsafe { engine::usable_size(p as *mut u8) })
        .sum();
    let churn: Vec<usize> = (0..64 * 1024)
        .map(|_| engine::malloc(KIB) as usize)
        .collect();
    for p in churn {
        free(p);
    }
    let trimmed = arenalloc::trim();
    println!(
        "arena {:#x} live {live} trimmed {trimmed} end",
        arena.as_raw()
    );
    // The blocks stay live to the end: the summary must count them.
    std::mem::forget(kept);
}

#[test]
fn arenalloc_stats_prints_a_summary_at_exit() {
    if std::env::var(CHILD_VAR).as_deref() == Ok("arenalloc_stats_prints_a_summary_at_exit") {
        exit_summary_child();
        println!("arenalloc_stats_prints_a_summary_at_exit: done");
        return;
    }
    let name = "arenalloc_stats_prints_a_summary_at_exit";
    let (status, stdout, stderr) = run_child(name, &[("ARENALLOC_STATS", "1")]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    );
    let report = format!("{status}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}");
    assert_eq!(status, "exit status: 0", "{report}");
    let (handle, live, trimmed) = stdout
        .lines()
        .find_map(|l| {
            let rest = &l[l.find("arena 0x")? + "arena ".len()..];
            let (handle, rest) = rest.split_once(" live ")?;
            let (live, rest) = rest.split_once(" trimmed ")?;
            let trimmed = rest.strip_suffix(" end")?;
            Some((
                handle.to_string(),
                live.parse::<usize>().ok()?,
                trimmed.parse::<usize>().ok()?,
            ))
        })
        .unwrap_or_else(|| panic!("the child did not report its arena\n{report}"));
    assert!(trimmed > 0, "the child's trim released nothing\n{report}");
    // The summary's one-decimal MiB, rounded down.
    let live_mib = format!("live {}.{} MiB", live >> 20, (live % MIB) * 10 / MIB);
    let summary: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("arenalloc:"))
        .collect();
    assert!(
        summary.iter().any(|l| l.contains("exit summary of pid")),
        "no summary heading\n{report}"
    );
    let totals = summary
        .iter()
        .find(|l| l.contains(" rss ") && l.contains(" peak; live "))
        .unwrap_or_else(|| panic!("no RSS and live-bytes line\n{report}"));
    // The peak RSS includes the 64 MiB the child churned through.
    let peak = totals
        .split(" now, ")
        .nth(1)
        .and_then(|t| t.split(" MiB peak").next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no peak RSS in MiB in {totals:?}"));
    assert!(peak >= 64.0, "peak RSS {peak} MiB in {totals:?}");
    let purged = summary
        .iter()
        .find_map(|l| l.strip_prefix("arenalloc:   purged "))
        .and_then(|t| t.split(" MiB").next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no purged line in MiB\n{report}"));
    assert!(
        purged * MIB as f64 >= trimmed as f64 * 0.99,
        "purged {purged} MiB, but trim alone returned {trimmed} B\n{report}"
    );
    assert!(
        summary.iter().any(|l| l.contains("(default): live ")),
        "no line for the default arena\n{report}"
    );
    let arena_line = summary
        .iter()
        .find(|l| l.contains(&format!("arena {handle}: live ")))
        .unwrap_or_else(|| panic!("no line for arena {handle}\n{report}"));
    assert!(
        arena_line.contains(&format!("{live_mib} in 1005 blocks"))
            && arena_line.contains("threads 0"),
        "expected {live_mib} in 1005 blocks and no thread preferring it: {arena_line}"
    );

    let (status, _, stderr) = run_child(name, &[]);
    assert_eq!(status, "exit status: 0");
    assert!(
        !contains(&stderr, "exit summary"),
        "a summary without ARENALLOC_STATS=1:\n{}",
        String::from_utf8_lossy(&stderr)
    );
}

// ------------------------------------- 11. address space between live spans

/// VSZ of this process in bytes, from `/proc/self/statm`.
fn vsz_bytes() -> usize {
    let text = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = text
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .expect("statm has a size field");
    pages * 4096
}

/// Whether the page at `p` is mapped (`mincore` fails with ENOMEM if not).
fn page_is_mapped(p: usize) -> bool {
    let mut vec = [0u8; 1];
    // SAFETY: mincore only reads the page tables; `vec` holds one byte.
    unsafe { libc::mincore(p as *mut libc::c_void, 4096, vec.as_mut_ptr()) == 0 }
}

const SEGMENT: usize = 4 * MIB;
const SLICE: usize = 64 * KIB;

/// 48 MiB of 256 B blocks with one survivor per MiB.
fn sparse_spans() -> (Vec<Held>, Vec<Held>) {
    let all: Vec<Held> = (0..48 * MIB / 256)
        .map(|i| Held::new(256, i as u64))
        .collect();
    let mut survivors = Vec::new();
    let mut freed = Vec::new();
    for (i, b) in all.into_iter().enumerate() {
        if i % 4096 == 0 {
            survivors.push(b);
        } else {
            freed.push(b);
        }
    }
    (survivors, freed)
}

#[test]
fn free_runs_between_live_spans_give_back_their_address_space() {
    in_child(
        "free_runs_between_live_spans_give_back_their_address_space",
        &[("ARENALLOC_BACKGROUND", "0")],
        unmapped_runs,
    );
}

/// A trim unmaps the free slice runs of segments that still hold live
/// spans (VSZ and the allocator's mapped bytes fall); the survivors stay
/// intact; the runs are mapped again and used; a mapping someone else put
/// into one of the holes meanwhile is left alone, also when the segment is
/// unmapped at last.
fn unmapped_runs() {
    let (survivors, freed) = sparse_spans();
    for b in freed {
        free(b.addr);
    }
    arenalloc::trim();
    let (vsz_before, mapped_before) = (vsz_bytes(), engine::stats().mapped_bytes);
    // The frees retired the spans; nothing purged their slices yet, so the
    // trim below is what gives them back.
    let (more_survivors, freed) = sparse_spans();
    for b in freed {
        free(b.addr);
    }
    let (vsz_full, mapped_full) = (vsz_bytes(), engine::stats().mapped_bytes);
    let released = arenalloc::trim();
    let (vsz_after, mapped_after) = (vsz_bytes(), engine::stats().mapped_bytes);
    println!(
        "VSZ {:.1} -> {:.1} MiB after trim ({:.1} MiB before the second round); allocator's mapped bytes {:.1} -> {:.1} MiB ({:.1} before the second round); trim said {:.1} MiB",
        mib(vsz_full),
        mib(vsz_after),
        mib(vsz_before),
        mib(mapped_full),
        mib(mapped_after),
        mib(mapped_before),
        mib(released)
    );
    assert!(
        mapped_full - mapped_after >= 32 * MIB,
        "the allocator's mapped bytes fell only {:.1} MiB",
        mib(mapped_full - mapped_after)
    );
    assert!(
        vsz_full - vsz_after >= 32 * MIB,
        "VSZ fell only {:.1} MiB",
        mib(vsz_full - vsz_after)
    );
    for s in survivors.iter().chain(&more_survivors) {
        s.check("survivor after the unmapping trim");
    }
    // A foreign page in the first hole of every survivor's segment.
    let mut segments: Vec<usize> = more_survivors
        .iter()
        .map(|s| s.addr & !(SEGMENT - 1))
        .collect();
    segments.dedup();
    let holes: Vec<(usize, usize)> = segments
        .iter()
        .filter_map(|&base| {
            let hole = (1..SEGMENT / SLICE)
                .map(|i| base + i * SLICE)
                .find(|&p| !page_is_mapped(p))?;
            map_page_at(hole);
            // SAFETY: the page was just mapped, read-write.
            unsafe { ptr_fill(hole, 0xab) };
            Some((base, hole))
        })
        .collect();
    assert!(
        !holes.is_empty(),
        "no unmapped slice in any survivor's segment"
    );
    for &(_, hole) in &holes {
        // The segment's ownership bit covers the hole, but the page there
        // is not ours: a program that routes frees with `owns` must not be
        // told otherwise.
        assert!(
            !arenalloc::owns(hole as *const u8),
            "a foreign page in a hole is called ours"
        );
        assert!(
            engine::arena_of(hole as *const u8).is_none(),
            "a foreign page in a hole has an arena"
        );
    }
    let on_foreign = |b: &Held| {
        holes
            .iter()
            .any(|&(_, h)| b.addr < h + 4096 && b.addr + b.size > h)
    };
    // Use the holes again: every block reads back, none lands on a foreign
    // page.
    let again: Vec<Held> = (0..48 * MIB / 256)
        .map(|i| Held::new(256, 7 + i as u64))
        .collect();
    assert!(
        !again.iter().any(on_foreign),
        "a block was placed on a foreign page"
    );
    for b in &again {
        b.check("block in a slice mapped again");
    }
    for &(_, hole) in &holes {
        // SAFETY: as above.
        assert!(unsafe { ptr_all(hole, 0xab) }, "a foreign page changed");
    }
    for b in again.into_iter().chain(survivors).chain(more_survivors) {
        b.check_and_free("block before the final trim");
    }
    arenalloc::trim();
    let mut destroyed = 0;
    for &(base, hole) in &holes {
        assert!(
            page_is_mapped(hole),
            "unmapping a segment took the foreign page in its hole with it"
        );
        // SAFETY: as above.
        assert!(unsafe { ptr_all(hole, 0xab) }, "a foreign page changed");
        destroyed += usize::from(!page_is_mapped(base));
        // SAFETY: our own page.
        unsafe { libc::munmap(hole as *mut libc::c_void, 4096) };
    }
    println!(
        "{} segments with a foreign page, {destroyed} of them unmapped by the last trim",
        holes.len()
    );
    assert!(
        destroyed > 0,
        "no segment with a foreign page in a hole was unmapped: the test did not check that case"
    );
}

/// # Safety
/// A mapped, writable page at `p`.
unsafe fn ptr_fill(p: usize, byte: u8) {
    // SAFETY: forwarded.
    unsafe { std::ptr::write_bytes(p as *mut u8, byte, 4096) }
}

/// # Safety
/// A mapped, readable page at `p`.
unsafe fn ptr_all(p: usize, byte: u8) -> bool {
    // SAFETY: forwarded.
    unsafe { std::slice::from_raw_parts(p as *const u8, 4096) }
        .iter()
        .all(|&b| b == byte)
}

/// Maps a page into the first hole of a survivor's segment (after a trim
/// that unmapped free slice runs); returns its address.
fn foreign_page_in_a_hole(survivors: &[Held]) -> usize {
    let hole = survivors
        .iter()
        .flat_map(|s| {
            let base = s.addr & !(SEGMENT - 1);
            (1..SEGMENT / SLICE).map(move |i| base + i * SLICE)
        })
        .find(|&p| !page_is_mapped(p))
        .expect("no unmapped slice in any survivor's segment");
    map_page_at(hole);
    hole
}

/// `free` of an address in a hole (someone else's page) must abort with
/// the message for a foreign pointer, not take the page for a block: the
/// fast path does not look at holes, the refusal comes from the free
/// slice's cleared span entry.
#[test]
fn freeing_a_foreign_page_in_a_hole_aborts_with_a_message() {
    const NAME: &str = "freeing_a_foreign_page_in_a_hole_aborts_with_a_message";
    if std::env::var(CHILD_VAR).as_deref() == Ok(NAME) {
        let (survivors, freed) = sparse_spans();
        for b in freed {
            free(b.addr);
        }
        arenalloc::trim();
        let hole = foreign_page_in_a_hole(&survivors);
        println!("freeing {hole:#x}");
        free(hole + 64);
        println!("{NAME}: the free returned");
        return;
    }
    let (status, stdout, stderr) = run_child(NAME, &[("ARENALLOC_BACKGROUND", "0")]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    );
    let report = format!("{status}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}");
    assert!(
        stdout.contains("freeing 0x"),
        "the child did not get to the free\n{report}"
    );
    assert!(
        !stdout.contains("the free returned"),
        "the free of a foreign page returned\n{report}"
    );
    assert!(
        stderr.contains("pointer was not allocated by arenalloc; aborting"),
        "no foreign-pointer message\n{report}"
    );
}

// ------------- 11. a purge never promises blocks a span does not have

#[test]
fn an_abandoned_span_purged_under_a_block_with_no_start_in_its_page_is_adopted() {
    in_child(
        "an_abandoned_span_purged_under_a_block_with_no_start_in_its_page_is_adopted",
        &[("ARENALLOC_BACKGROUND", "0")],
        phantom_parked_blocks,
    );
}

/// For every size class whose blocks can cover a whole page without
/// starting in it, and every block of a span: thread A fills one span (its
/// own arena, so the span is fresh), frees block `i`, trims (the page under
/// the free block's tail goes, with no block start in it), takes one block
/// again and exits, abandoning the now full span; thread B then allocates in
/// the same arena and adopts that span. Before the fix the purge counted
/// "parked" blocks that did not exist, the adopted span claimed room it did
/// not have, and B's `malloc` aborted with "refill found a span without
/// room".
fn phantom_parked_blocks() {
    use engine::segment::SLICE_SIZE;
    use engine::size_class::{class_size, span_slices, CLASS_COUNT};
    let mut scenarios = 0;
    for class in 0..CLASS_COUNT {
        let size = class_size(class);
        if size <= 4 * KIB {
            continue;
        }
        let blocks = span_slices(class) * SLICE_SIZE / size;
        for freed in 0..blocks {
            let arena = engine::arena_new().expect("an arena");
            let a = thread::spawn(move || {
                engine::arena_set(arena).expect("switch to the test arena");
                let held: Vec<Held> = (0..blocks)
                    .map(|i| Held::new(size, (class * 1000 + i) as u64))
                    .collect();
                let mut held: Vec<Option<Held>> = held.into_iter().map(Some).collect();
                free(held[freed].take().unwrap().addr);
                arenalloc::trim();
                held[freed] = Some(Held::new(size, 77));
                held
            });
            let held = a.join().expect("thread A");
            let b = thread::spawn(move || {
                engine::arena_set(arena).expect("switch to the test arena");
                let p = Held::new(size, 99);
                p.check("block of the thread that adopted the span");
                p.check_and_free("adopter's block");
            });
            b.join().expect("thread B");
            for h in held.into_iter().flatten() {
                h.check_and_free("block of the exited thread");
            }
            // SAFETY: every block of the arena was freed; no thread uses it.
            assert!(unsafe { engine::arena_destroy(arena) });
            scenarios += 1;
        }
    }
    println!("{scenarios} span fills adopted after a purge");
    assert!(scenarios > 100);
}

// ------------------------------------------- large blocks kept for reuse

/// 48 blocks of 4 MiB: more blocks and more bytes than the large cache's
/// slots hold (32, 128 MiB).
const CHURN_BLOCKS: usize = 48;
const CHURN_BLOCK: usize = 4 * MIB;

/// One job of a buffer-churn program in arena `arena`: `CHURN_BLOCKS`
/// blocks of `size` bytes, every page written, then all freed. Returns the
/// arena's mapped bytes while the blocks were live.
fn churn_job(arena: engine::ArenaHandle, size: usize) -> usize {
    let blocks: Vec<usize> = (0..CHURN_BLOCKS)
        .map(|_| {
            let p = engine::arena_alloc(arena, size, engine::MIN_ALIGN, false);
            assert!(!p.is_null());
            for page in (0..size).step_by(4096) {
                // SAFETY: `size` bytes at `p`.
                unsafe { p.add(page).write(1) };
            }
            p as usize
        })
        .collect();
    let mapped = engine::arena_stats(arena).unwrap().mapped_bytes;
    for &b in &blocks {
        free(b);
    }
    mapped
}

#[test]
fn with_the_housekeeper_freed_large_blocks_past_the_cache_bounds_are_reused_then_unmapped() {
    in_child(
        "with_the_housekeeper_freed_large_blocks_past_the_cache_bounds_are_reused_then_unmapped",
        &[],
        large_blocks_retained,
    );
}

/// Two jobs of 48 x 4 MiB in a row: the second maps nothing new (the first
/// job's blocks were all kept, though the cache's slots hold 32 and 128
/// MiB), and a third job of bigger blocks grows kept blocks instead of
/// mapping fresh ones beside them. Then, idle, the housekeeper unmaps
/// everything kept.
fn large_blocks_retained() {
    assert!(purger::background_enabled());
    let arena = engine::arena_new().unwrap();
    let first = churn_job(arena, CHURN_BLOCK);
    let kept = engine::arena_stats(arena).unwrap().mapped_bytes;
    assert!(
        kept >= CHURN_BLOCKS * CHURN_BLOCK,
        "only {:.0} MiB of the {} MiB freed stayed mapped",
        mib(kept),
        CHURN_BLOCKS * CHURN_BLOCK / MIB
    );
    let second = churn_job(arena, CHURN_BLOCK);
    assert!(
        second <= first,
        "the second job mapped more ({:.0} MiB, first {:.0} MiB)",
        mib(second),
        mib(first)
    );
    // Twice the size: every kept block must grow (its mapping has room for
    // 5 MiB), to about twice the first job's mapping; fresh blocks beside
    // the kept ones would make it three times.
    let third = churn_job(arena, 2 * CHURN_BLOCK);
    assert!(
        third <= 2 * first + 16 * MIB,
        "the third job mapped new blocks beside the kept ones ({:.0} MiB, first {:.0} MiB)",
        mib(third),
        mib(first)
    );
    let deadline = Instant::now() + PURGE_DEADLINE;
    let mut mapped = engine::arena_stats(arena).unwrap().mapped_bytes;
    while mapped > 8 * MIB && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        mapped = engine::arena_stats(arena).unwrap().mapped_bytes;
    }
    assert!(
        mapped <= 8 * MIB,
        "{:.0} MiB still mapped after {PURGE_DEADLINE:?} idle",
        mib(mapped)
    );
}

#[test]
fn with_the_housekeeper_a_cached_large_block_serves_whole_only_requests_near_its_size() {
    in_child(
        "with_the_housekeeper_a_cached_large_block_serves_whole_only_requests_near_its_size",
        &[],
        aligned_large_reused,
    );
}

/// A large block aligned to more than a page has a mapping of header page,
/// padding and block. How much bigger than a request a cached block may be
/// and still serve it whole (1.5x) counts the block, not the padding: a
/// freed block serves the very request it was made for; and a much bigger
/// one does not serve a request whole.
fn aligned_large_reused() {
    // The housekeeper starts on a slow path once this much is mapped.
    let keep = alloc_filled(purger::START_AFTER_MAPPED / (64 * KIB) + 8, 64 * KIB);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !engine::housekeeping::housekeeper_running() && Instant::now() < deadline {
        free_where(&alloc_filled(200, 4 * KIB), |_| true);
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        engine::housekeeping::housekeeper_running(),
        "no housekeeper"
    );
    let arena = engine::arena_new().unwrap();
    let (size, align) = (130 * KIB, 64 * KIB);
    let p = engine::arena_alloc(arena, size, align, false);
    assert!(!p.is_null() && (p as usize).is_multiple_of(align));
    free(p as usize);
    let q = engine::arena_alloc(arena, size, align, false);
    assert_eq!(q, p, "the freed block did not serve the same request again");
    free(q as usize);
    // A freed block more than half as big again as a request does not serve
    // it whole (its resident tail would count for nothing): 1 MiB for
    // 400 KiB comes from elsewhere, or cut down.
    let big = engine::arena_alloc(arena, MIB, engine::MIN_ALIGN, false);
    assert!(!big.is_null());
    free(big as usize);
    let small = engine::arena_alloc(arena, 400 * KIB, engine::MIN_ALIGN, false);
    assert!(!small.is_null());
    // SAFETY: a live block of ours.
    let usable = unsafe { engine::usable_size(small) };
    assert!(
        usable <= 600 * KIB,
        "a 400 KiB request got a block of {} KiB",
        usable / KIB
    );
    free(small as usize);
    free_where(&keep, |_| true);
}

#[test]
fn without_the_housekeeper_the_large_cache_keeps_to_its_bounds() {
    in_child(
        "without_the_housekeeper_the_large_cache_keeps_to_its_bounds",
        &[("ARENALLOC_BACKGROUND", "0")],
        large_blocks_bounded,
    );
}

/// The same job with nobody to unmap what is kept later: `free` keeps at
/// most the cache's 128 MiB mapped.
fn large_blocks_bounded() {
    assert!(!purger::background_enabled());
    let arena = engine::arena_new().unwrap();
    churn_job(arena, CHURN_BLOCK);
    let kept = engine::arena_stats(arena).unwrap().mapped_bytes;
    assert!(
        kept <= 128 * MIB + 4 * MIB,
        "{:.0} MiB stayed mapped",
        mib(kept)
    );
}

#[test]
fn large_blocks_retained_for_the_housekeeper_go_when_it_is_switched_off() {
    in_child(
        "large_blocks_retained_for_the_housekeeper_go_when_it_is_switched_off",
        &[("ARENALLOC_PURGE_DELAY_MS", "600000")],
        retained_then_switched_off,
    );
}

/// Blocks retained while the housekeeper ran (it will not purge within the
/// test: a 10-minute delay) must not stay when it is switched off: the next
/// large free unmaps them, leaving at most the cache's bounds.
fn retained_then_switched_off() {
    let arena = engine::arena_new().unwrap();
    churn_job(arena, CHURN_BLOCK);
    let kept = engine::arena_stats(arena).unwrap().mapped_bytes;
    assert!(
        kept >= CHURN_BLOCKS * CHURN_BLOCK,
        "{:.0} MiB kept",
        mib(kept)
    );
    purger::set_background(false);
    let p = engine::arena_alloc(arena, 200 * 1024, engine::MIN_ALIGN, false);
    assert!(!p.is_null());
    free(p as usize);
    let after = engine::arena_stats(arena).unwrap().mapped_bytes;
    assert!(
        after <= 128 * MIB + 4 * MIB,
        "{:.0} MiB stayed mapped after the housekeeper was switched off",
        mib(after)
    );
}
