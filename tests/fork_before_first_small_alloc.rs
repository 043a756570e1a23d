//! `fork()` is safe even in a process whose threads have so far used only
//! large blocks (and `trim()`), never a small one: the fork handlers that
//! hold the arena lock across `fork` must be in place whatever the first
//! allocation was.
//!
//! Worker threads allocate and free large blocks and call `trim()` (which
//! holds the arena lock while it unmaps the cached blocks); the main thread
//! forks 200 times and each child allocates and frees one large block. A
//! child that has not exited after 10 s is deadlocked on a lock held by a
//! thread that does not exist in it: it is killed and the test fails.
//!
//! This binary keeps the system allocator and this is its only test, so
//! nothing else in the process makes a small arenalloc allocation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use arenalloc_engine as engine;
use arenalloc_tests::{stuck_process_report, Rng};

const FORKS: usize = 200;
const CHILD_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits for `pid`; kills it and returns `Err` with what it was doing if it
/// is still running after `CHILD_TIMEOUT`.
fn wait_or_kill(pid: libc::pid_t) -> Result<i32, String> {
    let deadline = Instant::now() + CHILD_TIMEOUT;
    loop {
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Ok(status);
        }
        assert_eq!(r, 0, "waitpid: {}", std::io::Error::last_os_error());
        if Instant::now() >= deadline {
            let report = stuck_process_report(pid);
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(report);
        }
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn forking_while_threads_use_only_large_blocks_does_not_deadlock() {
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3u64)
        .map(|id| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut rng = Rng::new(id);
                while !stop.load(Ordering::Relaxed) {
                    let mut held = [std::ptr::null_mut::<u8>(); 4];
                    for slot in &mut held {
                        let size = rng.range(128 * 1024 + 1, 2 << 20);
                        let p = engine::malloc(size);
                        assert!(!p.is_null());
                        // SAFETY: at least one byte at `p`.
                        unsafe { p.write(1) };
                        *slot = p;
                    }
                    for p in held {
                        // SAFETY: live blocks, freed once.
                        unsafe { engine::free(p) };
                    }
                    if rng.one_in(2) {
                        engine::trim();
                    }
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(20));

    let mut hung = Vec::new();
    let mut first_report = String::new();
    let mut failed = Vec::new();
    for i in 0..FORKS {
        // SAFETY: the child makes engine calls only, then `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let p = engine::malloc(1 << 20);
            let status = if p.is_null() {
                1
            } else {
                // SAFETY: a live block, freed once.
                unsafe { engine::free(p) };
                0
            };
            // SAFETY: leave the child at once.
            unsafe { libc::_exit(status) };
        }
        match wait_or_kill(pid) {
            Err(report) => {
                if hung.is_empty() {
                    first_report = report;
                }
                hung.push(i);
                if hung.len() == 3 {
                    // Each hang costs the full timeout: three make the point.
                    break;
                }
            }
            Ok(status) if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 => {}
            Ok(status) => failed.push((i, status)),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(
        hung.is_empty(),
        "children of forks {hung:?} deadlocked (a lock held by a parent thread at fork \
         time); the first one:\n{first_report}"
    );
    assert!(failed.is_empty(), "children failed: {failed:?}");
}
