//! `fork()` while other threads allocate: the child must never inherit an
//! allocator lock held by a thread that does not exist in it (glibc's
//! `tst-malloc-fork-deadlock` pattern).
//!
//! Worker threads allocate and free without pause (small batches that refill
//! spans, large blocks through the arena's cache, remote frees, short-lived
//! threads whose exit hands spans back, `stats()` and `trim()`), all of
//! which take the arena or heap-pool lock. The main thread forks 200 times.
//! Each child frees blocks that a worker (absent in the child) allocated
//! before the fork, allocates and frees blocks of every kind with engine
//! calls and one `Vec` through the global allocator, and `_exit`s with a
//! status that says what went wrong. A child that has not exited after 10 s
//! is deadlocked: it is killed and the test fails.
//!
//! This binary's global allocator is `ArenaAlloc`, so Rust's own
//! allocations in parent and child go through arenalloc as well.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use arenalloc_engine as engine;
use arenalloc_tests::{pattern, stuck_process_report, Rng};

#[global_allocator]
static GLOBAL: arenalloc::ArenaAlloc = arenalloc::ArenaAlloc;

const FORKS: usize = 200;
const WORKERS: usize = 3;
const CHILD_TIMEOUT: Duration = Duration::from_secs(10);

/// Child exit statuses.
const OK: i32 = 0;
const INHERITED_CORRUPT: i32 = 10;
const ALLOC_FAILED: i32 = 11;
const BLOCK_CORRUPT: i32 = 12;
const NOT_ZERO: i32 = 13;
const MISALIGNED: i32 = 14;
const PANICKED: i32 = 15;

/// A block the parent's keeper thread allocated: address, size, seed.
#[derive(Clone, Copy)]
struct Inherited {
    addr: usize,
    size: usize,
    seed: u64,
}

fn worker(
    id: usize,
    stop: Arc<AtomicBool>,
    inbox: mpsc::Receiver<usize>,
    outbox: mpsc::Sender<usize>,
) {
    let mut rng = Rng::new(0xF0 + id as u64);
    let mut held: Vec<*mut u8> = Vec::new();
    let mut rounds = 0usize;
    while !stop.load(Ordering::Relaxed) {
        rounds += 1;
        match rng.below(16) {
            0..=8 => {
                // A batch of small and medium blocks, freed in random order;
                // some go to the next worker to be freed there.
                for _ in 0..rng.range(1, 200) {
                    let size = rng.log_range(1, 128 * 1024);
                    let p = engine::malloc(size);
                    assert!(!p.is_null());
                    // SAFETY: `size` >= 1 bytes at `p`.
                    unsafe { p.write(size as u8) };
                    held.push(p);
                }
                while !held.is_empty() {
                    let p = held.swap_remove(rng.below(held.len()));
                    if rng.one_in(4) {
                        let _ = outbox.send(p as usize);
                    } else {
                        // SAFETY: a live block of ours.
                        unsafe { engine::free(p) };
                    }
                }
            }
            9..=11 => {
                let size = rng.log_range(128 * 1024 + 1, 4 << 20);
                let p = engine::malloc(size);
                assert!(!p.is_null());
                // SAFETY: `size` bytes at `p`.
                unsafe { pattern::fill_sparse(p, size, 7) };
                // SAFETY: a live block of ours.
                unsafe { engine::free(p) };
            }
            12 => {
                // A short-lived thread: its exit hands its spans back under
                // the arena lock and its heap to the pool.
                thread::spawn(|| {
                    let v: Vec<String> = (0..64).map(|i| i.to_string()).collect();
                    assert_eq!(v.len(), 64);
                })
                .join()
                .unwrap();
            }
            13 => {
                let s = engine::stats();
                assert!(s.mapped_bytes > 0);
            }
            14 if rng.one_in(8) => {
                engine::trim();
            }
            _ => {
                let v: Vec<u64> = (0..rng.range(1, 5000) as u64).collect();
                assert_eq!(
                    v.iter().sum::<u64>(),
                    (v.len() as u64) * (v.len() as u64 - 1) / 2
                );
            }
        }
        while let Ok(addr) = inbox.try_recv() {
            // SAFETY: a live block another worker gave up.
            unsafe { engine::free(addr as *mut u8) };
        }
    }
    drop(outbox);
    // Blocks still in flight: free what arrives until every sender is gone.
    for addr in inbox {
        // SAFETY: as above.
        unsafe { engine::free(addr as *mut u8) };
    }
    assert!(rounds > 0);
}

