//! `ARENALLOC_SECURE=1`: freed small blocks are zeroed and kept from reuse
//! for a while (so a double free after allocations of the same size is still
//! caught), large blocks have a guard page after their end and are unmapped
//! when freed, and blocks keep their contents under a threaded workload.
//!
//! Each case runs in a child process with the setting (this binary re-run
//! for one test with `SECURE_CHILD=<test>`): the engine reads it once. The
//! binary keeps the system allocator; the engine is called directly.

use std::thread;
use std::time::Duration;

use arenalloc_engine as engine;
use arenalloc_tests::{contains, pattern, run_in_child_timed, Rng};

const CHILD_VAR: &str = "SECURE_CHILD";

/// How a child ended: its exit code or signal, and its stderr.
struct Ended {
    code: Option<i32>,
    signal: Option<i32>,
    stderr: String,
    report: String,
}

/// In the child: runs `body`. In the test process: runs this binary for
/// `name` alone with `ARENALLOC_SECURE=1` and returns how the child ended.
fn secure_child(name: &str, body: fn()) -> Option<Ended> {
    if std::env::var(CHILD_VAR).as_deref() == Ok(name) {
        body();
        println!("{name}: done");
        return None;
    }
    let run = run_in_child_timed(
        name,
        &[(CHILD_VAR, name), ("ARENALLOC_SECURE", "1")],
        &[],
        Duration::from_secs(120),
    );
    let report = run.report(name);
    let status = run.status.clone();
    let code = status
        .strip_prefix("exit status: ")
        .and_then(|c| c.trim().parse().ok());
    let signal = status
        .split("signal: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok());
    assert!(
        code.is_some() || signal.is_some(),
        "the child neither exited nor was killed by a signal\n{report}"
    );
    if code == Some(0) {
        assert!(contains(&run.stdout, &format!("{name}: done")), "{report}");
    }
    Some(Ended {
        code,
        signal,
        stderr: String::from_utf8_lossy(&run.stderr).into_owned(),
        report,
    })
}

fn expect_success(name: &str, body: fn()) {
    if let Some(ended) = secure_child(name, body) {
        assert_eq!(ended.code, Some(0), "{}", ended.report);
    }
}

fn expect_signal(name: &str, signal: i32, body: fn()) {
    if let Some(ended) = secure_child(name, body) {
        assert_eq!(ended.signal, Some(signal), "{}", ended.report);
    }
}

#[test]
fn a_freed_small_block_is_zeroed_and_not_handed_out_again_at_once() {
    expect_success(
        "a_freed_small_block_is_zeroed_and_not_handed_out_again_at_once",
        || {
            assert!(engine::secure::enabled());
            let keep = engine::malloc(64);
            let p = engine::malloc(64);
            // SAFETY: 64 bytes of ours; read after the free deliberately
            // (the memory stays mapped: its span holds `keep`).
            unsafe {
                p.write_bytes(0xaa, 64);
                engine::free(p);
                let bytes = std::slice::from_raw_parts(p, 64);
                // Bytes 8..16 hold the encoded link.
                assert!(bytes[..8].iter().all(|&b| b == 0), "{bytes:?}");
                assert!(bytes[16..].iter().all(|&b| b == 0), "{bytes:?}");
            }
            for _ in 0..100 {
                let q = engine::malloc(64);
                assert_ne!(q, p, "a freed block was handed out again at once");
                // SAFETY: a block of ours.
                unsafe { engine::free(q) };
            }
            // SAFETY: a block of ours.
            unsafe { engine::free(keep) };
        },
    );
}

#[test]
fn a_double_free_after_allocations_of_its_size_aborts() {
    // By default the freed block heads its span's free list and the next
    // allocation of its size takes it: the second free then frees that new
    // allocation, which no allocator can tell from a valid free. In secure
    // mode the block waits until its span has used its other free blocks.
    let Some(ended) = secure_child("a_double_free_after_allocations_of_its_size_aborts", || {
        let p = engine::malloc(48);
        // SAFETY: the first free is valid.
        unsafe { engine::free(p) };
        let held: Vec<*mut u8> = (0..50).map(|_| engine::malloc(48)).collect();
        assert!(!held.contains(&p), "the freed block came back at once");
        eprintln!("misusing {p:p}");
        // SAFETY: deliberately invalid: the engine must abort.
        unsafe { engine::free(p) };
        std::process::exit(42);
    }) else {
        return;
    };
    assert_eq!(ended.signal, Some(libc::SIGABRT), "{}", ended.report);
    assert!(ended.stderr.contains("double free"), "{}", ended.report);
}

#[test]
fn rust_dealloc_of_a_foreign_pointer_aborts_in_secure_mode() {
    // By default Rust's `dealloc` trusts its contract (the block is ours) and
    // skips the ownership map; unsafe code can break that contract, and in
    // secure mode the map's check stays.
    let Some(ended) = secure_child(
        "rust_dealloc_of_a_foreign_pointer_aborts_in_secure_mode",
        || {
            // SAFETY: glibc's malloc (this binary keeps the system allocator).
            let p = unsafe { libc::malloc(64) }.cast::<u8>();
            eprintln!("misusing {p:p}");
            let layout = std::alloc::Layout::from_size_align(64, 8).unwrap();
            // SAFETY: deliberately invalid: the engine must abort.
            unsafe { std::alloc::GlobalAlloc::dealloc(&arenalloc::ArenaAlloc, p, layout) };
            std::process::exit(42);
        },
    ) else {
        return;
    };
    assert_eq!(ended.signal, Some(libc::SIGABRT), "{}", ended.report);
    assert!(
        ended.stderr.contains("not allocated by arenalloc"),
        "{}",
        ended.report
    );
}

/// The permissions of the mapping that holds `addr`, from
/// `/proc/self/maps` (`None`: nothing is mapped there).
fn permissions_at(addr: usize) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let range = fields.next()?;
        let perms = fields.next()?;
        let (lo, hi) = range.split_once('-')?;
        let (lo, hi) = (
            usize::from_str_radix(lo, 16).ok()?,
            usize::from_str_radix(hi, 16).ok()?,
        );
        (lo <= addr && addr < hi).then(|| perms.to_string())
    })
}

