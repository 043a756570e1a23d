//! Property 6: a program that creates and joins 100 000 short-lived threads,
//! each allocating and freeing about 1 MiB of small blocks, keeps its RSS
//! under 64 MiB. Memory a thread held when it exited must go back where
//! other threads can use it.
//!
//! This binary's global allocator is `ArenaAlloc`, so the threads' own
//! bookkeeping (std's `Thread`, the join packet) comes from arenalloc too.
//! The second test lets each thread's blocks outlive it: the main thread
//! frees them after the join (remote frees into abandoned spans), and the
//! next threads must adopt those spans rather than map new memory.
//!
//! The elapsed time is printed (run with `--nocapture`), never asserted.

use std::sync::Mutex;
use std::thread;
use std::time::Instant;

use arenalloc_engine as engine;
use arenalloc_tests::rss_bytes;

#[global_allocator]
static GLOBAL: arenalloc::ArenaAlloc = arenalloc::ArenaAlloc;

/// The bound on RSS after the churn.
const RSS_LIMIT: usize = 64 << 20;
/// Small blocks per thread: 4096 x 256 B = 1 MiB.
const BLOCKS: usize = 4096;
const BLOCK_SIZE: usize = 256;
const LAST_WORD: usize = BLOCK_SIZE / 8 - 1;

/// RSS is process-wide: the two tests take turns.
static SERIAL: Mutex<()> = Mutex::new(());

/// Allocates `count` blocks, marks each with its index and `tag`; returns
/// their addresses.
fn allocate_marked(tag: usize, count: usize) -> Vec<usize> {
    (0..count)
        .map(|i| {
            let p = engine::malloc(BLOCK_SIZE);
            assert!(!p.is_null(), "malloc({BLOCK_SIZE}) failed");
            // SAFETY: a fresh block of BLOCK_SIZE bytes. Its first and last
            // words: every page of the blocks becomes resident.
            unsafe {
                let w = p.cast::<usize>();
                w.write(tag ^ i);
                w.add(LAST_WORD).write(!(tag ^ i));
            }
            p as usize
        })
        .collect()
}

fn check_and_free(tag: usize, blocks: Vec<usize>) {
    for (i, &addr) in blocks.iter().enumerate() {
        let w = addr as *const usize;
        // SAFETY: a live block of ours.
        let (first, last) = unsafe { (w.read(), w.add(LAST_WORD).read()) };
        assert_eq!(
            (first, last),
            (tag ^ i, !(tag ^ i)),
            "block {i} of thread {tag} corrupted"
        );
        // SAFETY: a live block, freed once.
        unsafe { engine::free(addr as *mut u8) };
    }
}

fn report(what: &str, threads: usize, start: Instant, rss_before: usize, peak: usize, end: usize) {
    eprintln!(
        "{what}: {threads} threads in {:.1} s; RSS before {:.1} MiB, peak sampled {:.1} MiB, after {:.1} MiB; engine mapped {:.1} MiB",
        start.elapsed().as_secs_f64(),
        rss_before as f64 / (1 << 20) as f64,
        peak as f64 / (1 << 20) as f64,
        end as f64 / (1 << 20) as f64,
        engine::stats().mapped_bytes as f64 / (1 << 20) as f64,
    );
}

#[test]
fn hundred_thousand_threads_churning_1mib_each_keep_rss_under_64mib() {
    const THREADS: usize = 100_000;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    let rss_before = rss_bytes();
    let mut peak = rss_before;
    for t in 0..THREADS {
        thread::spawn(move || check_and_free(t, allocate_marked(t, BLOCKS)))
            .join()
            .expect("churn thread panicked");
        if t % 1000 == 999 {
            peak = peak.max(rss_bytes());
            assert!(
                peak < RSS_LIMIT,
                "RSS {peak} bytes after {} threads (limit {RSS_LIMIT})",
                t + 1
            );
        }
    }
    let end = rss_bytes();
    report("churn", THREADS, start, rss_before, peak, end);
    assert!(end < RSS_LIMIT, "RSS {end} bytes after {THREADS} threads");
}

#[test]
fn blocks_outliving_their_thread_are_reused_by_later_threads() {
    const THREADS: usize = 10_000;
    const LEFT_BEHIND: usize = 256;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    let rss_before = rss_bytes();
    let mut peak = rss_before;
    for t in 0..THREADS {
        let blocks = thread::spawn(move || {
            // Some blocks freed locally, the rest handed to the main thread.
            check_and_free(t, allocate_marked(t, BLOCKS / 4));
            allocate_marked(t, LEFT_BEHIND)
        })
        .join()
        .expect("churn thread panicked");
        // The owner has exited: these are frees into abandoned spans.
        check_and_free(t, blocks);
        if t % 500 == 499 {
            peak = peak.max(rss_bytes());
            assert!(
                peak < RSS_LIMIT,
                "RSS {peak} bytes after {} threads (limit {RSS_LIMIT})",
                t + 1
            );
        }
    }
    let end = rss_bytes();
    report("outliving blocks", THREADS, start, rss_before, peak, end);
    assert!(end < RSS_LIMIT, "RSS {end} bytes after {THREADS} threads");
}