/// Everything the child does; returns its exit status.
fn child_body(inherited: &[Inherited]) -> i32 {
    // Blocks of a thread that does not exist here.
    for b in inherited {
        let p = b.addr as *mut u8;
        // SAFETY: live in the parent when it forked, so live here.
        if unsafe { pattern::check_sparse(p, b.size, b.seed) }.is_err() {
            return INHERITED_CORRUPT;
        }
        // SAFETY: as above; freed once in this process.
        unsafe { engine::free(p) };
    }
    const SIZES: [usize; 10] = [
        16,
        40,
        256,
        1000,
        4096,
        20_000,
        128 * 1024,
        128 * 1024 + 1,
        300_000,
        1 << 20,
    ];
    let mut blocks = [std::ptr::null_mut::<u8>(); 40];
    for (round, seed) in (0..2u64).zip(1u64..) {
        for (i, slot) in blocks.iter_mut().enumerate() {
            let size = SIZES[i % SIZES.len()];
            let p = match i / SIZES.len() {
                0 => engine::malloc(size),
                1 => engine::zalloc(size),
                2 => engine::malloc_aligned(size, 4096 << (i % 10)),
                // SAFETY: realloc(NULL) is malloc.
                _ => unsafe { engine::realloc(std::ptr::null_mut(), size) },
            };
            if p.is_null() {
                return ALLOC_FAILED;
            }
            if i / SIZES.len() == 1 {
                // SAFETY: `size` bytes at `p`.
                if unsafe { pattern::first_nonzero(p, size) }.is_some() {
                    return NOT_ZERO;
                }
            }
            if i / SIZES.len() == 2 && !(p as usize).is_multiple_of(4096 << (i % 10)) {
                return MISALIGNED;
            }
            // SAFETY: `size` bytes at `p`.
            unsafe { pattern::fill_sparse(p, size, seed * 100 + i as u64) };
            *slot = p;
        }
        for (i, &p) in blocks.iter().enumerate() {
            let size = SIZES[i % SIZES.len()];
            // SAFETY: filled above.
            if unsafe { pattern::check_sparse(p, size, seed * 100 + i as u64) }.is_err() {
                return BLOCK_CORRUPT;
            }
            // SAFETY: a live block, freed once.
            unsafe { engine::free(p) };
        }
        if round == 0 {
            engine::trim();
        }
    }
    // Rust's own allocations in the child go through arenalloc too.
    let v: Vec<usize> = (0..10_000).collect();
    if v.iter().sum::<usize>() != 10_000 * 9_999 / 2 || !engine::owns(v.as_ptr().cast()) {
        return BLOCK_CORRUPT;
    }
    let _ = engine::stats();
    OK
}

fn describe(status: i32) -> String {
    if libc::WIFEXITED(status) {
        let code = libc::WEXITSTATUS(status);
        let what = match code {
            INHERITED_CORRUPT => "a block inherited from a dead thread was corrupted",
            ALLOC_FAILED => "an allocation failed",
            BLOCK_CORRUPT => "a block's contents were corrupted",
            NOT_ZERO => "zalloc returned non-zero memory",
            MISALIGNED => "malloc_aligned returned a misaligned block",
            PANICKED => "the child panicked",
            _ => "unexpected exit status",
        };
        format!("exited with {code} ({what})")
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("wait status {status:#x}")
    }
}