#[test]
fn the_byte_after_a_large_block_is_a_guard_page_and_writing_it_faults() {
    expect_signal(
        "the_byte_after_a_large_block_is_a_guard_page_and_writing_it_faults",
        libc::SIGSEGV,
        || {
            let mut blocks = Vec::new();
            for size in [300 * 1024, 1 << 20, (4 << 20) - 4096, 5 << 20] {
                let p = engine::malloc(size);
                // SAFETY: the usable size of a live block.
                let usable = unsafe { engine::usable_size(p) };
                assert!(
                    usable - size < 16,
                    "{} bytes between the end of a block of {size} B and its guard",
                    usable - size
                );
                assert_eq!(
                    permissions_at(p as usize + usable).as_deref(),
                    Some("---p"),
                    "no guard page after a block of {size} B"
                );
                blocks.push((p, usable));
            }
            let (p, usable) = blocks[0];
            // SAFETY: deliberately invalid: the guard page must fault.
            unsafe { p.add(usable).write_volatile(1) };
            std::process::exit(0);
        },
    );
}

#[test]
fn reading_a_freed_large_block_faults() {
    expect_signal("reading_a_freed_large_block_faults", libc::SIGSEGV, || {
        let p = engine::malloc(1 << 20);
        // SAFETY: valid free, then a deliberately invalid read.
        unsafe {
            engine::free(p);
            let _ = p.read_volatile();
        }
        std::process::exit(0);
    });
}

#[test]
fn blocks_keep_their_contents_across_threads_in_secure_mode() {
    expect_success(
        "blocks_keep_their_contents_across_threads_in_secure_mode",
        || {
            // Four threads allocate blocks of 16 B to 600 KiB (small,
            // medium, large), write a pattern, free some of their own and
            // hand the rest to the next thread, which checks and frees them.
            let handles: Vec<_> = (0..4u64)
                .map(|t| {
                    thread::spawn(move || {
                        let mut rng = Rng::new(0x5ec + t);
                        let mut kept = Vec::new();
                        for i in 0..20_000u64 {
                            let size = rng.log_range(16, 600 * 1024);
                            let p = engine::malloc(size);
                            assert!(!p.is_null());
                            // SAFETY: `size` bytes of ours.
                            unsafe { pattern::fill(p, size, t << 32 | i) };
                            if rng.one_in(2) {
                                kept.push((p as usize, size, t << 32 | i));
                            } else {
                                // SAFETY: a block of ours.
                                unsafe {
                                    pattern::check(p, size, t << 32 | i).unwrap();
                                    engine::free(p);
                                }
                            }
                            if kept.len() > 500 {
                                let (p, size, seed) = kept.swap_remove(rng.below(kept.len()));
                                // SAFETY: a live block of ours.
                                unsafe {
                                    pattern::check(p as *const u8, size, seed).unwrap();
                                    engine::free(p as *mut u8);
                                }
                            }
                        }
                        kept
                    })
                })
                .collect();
            let kept: Vec<_> = handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect();
            for (p, size, seed) in kept {
                // SAFETY: live blocks of ours, freed here by another thread.
                unsafe {
                    pattern::check(p as *const u8, size, seed).unwrap();
                    engine::free(p as *mut u8);
                }
            }
        },
    );
}

#[test]
fn spans_emptied_by_frees_go_back_while_the_thread_allocates_other_sizes() {
    expect_success(
        "spans_emptied_by_frees_go_back_while_the_thread_allocates_other_sizes",
        || {
            // No housekeeper: only the thread's own slow paths may notice.
            engine::purger::set_background(false);
            let x = engine::arena_new().expect("an arena");
            engine::arena_set(x).expect("enter it");
            let small: Vec<usize> = (0..65_536).map(|_| engine::malloc(64) as usize).collect();
            for &p in &small {
                // SAFETY: blocks of ours (in secure mode every free goes
                // through the span's remote list).
                unsafe { engine::free(p as *mut u8) };
            }
            let before = engine::arena_stats(x).unwrap().in_use_bytes;
            let large: Vec<usize> = (0..4096).map(|_| engine::malloc(1024) as usize).collect();
            let after = engine::arena_stats(x).unwrap().in_use_bytes;
            println!(
                "in use: {} KiB after freeing 4 MiB of 64 B blocks, {} KiB after 4 MiB of 1 KiB blocks",
                before >> 10,
                after >> 10
            );
            assert!(
                after < before + (1 << 20),
                "the emptied 64 B spans stayed in use: {before} then {after} bytes"
            );
            for &p in &large {
                // SAFETY: blocks of ours.
                unsafe { engine::free(p as *mut u8) };
            }
            engine::arena_set(engine::arena_default()).expect("leave it");
        },
    );
}
