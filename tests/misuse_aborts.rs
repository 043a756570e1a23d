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

// ------------- the owner's own frees and reallocs (issue 10's misuse list)

/// A live 64-byte block, with a neighbour kept live so that its span is
/// busy whatever happens to the block.
fn busy_block() -> *mut u8 {
    let keep = engine::malloc(64);
    let p = engine::malloc(64);
    assert!(!p.is_null() && !keep.is_null());
    p
}

#[test]
fn free_of_an_interior_pointer_16_bytes_in_on_the_owning_thread_aborts() {
    expect_abort(
        "free_of_an_interior_pointer_16_bytes_in_on_the_owning_thread_aborts",
        "not the start of a block",
        || {
            // SAFETY: inside the 64-byte block.
            let q = unsafe { busy_block().add(16) };
            announce(q);
            // SAFETY: deliberately invalid: the engine must abort.
            unsafe { engine::free(q) };
            q
        },
    );
}

#[test]
fn free_of_an_interior_pointer_1_byte_in_on_the_owning_thread_aborts() {
    expect_abort(
        "free_of_an_interior_pointer_1_byte_in_on_the_owning_thread_aborts",
        "not the start of a block",
        || {
            // SAFETY: inside the 64-byte block.
            let q = unsafe { busy_block().add(1) };
            announce(q);
            // SAFETY: deliberately invalid: the engine must abort.
            unsafe { engine::free(q) };
            q
        },
    );
}

/// A block of 20 000 bytes in a tail slice of its span (spans of that class
/// have three 64 KiB slices; `free` must find such a block's span through
/// the head), with the span's other blocks live.
fn block_in_a_tail_slice() -> *mut u8 {
    let blocks: Vec<*mut u8> = (0..9).map(|_| engine::malloc(20_000)).collect();
    assert!(blocks.iter().all(|b| !b.is_null()));
    let first = *blocks.iter().min().unwrap() as usize;
    assert!(
        blocks.iter().all(|&b| (b as usize) < first + 3 * (1 << 16)),
        "expected one span of three slices: {blocks:?}"
    );
    let p = *blocks
        .iter()
        .find(|&&b| b as usize - first >= 1 << 16)
        .expect("a block past the first slice of its span");
    std::mem::forget(blocks);
    p
}