/// Waits for `pid`; kills it and returns `Err` if it is still running after
/// `CHILD_TIMEOUT`.
fn wait_or_kill(pid: libc::pid_t) -> Result<i32, String> {
    let deadline = Instant::now() + CHILD_TIMEOUT;
    loop {
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Ok(status);
        }
        assert!(
            r == 0,
            "waitpid({pid}) failed: {}",
            std::io::Error::last_os_error()
        );
        if Instant::now() >= deadline {
            let where_stuck = stuck_process_report(pid);
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(format!(
                "child {pid} still running after {CHILD_TIMEOUT:?}: deadlocked (killed)\n{where_stuck}"
            ));
        }
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn children_forked_while_threads_allocate_do_not_deadlock() {
    let stop = Arc::new(AtomicBool::new(false));

    // Inherited blocks: allocated by a thread that keeps running (so its heap
    // is live at every fork and absent in every child).
    let (inherited_tx, inherited_rx) = mpsc::channel::<Vec<Inherited>>();
    let keeper_stop = stop.clone();
    let keeper = thread::spawn(move || {
        let mut rng = Rng::new(0xBEEF);
        let blocks: Vec<Inherited> = (0..200u64)
            .map(|seed| {
                let size = if rng.one_in(20) {
                    rng.log_range(128 * 1024 + 1, 2 << 20)
                } else {
                    rng.log_range(1, 64 * 1024)
                };
                let p = engine::malloc(size);
                assert!(!p.is_null());
                // SAFETY: `size` bytes at `p`.
                unsafe { pattern::fill_sparse(p, size, seed) };
                Inherited {
                    addr: p as usize,
                    size,
                    seed,
                }
            })
            .collect();
        inherited_tx.send(blocks).unwrap();
        // Keep allocating from the same heap while the main thread forks.
        let mut n = 0usize;
        while !keeper_stop.load(Ordering::Relaxed) {
            let p = engine::malloc(n % 3000 + 1);
            assert!(!p.is_null());
            // SAFETY: a live block of ours.
            unsafe { engine::free(p) };
            n += 1;
        }
    });
    let inherited = inherited_rx.recv().unwrap();

    let (senders, receivers): (Vec<_>, Vec<_>) = (0..WORKERS).map(|_| mpsc::channel()).unzip();
    let workers: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(i, inbox)| {
            let outbox = senders[(i + 1) % WORKERS].clone();
            let stop = stop.clone();
            thread::spawn(move || worker(i, stop, inbox, outbox))
        })
        .collect();
    drop(senders);
    // Let the workers get going before the first fork.
    thread::sleep(Duration::from_millis(50));

    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut failures = 0;
    let mut first_failure = None;
    for i in 0..FORKS {
        // SAFETY: the child only runs `child_body` (engine calls, a Vec, no
        // locks of std) and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let status = std::panic::catch_unwind(|| child_body(&inherited)).unwrap_or(PANICKED);
            // SAFETY: leaves the child at once, without running the parent's
            // atexit handlers or destructors.
            unsafe { libc::_exit(status) };
        }
        let waited = Instant::now();
        let result = wait_or_kill(pid);
        slowest = slowest.max(waited.elapsed());
        let outcome = match result {
            Ok(status) if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == OK => continue,
            Ok(status) => describe(status),
            Err(deadlock) => deadlock,
        };
        failures += 1;
        first_failure.get_or_insert(format!("fork {i}: {outcome}"));
    }

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker panicked");
    }
    keeper.join().expect("keeper panicked");
    for b in &inherited {
        // SAFETY: still live in the parent; freed once.
        unsafe {
            assert_eq!(
                pattern::check_sparse(b.addr as *mut u8, b.size, b.seed),
                Ok(())
            );
            engine::free(b.addr as *mut u8);
        }
    }
    eprintln!(
        "{FORKS} forks in {:.1} s, slowest child {:?}",
        started.elapsed().as_secs_f64(),
        slowest
    );
    assert_eq!(
        failures,
        0,
        "{failures} of {FORKS} children failed; first: {}",
        first_failure.unwrap_or_default()
    );
}
