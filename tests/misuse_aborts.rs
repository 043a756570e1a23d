//! Misuse that would corrupt memory aborts at once with a message on
//! stderr: freeing a pointer arenalloc never handed out (a stack address, a
//! block from glibc's malloc), freeing a block twice in a row (small,
//! medium, large), and freeing an interior pointer (from another thread for
//! span blocks, from any thread for large blocks).
//!
//! Each scenario runs in a child process: the test re-runs itself (this
//! binary, `--exact <test>`) with `ARENALLOC_MISUSE=<test>`, and the child
//! prints the pointer it is about to misuse, then misuses it. The parent
//! asserts the child died of SIGABRT and its stderr has arenalloc's message
//! naming that pointer and the problem. This binary keeps the system
//! allocator, so `libc::malloc` is glibc's.

use std::os::unix::process::ExitStatusExt;
use std::thread;

use arenalloc_engine as engine;
use arenalloc_tests::{contains, run_in_child};

const SCENARIO_VAR: &str = "ARENALLOC_MISUSE";
/// Exit status of a child whose misuse went unnoticed.
const NOT_DETECTED: i32 = 42;

/// Runs `misuse` in a child process (or, in the child, runs it) and checks
/// the child aborted with arenalloc's message about the pointer `misuse`
/// reported, containing `problem`.
fn expect_abort(test_name: &str, problem: &str, misuse: fn() -> *mut u8) {
    if std::env::var(SCENARIO_VAR).as_deref() == Ok(test_name) {
        // In the child: the misuse prints its pointer and must not return.
        misuse();
        std::process::exit(NOT_DETECTED);
    }
    let out = run_in_child(test_name, SCENARIO_VAR, test_name);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!("child status: {:?}\nchild stderr:\n{stderr}", out.status);
    assert_ne!(
        out.status.code(),
        Some(NOT_DETECTED),
        "misuse was not detected\n{report}"
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "child did not die of SIGABRT\n{report}"
    );
    let pointer = stderr
        .lines()
        .find_map(|l| l.strip_prefix("misusing "))
        .unwrap_or_else(|| panic!("the child did not reach the misuse\n{report}"))
        .to_string();
    let line = stderr
        .lines()
        .find(|l| l.starts_with("arenalloc: "))
        .unwrap_or_else(|| panic!("no arenalloc message on stderr\n{report}"));
    assert!(
        contains(line.as_bytes(), &pointer),
        "message does not name the pointer {pointer}\n{report}"
    );
    assert!(
        contains(line.as_bytes(), problem),
        "message does not say {problem:?}\n{report}"
    );
}

fn announce(p: *mut u8) {
    eprintln!("misusing {p:p}");
}

#[test]
fn free_of_a_stack_address_aborts() {
    expect_abort(
        "free_of_a_stack_address_aborts",
        "not allocated by arenalloc",
        || {
            let mut local = [0u8; 64];
            let p = std::hint::black_box(local.as_mut_ptr());
            announce(p);
            // SAFETY: deliberately invalid: the engine must abort.
            unsafe { engine::free(p) };
            p
        },
    );
}

#[test]
fn free_of_a_glibc_block_aborts() {
    expect_abort(
        "free_of_a_glibc_block_aborts",
        "not allocated by arenalloc",
        || {
            // SAFETY: plain glibc malloc.
            let p = unsafe { libc::malloc(100) }.cast::<u8>();
            assert!(!p.is_null());
            announce(p);
            // SAFETY: deliberately invalid: the engine must abort.
            unsafe { engine::free(p) };
            p
        },
    );
}

#[test]
fn immediate_double_free_of_a_small_block_aborts() {
    expect_abort(
        "immediate_double_free_of_a_small_block_aborts",
        "double free",
        || {
            let p = engine::malloc(48);
            assert!(!p.is_null());
            announce(p);
            // SAFETY: the first free is valid, the second deliberately not.
            unsafe {
                engine::free(p);
                engine::free(p);
            }
            p
        },
    );
}

#[test]
fn immediate_double_free_of_a_medium_block_aborts() {
    expect_abort(
        "immediate_double_free_of_a_medium_block_aborts",
        "double free",
        || {
            // Another block of the span stays live, so the span is not
            // given back between the two frees.
            let keep = engine::malloc(20_000);
            let p = engine::malloc(20_000);
            assert!(!p.is_null() && !keep.is_null());
            announce(p);
            // SAFETY: the first free is valid, the second deliberately not.
            unsafe {
                engine::free(p);
                engine::free(p);
            }
            p
        },
    );
}

#[test]
fn immediate_double_free_of_a_large_block_aborts() {
    expect_abort(
        "immediate_double_free_of_a_large_block_aborts",
        "double free",
        || {
            let p = engine::malloc(1 << 20);
            assert!(!p.is_null());
            announce(p);
            // SAFETY: the first free is valid, the second deliberately not.
            unsafe {
                engine::free(p);
                engine::free(p);
            }
            p
        },
    );
}

#[test]
fn interior_pointer_freed_from_another_thread_aborts() {
    expect_abort(
        "interior_pointer_freed_from_another_thread_aborts",
        "not a block in use",
        || {
            let p = engine::malloc(64);
            assert!(!p.is_null());
            // SAFETY: inside the 64-byte block.
            let interior = unsafe { p.add(32) } as usize;
            thread::spawn(move || {
                let q = interior as *mut u8;
                announce(q);
                // SAFETY: deliberately invalid: the engine must abort.
                unsafe { engine::free(q) };
            })
            .join()
            .ok();
            interior as *mut u8
        },
    );
}

#[test]
fn interior_pointer_of_a_large_block_aborts() {
    expect_abort(
        "interior_pointer_of_a_large_block_aborts",
        "not the start of a block",
        || {
            let p = engine::malloc(512 * 1024);
            assert!(!p.is_null());
            // SAFETY: inside the block.
            let q = unsafe { p.add(4096) };
            announce(q);
            // SAFETY: deliberately invalid: the engine must abort.
            unsafe { engine::free(q) };
            q
        },
    );
}