#[test]
fn double_free_in_a_tail_slice_of_a_span_aborts() {
    expect_abort(
        "double_free_in_a_tail_slice_of_a_span_aborts",
        "double free",
        || {
            let p = block_in_a_tail_slice();
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
fn interior_pointer_in_a_tail_slice_on_the_owning_thread_aborts() {
    expect_abort(
        "interior_pointer_in_a_tail_slice_on_the_owning_thread_aborts",
        "not the start of a block",
        || {
            // SAFETY: inside the 20 000-byte block.
            let q = unsafe { block_in_a_tail_slice().add(16) };
            announce(q);
            // SAFETY: deliberately invalid: the engine must abort.
            unsafe { engine::free(q) };
            q
        },
    );
}

#[test]
fn double_free_after_allocs_busy() {
    expect_abort("double_free_after_allocs_busy", "double free", || {
        // Freed, then other blocks of its span freed after it, so it is no
        // longer at the head of the free list, and more allocations.
        let p = busy_block();
        let others: Vec<*mut u8> = (0..5).map(|_| engine::malloc(64)).collect();
        let later: Vec<*mut u8> = (0..3).map(|_| engine::malloc(200)).collect();
        announce(p);
        // SAFETY: the first frees are valid, the last deliberately not.
        unsafe {
            engine::free(p);
            for &o in &others {
                engine::free(o);
            }
            for &l in &later {
                engine::free(l);
            }
            engine::free(p);
        }
        p
    });
}

#[test]
fn double_free_xthread_remote_delayed() {
    expect_abort("double_free_xthread_remote_delayed", "double free", || {
        let p = busy_block() as usize;
        let q = engine::malloc(64) as usize;
        let r = engine::malloc(64) as usize;
        thread::spawn(move || {
            announce(p as *mut u8);
            // SAFETY: the first frees are valid (remote: this thread does
            // not own the span), the last deliberately not.
            unsafe {
                engine::free(p as *mut u8);
                engine::free(q as *mut u8);
                engine::free(r as *mut u8);
                engine::free(p as *mut u8);
            }
        })
        .join()
        .ok();
        p as *mut u8
    });
}

#[test]
fn a_block_freed_by_its_owner_then_again_by_another_thread_aborts() {
    expect_abort(
        "a_block_freed_by_its_owner_then_again_by_another_thread_aborts",
        "double free",
        || {
            let p = busy_block();
            // SAFETY: valid: the owner frees its block; it now heads the
            // owner's free list.
            unsafe { engine::free(p) };
            let addr = p as usize;
            thread::spawn(move || {
                announce(addr as *mut u8);
                // SAFETY: deliberately invalid: the engine must abort.
                unsafe { engine::free(addr as *mut u8) };
            })
            .join()
            .ok();
            // Before the fix the second free went through, and the owner
            // crashed later collecting its remote frees.
            for _ in 0..1000 {
                let q = engine::malloc(64);
                // SAFETY: a block of ours.
                unsafe { engine::free(q) };
            }
            p
        },
    );
}

#[test]
fn realloc_of_a_freed_block_to_a_smaller_size_aborts() {
    expect_abort(
        "realloc_of_a_freed_block_to_a_smaller_size_aborts",
        "freed already",
        || {
            let p = busy_block();
            announce(p);
            // SAFETY: the free is valid, the realloc deliberately not.
            unsafe {
                engine::free(p);
                engine::realloc(p, 40);
            }
            p
        },
    );
}

#[test]
fn realloc_of_a_freed_block_to_a_larger_size_aborts() {
    expect_abort(
        "realloc_of_a_freed_block_to_a_larger_size_aborts",
        "freed already",
        || {
            let p = busy_block();
            announce(p);
            // SAFETY: the free is valid, the realloc deliberately not.
            unsafe {
                engine::free(p);
                engine::realloc(p, 5000);
            }
            p
        },
    );
}

#[test]
fn realloc_of_a_block_freed_by_another_thread_aborts() {
    expect_abort(
        "realloc_of_a_block_freed_by_another_thread_aborts",
        "freed already",
        || {
            let p = busy_block() as usize;
            thread::spawn(move || {
                // SAFETY: valid: a remote free.
                unsafe { engine::free(p as *mut u8) };
            })
            .join()
            .unwrap();
            announce(p as *mut u8);
            // SAFETY: deliberately invalid: the engine must abort.
            unsafe { engine::realloc(p as *mut u8, 100) };
            p as *mut u8
        },
    );
}

// --------------- free lists an overflow or a write after free cannot steer

/// Where an attacker would like `malloc` to return: a `.bss` address.
static mut ATTACKER_TARGET: [u64; 16] = [0; 16];

fn attacker_target() -> u64 {
    std::ptr::addr_of_mut!(ATTACKER_TARGET) as u64
}

/// The start of the 64 KiB slice that holds `p` (the span of a small
/// block), which the corrupt-list message names.
fn span_start_of(p: *mut u8) -> *mut u8 {
    (p as usize & !0xffff) as *mut u8
}

/// Allocates 64-byte blocks until two neighbours come out: `(a, b)` with
/// `b == a + 64`.
fn neighbours() -> (*mut u8, *mut u8) {
    let mut previous = engine::malloc(64);
    loop {
        let next = engine::malloc(64);
        if next as usize == previous as usize + 64 {
            return (previous, next);
        }
        previous = next;
    }
}

/// 64-byte blocks to allocate before a block just freed has surely been
/// reached again, whatever order the span's free lists hand blocks out in
/// (a 64 KiB span holds 1024 of them).
const PAST_THE_SPAN: usize = 2048;

/// Allocates 64-byte blocks until one is refused or lands outside the heap
/// (the attacker's target): the test then failed to detect the steering.
fn malloc_until_steered(blocks: usize) {
    for _ in 0..blocks {
        let q = engine::malloc(64);
        if q as u64 == attacker_target() {
            eprintln!("malloc returned the attacker's address {q:p}");
            std::process::exit(NOT_DETECTED);
        }
    }
}

#[test]
fn an_overflow_into_a_free_neighbour_cannot_steer_malloc() {
    expect_abort(
        "an_overflow_into_a_free_neighbour_cannot_steer_malloc",
        "free list corrupted",
        || {
            let (a, b) = neighbours();
            // SAFETY: valid: `b` is freed; then deliberately invalid: 16
            // bytes written past the end of `a`, over `b`'s first two
            // words (its link is the second).
            unsafe {
                engine::free(b);
                a.add(64).cast::<u64>().write_unaligned(attacker_target());
                a.add(72).cast::<u64>().write_unaligned(attacker_target());
            }
            announce(span_start_of(b));
            malloc_until_steered(PAST_THE_SPAN);
            b
        },
    );
}

#[test]
fn an_overflow_into_one_byte_of_a_free_neighbours_link_cannot_steer_malloc() {
    expect_abort(
        "an_overflow_into_one_byte_of_a_free_neighbours_link_cannot_steer_malloc",
        "free list corrupted",
        || {
            let (a, b) = neighbours();
            // SAFETY: as above, 9 bytes past the end of `a`: the first byte
            // of `b`'s link changes.
            unsafe {
                engine::free(b);
                for i in 64..73 {
                    *a.add(i) ^= 0x40;
                }
            }
            announce(span_start_of(b));
            malloc_until_steered(PAST_THE_SPAN);
            b
        },
    );
}

#[test]
fn a_write_into_a_freed_block_cannot_steer_malloc() {
    expect_abort(
        "a_write_into_a_freed_block_cannot_steer_malloc",
        "free list corrupted",
        || {
            let p = busy_block();
            // SAFETY: valid free; then deliberately invalid: a pointer
            // written over the freed block's first 16 bytes.
            unsafe {
                engine::free(p);
                p.cast::<u64>().write(attacker_target());
                p.cast::<u64>().add(1).write(attacker_target());
            }
            announce(span_start_of(p));
            malloc_until_steered(PAST_THE_SPAN);
            p
        },
    );
}

#[test]
fn an_overflow_into_a_block_freed_by_another_thread_cannot_steer_malloc() {
    expect_abort(
        "an_overflow_into_a_block_freed_by_another_thread_cannot_steer_malloc",
        "free list corrupted",
        || {
            let (a, b) = neighbours();
            let b_addr = b as usize;
            thread::spawn(move || {
                // SAFETY: valid: a remote free.
                unsafe { engine::free(b_addr as *mut u8) };
            })
            .join()
            .unwrap();
            // SAFETY: deliberately invalid: over the remote-freed block's
            // first 16 bytes, with its link, which the owner follows when it
            // collects.
            unsafe {
                a.add(64).cast::<u64>().write_unaligned(attacker_target());
                a.add(72).cast::<u64>().write_unaligned(attacker_target());
            }
            announce(span_start_of(b));
            // Enough to run the span dry, so the owner collects.
            malloc_until_steered(5000);
            b
        },
    );
}

/// Allocates 64-byte blocks until the calling thread's first span of them
/// (1024 blocks) is full and it has moved on to the next; returns that
/// span's blocks.
fn fill_one_span() -> Vec<*mut u8> {
    let blocks: Vec<*mut u8> = (0..1100).map(|_| engine::malloc(64)).collect();
    let span = span_start_of(blocks[0]);
    let in_span: Vec<*mut u8> = blocks
        .iter()
        .copied()
        .filter(|&b| span_start_of(b) == span)
        .collect();
    assert_eq!(in_span.len(), 1024, "the first span is not full");
    in_span
}

/// Starts a thread that frees the block at `x` (the first of two frees of
/// it) and returns once that thread is parked between its check of the
/// block and its push (the `RemoteChecked` pause point); release the point
/// to let it push.
fn free_parked_before_its_push(x: usize) -> thread::JoinHandle<()> {
    use engine::race_hooks::{self, Point};
    let (id_tx, id_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let first = thread::spawn(move || {
        id_tx.send(race_hooks::thread_id()).unwrap();
        go_rx.recv().unwrap();
        // SAFETY: the first of two frees of `x` (the second is the misuse),
        // parked between its check and its push.
        unsafe { engine::free(x as *mut u8) };
    });
    race_hooks::arm(Point::RemoteChecked, id_rx.recv().unwrap());
    go_tx.send(()).unwrap();
    while !race_hooks::is_parked(Point::RemoteChecked) {
        thread::yield_now();
    }
    first
}

/// A double free on the owning thread after the program overwrote the
/// freed block's link word: the second free sees no link and pushes the
/// block again, so the list leads to it twice. A `malloc` hands it out
/// (clearing its link); the next that reaches it finds it again with no
/// link and must abort instead of handing it out twice (a test that only
/// looked for the abort would pass even if the block came out twice and a
/// later check caught the list).
#[test]
fn a_double_free_after_its_link_was_overwritten_is_never_handed_out_twice() {
    expect_abort(
        "a_double_free_after_its_link_was_overwritten_is_never_handed_out_twice",
        "free list corrupted",
        || {
            let p = busy_block();
            announce(span_start_of(p));
            // SAFETY: a valid free; a write after free over the link word;
            // then the double free (the misuse).
            unsafe {
                engine::free(p);
                p.add(8).cast::<u64>().write(0);
                engine::free(p);
            }
            let mut handed_out_p = 0;
            for _ in 0..PAST_THE_SPAN {
                if engine::malloc(64) == p {
                    handed_out_p += 1;
                    if handed_out_p == 2 {
                        eprintln!("malloc handed out {p:p} twice");
                        std::process::exit(NOT_DETECTED);
                    }
                }
            }
            p
        },
    );
}

/// The same double free in a span that is not the thread's current one:
/// the second free makes the span's count of blocks out reach 0 while
/// another block, `a`, is live. The span stays with its heap (its class
/// has few spans with room, so it is kept for the next refills); when it
/// would go back to its arena (with `a`), here by a trim, before any
/// `malloc` reaches the block again, its free blocks are counted first,
/// and the trim aborts.
#[test]
fn a_double_free_after_its_link_was_overwritten_never_lets_its_span_go_with_a_live_block() {
    expect_abort(
        "a_double_free_after_its_link_was_overwritten_never_lets_its_span_go_with_a_live_block",
        "double free",
        || {
            let in_span = fill_one_span();
            let (a, x) = (in_span[0], in_span[1]);
            // SAFETY: valid frees of every block of the span but `a` and
            // `x`; then `x`, a write after free over its link word, and the
            // double free (the misuse).
            unsafe {
                for &b in &in_span[2..] {
                    engine::free(b);
                }
                announce(x);
                engine::free(x);
                x.add(8).cast::<u64>().write(0);
                engine::free(x);
            }
            let _ = engine::trim();
            let _ = a;
            x
        },
    );
}

/// The owner frees a block while another thread frees it too (both look
/// before either pushes), in a span with parked blocks, whose remote list
/// is walked: the remote push overwrites the owner's link, the walk finds a
/// list of one as counted, and the span's count of blocks out reaches 0
/// while `a` is live. The trim that would then give the span back counts
/// its free blocks first, and aborts.
#[test]
fn an_owner_and_a_remote_free_of_one_block_at_once_never_let_its_span_go_with_a_live_block() {
    expect_abort(
        "an_owner_and_a_remote_free_of_one_block_at_once_never_let_its_span_go_with_a_live_block",
        "double free",
        || {
            let mut in_span = fill_one_span();
            in_span.sort();
            let start = in_span[0] as usize;
            let page_of = |b: *mut u8| (b as usize - start) / 4096;
            // Keep the first two pages' blocks; free the rest, and let a trim
            // give their pages back (their blocks are parked).
            let (kept, rest): (Vec<*mut u8>, Vec<*mut u8>) =
                in_span.iter().partition(|&&b| page_of(b) < 2);
            for &b in &rest {
                // SAFETY: valid frees.
                unsafe { engine::free(b) };
            }
            assert!(engine::trim() > 0, "the trim gave nothing back");
            let (a, x) = (kept[0], kept[1]);
            let first = free_parked_before_its_push(x as usize);
            announce(x);
            // SAFETY: deliberately invalid: `x` is being freed by `first`.
            unsafe { engine::free(x) };
            engine::race_hooks::release(engine::race_hooks::Point::RemoteChecked);
            first.join().unwrap();
            for &b in &kept[2..] {
                // SAFETY: valid frees of every kept block but `a` and `x`.
                unsafe { engine::free(b) };
            }
            let _ = engine::trim();
            let _ = a;
            x
        },
    );
}

/// Two threads free the same block at once: both look at its link word
/// before either pushes it (forced: the first parks between its check and
/// its push), and a third thread's push lands between the two, so the
/// second push does not find the block at the head of the span's remote
/// list and links it in again: the list becomes a cycle. The owner takes
/// that list whole, without walking it, when its own list runs dry; the
/// block comes round a second time with its link cleared (it was handed
/// out), and `malloc` must abort before handing it out twice.
#[test]
fn a_block_freed_by_two_threads_at_once_is_never_handed_out_twice() {
    expect_abort(
        "a_block_freed_by_two_threads_at_once_is_never_handed_out_twice",
        "free list corrupted",
        || {
            let (x, y) = neighbours();
            let (x_addr, y_addr) = (x as usize, y as usize);
            let first = free_parked_before_its_push(x_addr);
            announce(span_start_of(x));
            // SAFETY: deliberately invalid: `x` is being freed by `first`.
            thread::spawn(move || unsafe { engine::free(x_addr as *mut u8) })
                .join()
                .unwrap();
            // SAFETY: a valid remote free of `y`.
            thread::spawn(move || unsafe { engine::free(y_addr as *mut u8) })
                .join()
                .unwrap();
            engine::race_hooks::release(engine::race_hooks::Point::RemoteChecked);
            first.join().unwrap();
            // Run the span dry so the owner takes the remote list; keep
            // every block, so a block handed out twice shows.
            let mut held = std::collections::HashSet::new();
            for _ in 0..5000 {
                let q = engine::malloc(64) as usize;
                if !held.insert(q) {
                    eprintln!("malloc handed out {q:#x} twice");
                    std::process::exit(NOT_DETECTED);
                }
            }
            x
        },
    );
}

/// The same race, in a span that is full when the owner takes the remote
/// list (so it is taken whole, without a walk) and that still holds one
/// live block, `a`: the block pushed twice counts twice, the span's count of
/// blocks out reaches 0 while `a` is live, and the owner's exit would hand
/// the span (and `a` with it) back to the arena. The span's free blocks are
/// counted before it goes, and the exit aborts instead.
#[test]
fn a_block_freed_by_two_threads_at_once_never_lets_its_span_go_with_a_live_block() {
    expect_abort(
        "a_block_freed_by_two_threads_at_once_never_lets_its_span_go_with_a_live_block",
        "double free",
        || {
            // The owner fills one span of 64-byte blocks (1024 of them) and
            // moves on to the next, then waits for the word to exit.
            let (blocks_tx, blocks_rx) = std::sync::mpsc::channel();
            let (exit_tx, exit_rx) = std::sync::mpsc::channel::<()>();
            let owner = thread::spawn(move || {
                let blocks: Vec<usize> = fill_one_span().iter().map(|&b| b as usize).collect();
                blocks_tx.send(blocks).unwrap();
                exit_rx.recv().unwrap();
            });
            let in_span = blocks_rx.recv().unwrap();
            let (x, y, others) = (in_span[1], in_span[2], in_span[3..].to_vec());
            let first = free_parked_before_its_push(x);
            announce(x as *mut u8);
            // SAFETY: deliberately invalid: `x` is being freed by `first`.
            thread::spawn(move || unsafe { engine::free(x as *mut u8) })
                .join()
                .unwrap();
            // SAFETY: valid remote frees of every other block but `a`.
            thread::spawn(move || unsafe {
                engine::free(y as *mut u8);
                for o in others {
                    engine::free(o as *mut u8);
                }
            })
            .join()
            .unwrap();
            engine::race_hooks::release(engine::race_hooks::Point::RemoteChecked);
            first.join().unwrap();
            exit_tx.send(()).unwrap();
            owner.join().unwrap();
            x as *mut u8
        },
    );
}

// ------------- blocks never handed out, and blocks parked by a purge

/// A block start of a live span that was never handed out: the span has
/// carved its first page of 64-byte blocks only.
fn never_handed_out() -> *mut u8 {
    let p = busy_block();
    let span = p as usize & !0xffff;
    // Block 500 of the span: far past the first page's 64 blocks.
    (span + 500 * 64) as *mut u8
}

#[test]
fn free_of_a_block_never_handed_out_aborts() {
    expect_abort(
        "free_of_a_block_never_handed_out_aborts",
        "never handed out",
        || {
            let q = never_handed_out();
            announce(q);
            // SAFETY: deliberately invalid: the engine must abort.
            unsafe { engine::free(q) };
            q
        },
    );
}

#[test]
fn free_of_a_block_never_handed_out_from_another_thread_aborts() {
    expect_abort(
        "free_of_a_block_never_handed_out_from_another_thread_aborts",
        "not a block in use",
        || {
            let q = never_handed_out() as usize;
            thread::spawn(move || {
                announce(q as *mut u8);
                // SAFETY: deliberately invalid: the engine must abort.
                unsafe { engine::free(q as *mut u8) };
            })
            .join()
            .ok();
            q as *mut u8
        },
    );
}

/// 256 blocks of 64 B: four pages. Frees the third page's blocks (and
/// block 1 too if `and_block_1`), keeps the rest; a trim gives that page
/// back and parks its blocks (their link words are gone with it). Returns
/// the third page's blocks, all free and parked.
fn third_page_parked_by_a_trim(and_block_1: bool) -> Vec<*mut u8> {
    let blocks: Vec<*mut u8> = (0..256).map(|_| engine::malloc(64)).collect();
    let base = blocks[0] as usize;
    let in_third_page: Vec<*mut u8> = blocks
        .iter()
        .copied()
        .filter(|&b| (b as usize - base) / 4096 == 2)
        .collect();
    assert_eq!(in_third_page.len(), 64, "blocks not laid out in order");
    for &b in &in_third_page {
        // SAFETY: valid frees.
        unsafe { engine::free(b) };
    }
    if and_block_1 {
        // SAFETY: a valid free.
        unsafe { engine::free(blocks[1]) };
    }
    assert!(engine::trim() > 0, "the trim gave nothing back");
    in_third_page
}

/// Another thread frees a block that a trim parked (its page given back,
/// so its link word reads zero and the remote free's look passes it); the
/// owner then works in the span, its current one, until its frees bring
/// the parked blocks back (the 64th). The remote list must be collected,
/// and the double free caught, before the parked blocks are relinked.
#[test]
fn a_remote_double_free_of_a_parked_block_aborts_when_the_owner_brings_the_parked_blocks_back() {
    expect_abort(
        "a_remote_double_free_of_a_parked_block_aborts_when_the_owner_brings_the_parked_blocks_back",
        "double free",
        || {
            // Block 1 freed too, so the owner's list is not empty and its
            // loop needs no refill (whose collection would catch the double
            // free first).
            let in_third_page = third_page_parked_by_a_trim(true);
            let p = in_third_page[5];
            announce(p);
            let q = p as usize;
            thread::spawn(move || {
                // SAFETY: deliberately invalid: a parked block freed again.
                unsafe { engine::free(q as *mut u8) };
            })
            .join()
            .unwrap();
            for _ in 0..64 {
                let b = engine::malloc(64);
                // SAFETY: a valid pair.
                unsafe { engine::free(b) };
            }
            p
        },
    );
}

#[test]
fn double_free_of_a_block_whose_page_was_purged_aborts() {
    expect_abort(
        "double_free_of_a_block_whose_page_was_purged_aborts",
        "double free",
        || {
            let in_third_page = third_page_parked_by_a_trim(false);
            let p = in_third_page[5];
            announce(p);
            // SAFETY: deliberately invalid: the engine must abort.
            unsafe { engine::free(p) };
            p
        },
    );
}
