//! Per-arena control: destroy, stale handles, the default arena, limits,
//! statistics against a model, thread counts, cross-arena frees, a shared
//! arena under stress, `allocator_api2` collections, the guard on panic, and
//! trim.
//!
//! Tests of one binary run in parallel threads. Four tests need the
//! process to themselves and run in a child process (this binary re-run with
//! `ARENA_CONTROL_CHILD=<test>`, see `in_child`): the destroy test, which
//! measures the process RSS, the stale-handle test, which needs the slot it
//! frees not to be taken by another test's new arena, and the limit test
//! and the trim test, which run without the housekeeper
//! (`ARENALLOC_BACKGROUND=0`). Everything else reads the arena's own
//! statistics (`Arena::stats`), which no other test touches.

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::Duration;

use allocator_api2::alloc::{Allocator, Layout};
use allocator_api2::vec::Vec as ArenaVec;
use arenalloc::{Arena, ArenaAlloc, ArenaError, ArenaStats};
use arenalloc_engine as engine;
use arenalloc_tests::{errno, pattern, rss_bytes, set_errno, test_in_child, Rng};
use engine::size_class::MEDIUM_MAX;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

#[global_allocator]
static GLOBAL: ArenaAlloc = ArenaAlloc;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// The environment variable that makes a re-run of this binary the
/// measuring child of the named test.
const CHILD_VAR: &str = "ARENA_CONTROL_CHILD";

fn engine_handle(arena: Arena) -> engine::ArenaHandle {
    engine::ArenaHandle::from_raw(arena.as_raw()).expect("arena handles are never zero")
}

/// The registry slot a handle names (`(tag << 13) | (slot + 1)`, see
/// allocator/src/registry.rs).
fn slot_of(arena: Arena) -> u64 {
    (arena.as_raw() & 0x1fff) - 1
}

/// `malloc_arena_malloc`: `size` bytes in `arena` without entering it.
fn alloc_in(arena: Arena, size: usize) -> *mut u8 {
    engine::arena_alloc(engine_handle(arena), size, engine::MIN_ALIGN, false)
}

/// Frees a live block of ours.
fn free(p: *mut u8) {
    // SAFETY: callers pass live blocks of ours (or null) and forget them.
    unsafe { engine::free(p) }
}

fn usable(p: *mut u8) -> usize {
    // SAFETY: callers pass live blocks of ours.
    unsafe { engine::usable_size(p) }
}

fn stats(arena: Arena) -> ArenaStats {
    arena.stats().expect("a live arena has statistics")
}

/// Runs `refused`, which must report failure (true) and set errno to
/// `EINVAL`.
fn assert_einval(what: &str, refused: impl FnOnce() -> bool) {
    set_errno(0);
    assert!(refused(), "{what}: a stale handle was accepted");
    assert_eq!(errno(), libc::EINVAL, "{what}: errno");
}

/// Writes every byte of `p..p+len` (so its pages are resident).
fn touch(p: *mut u8, len: usize, byte: u8) {
    // SAFETY: callers pass a live block of at least `len` bytes.
    unsafe { ptr::write_bytes(p, byte, len) }
}

// ---------------------------------------------------------------- destroy

/// Runs `body` alone in a child process (this binary re-run with
/// `ARENA_CONTROL_CHILD=<name> --exact <name>`), where no other test
/// allocates or creates arenas meanwhile; the child must succeed and print
/// a line starting with `<name>: done`.
fn in_child(name: &str, body: fn()) {
    in_child_with(name, &[], body)
}

/// [`in_child`] with `env` added to the child's environment.
fn in_child_with(name: &str, env: &[(&str, &str)], body: fn()) {
    if let Some(run) = test_in_child(CHILD_VAR, name, env, Duration::from_secs(120), body) {
        eprintln!("{}", run.report(name));
    }
}

#[test]
fn destroy_returns_the_arenas_memory_to_the_os() {
    in_child(
        "destroy_returns_the_arenas_memory_to_the_os",
        destroy_and_measure,
    );
}

/// An arena's mapped bytes are summed from what it holds under its lock:
/// its segments, its live large blocks and the freed ones its cache keeps
/// (mapped, for reuse) until a trim unmaps them.
#[test]
fn an_arenas_mapped_bytes_count_its_live_and_cached_large_blocks_and_its_segments() {
    in_child_with(
        "an_arenas_mapped_bytes_count_its_live_and_cached_large_blocks_and_its_segments",
        // No housekeeper: nothing leaves the cache behind the test's back.
        &[("ARENALLOC_BACKGROUND", "0")],
        mapped_bytes_of_an_arena,
    );
}

fn mapped_bytes_of_an_arena() {
    let arena = Arena::new().unwrap();
    assert_eq!(stats(arena).mapped_bytes, 0, "a new arena maps nothing");
    let large = alloc_in(arena, 3 * MIB);
    let live = stats(arena).mapped_bytes;
    assert!(
        (3 * MIB..4 * MIB).contains(&live),
        "one live 3 MiB block: {live} bytes mapped"
    );
    free(large);
    assert_eq!(
        stats(arena).mapped_bytes,
        live,
        "the freed block waits in the cache, still mapped"
    );
    let small = alloc_in(arena, 64);
    let with_segment = stats(arena).mapped_bytes;
    assert_eq!(
        with_segment,
        live + 4 * MIB,
        "a small block maps one 4 MiB segment"
    );
    free(small);
    arena.trim().expect("a live arena trims");
    assert!(
        stats(arena).mapped_bytes < 4 * MIB,
        "after a trim the cached block and the empty segment are gone: {} bytes mapped",
        stats(arena).mapped_bytes
    );
}

/// In the child process, alone: 64 MiB and more in an arena, destroyed.
fn destroy_and_measure() {
    let arena = Arena::new().unwrap();
    let handle = engine_handle(arena);
    let rss_before = rss_bytes();
    let mut rng = Rng::new(0xdead);
    // Small and medium blocks, 32 MiB of them, every byte written.
    let mut small = Vec::with_capacity(64 * 1024);
    let mut small_bytes = 0;
    while small_bytes < 32 * MIB {
        let size = rng.log_range(16, 64 * KIB);
        let p = alloc_in(arena, size);
        assert!(!p.is_null(), "alloc_in({size}) failed");
        touch(p, size, 0xa5);
        small.push(p);
        small_bytes += size;
    }
    // Some through the guard, as a library's allocations would be made (the
    // vector has room: pushing does not allocate inside the arena).
    let mut via_guard = Vec::with_capacity(2048);
    {
        let _in = arena.enter().unwrap();
        for i in 0..2048 {
            let p = engine::malloc(1000 + i);
            assert!(!p.is_null());
            touch(p, 1000 + i, 0x5a);
            via_guard.push(p);
        }
    }
    let guard_bytes: usize = (0..2048).map(|i| 1000 + i).sum();
    // Large blocks, 32 MiB.
    let large: Vec<*mut u8> = (0..8)
        .map(|_| {
            let p = alloc_in(arena, 4 * MIB);
            assert!(!p.is_null());
            touch(p, 4 * MIB, 0x3c);
            p
        })
        .collect();
    for &p in small.iter().chain(&via_guard).chain(&large) {
        assert_eq!(Arena::of(p), Some(arena), "{p:p} is not in the arena");
    }
    let total = small_bytes + guard_bytes + 32 * MIB;
    let s = stats(arena);
    assert_eq!(s.live_blocks, small.len() + via_guard.len() + large.len());
    assert!(
        s.live_bytes >= total,
        "live {} < requested {total}",
        s.live_bytes
    );
    assert!(
        s.resident_bytes >= total,
        "{total} bytes written but only {} resident",
        s.resident_bytes
    );
    assert!(s.mapped_bytes >= s.resident_bytes);
    let rss_full = rss_bytes();
    assert!(
        rss_full >= rss_before + total * 9 / 10,
        "RSS grew by {} only, {total} bytes written",
        rss_full.saturating_sub(rss_before)
    );
    let mapped_full = engine::stats().mapped_bytes;

    // SAFETY: no block of the arena is used again; no thread is in it.
    unsafe { arena.destroy() }.expect("destroy a live arena");

    let mapped_after = engine::stats().mapped_bytes;
    let rss_after = rss_bytes();
    assert_eq!(arena.stats(), Err(ArenaError::StaleHandle));
    assert_einval("arena_set", || engine::arena_set(handle).is_none());
    assert_einval("arena_stats", || engine::arena_stats(handle).is_none());
    assert_einval("arena_alloc", || {
        engine::arena_alloc(handle, 64, 16, false).is_null()
    });
    assert!(
        mapped_full - mapped_after >= s.mapped_bytes,
        "the process unmapped {} bytes, the arena had {} mapped",
        mapped_full - mapped_after,
        s.mapped_bytes
    );
    let released = rss_full.saturating_sub(rss_after);
    assert!(
        released >= s.resident_bytes * 9 / 10,
        "RSS fell by {released} bytes only; the arena had {} resident (RSS {rss_full} -> {rss_after})",
        s.resident_bytes
    );
    // The thread goes on in the default arena.
    assert_eq!(Arena::current(), Arena::default_arena());
    let v = vec![1u8; 100_000];
    assert_eq!(Arena::of(v.as_ptr()), Some(Arena::default_arena()));
    println!(
        "{} MiB resident in the arena, RSS {} -> {} MiB",
        s.resident_bytes >> 20,
        rss_full >> 20,
        rss_after >> 20
    );
}

/// In a child process: in this one, tests running in parallel could take
/// the freed slot first (and some keep their arenas for good).
#[test]
fn a_destroyed_arenas_handle_is_refused_everywhere_and_its_slot_gets_a_new_one() {
    in_child(
        "a_destroyed_arenas_handle_is_refused_everywhere_and_its_slot_gets_a_new_one",
        stale_handles_and_slot_reuse,
    );
}

fn stale_handles_and_slot_reuse() {
    let old = Arena::new().unwrap();
    let h = engine_handle(old);
    old.set_limit(Some(3 * MIB)).unwrap();
    for size in [100, 300 * KIB] {
        assert!(!alloc_in(old, size).is_null());
    }
    {
        let _in = old.enter().unwrap();
        assert!(!engine::malloc(5000).is_null());
    }
    let before = Arena::current();
    // SAFETY: the blocks are forgotten; no other thread knows the arena.
    unsafe { old.destroy() }.unwrap();

    assert_eq!(old.enter().err(), Some(ArenaError::StaleHandle));
    assert_einval("arena_set", || engine::arena_set(h).is_none());
    assert_eq!(
        Arena::current(),
        before,
        "a refused switch changed the arena"
    );
    assert_eq!(old.stats(), Err(ArenaError::StaleHandle));
    assert_einval("arena_stats", || engine::arena_stats(h).is_none());
    assert_eq!(old.trim(), Err(ArenaError::StaleHandle));
    assert_einval("arena_trim", || engine::arena_trim(h).is_none());
    assert_eq!(old.set_limit(Some(MIB)), Err(ArenaError::StaleHandle));
    assert_eq!(old.set_limit(None), Err(ArenaError::StaleHandle));
    assert_einval("arena_set_limit", || !engine::arena_set_limit(h, MIB));
    for (size, align, zero) in [
        (0, 16, false),
        (64, 16, false),
        (64, 16, true),
        (5000, 4096, false),
        (300 * KIB, 16, false),
        (300 * KIB, 16, true),
        (MIB, 4 * MIB, false),
    ] {
        assert_einval(&format!("arena_alloc({size}, {align}, {zero})"), || {
            engine::arena_alloc(h, size, align, zero).is_null()
        });
    }
    // The `&Arena` impl (what `Vec::new_in(&arena)` uses) and `Arena`'s own.
    let layout = Layout::from_size_align(64, 8).unwrap();
    assert!(<&Arena as Allocator>::allocate(&&old, layout).is_err());
    let zeroed = Layout::from_size_align(200 * KIB, 8).unwrap();
    assert!(<&Arena as Allocator>::allocate_zeroed(&&old, zeroed).is_err());
    assert!(old.allocate(layout).is_err());
    let mut v: ArenaVec<u8, &Arena> = ArenaVec::new_in(&old);
    assert!(v.try_reserve(10).is_err());
    // SAFETY: refused, nothing happens.
    assert_eq!(unsafe { old.destroy() }, Err(ArenaError::StaleHandle));
    // SAFETY: as above.
    assert_einval("arena_destroy", || !unsafe { engine::arena_destroy(h) });
    assert_eq!(Arena::current(), before);

    // The slot lives again (creation takes the lowest free slot) under
    // another handle, with none of the old arena's memory, figures or limit.
    let new = Arena::new().unwrap();
    assert_eq!(slot_of(new), slot_of(old), "the freed slot was not reused");
    assert_ne!(
        new.as_raw(),
        old.as_raw(),
        "a reused slot must change the handle"
    );
    assert_eq!(
        stats(new),
        ArenaStats::default(),
        "the new arena is not fresh"
    );
    let blocks = [alloc_in(new, 100), alloc_in(new, 300 * KIB)];
    for &p in &blocks {
        assert!(!p.is_null());
        assert_eq!(Arena::of(p), Some(new));
    }
    assert_eq!(stats(new).live_blocks, 2);
    // The old handle still names nothing, and never reaches the new arena.
    assert_eq!(old.stats(), Err(ArenaError::StaleHandle));
    assert_einval("arena_alloc after reuse", || {
        engine::arena_alloc(h, 100, 16, false).is_null()
    });
    assert_einval("arena_set after reuse", || engine::arena_set(h).is_none());
    assert_eq!(old.set_limit(Some(1)), Err(ArenaError::StaleHandle));
    assert_eq!(stats(new).limit_bytes, 0);
    assert_eq!(stats(new).live_blocks, 2);
    {
        let _in = new.enter().unwrap();
        assert_eq!(Arena::current(), new);
        assert_eq!(stats(new).threads, 1);
    }
    assert_eq!(old.enter().err(), Some(ArenaError::StaleHandle));
    for p in blocks {
        free(p);
    }
    assert_eq!(stats(new).live_blocks, 0);
    // SAFETY: nothing of it is used again.
    unsafe { new.destroy() }.unwrap();
}

#[test]
fn the_default_arena_cannot_be_destroyed() {
    let default = Arena::default_arena();
    let kept = Box::new([9u8; 200]);
    assert_eq!(Arena::of(kept.as_ptr()), Some(default));
    // SAFETY: refused: nothing is freed.
    assert_eq!(unsafe { default.destroy() }, Err(ArenaError::StaleHandle));
    assert_einval("arena_destroy(default)", || {
        // SAFETY: as above.
        !unsafe { engine::arena_destroy(engine::arena_default()) }
    });
    assert!(default.stats().is_ok(), "the default arena must stay live");
    assert!(kept.iter().all(|&b| b == 9), "a default block changed");
    let fresh = vec![3u64; 50_000];
    assert_eq!(Arena::of(fresh.as_ptr().cast()), Some(default));
    assert_eq!(Arena::current(), default);
    // From a thread in another arena, too.
    let other = Arena::new().unwrap();
    other.run(|| {
        // SAFETY: refused.
        assert_eq!(unsafe { default.destroy() }, Err(ArenaError::StaleHandle));
    });
    assert!(default.stats().is_ok());
}

#[test]
fn a_thread_whose_arena_is_destroyed_falls_back_to_the_default_arena() {
    let outer = Arena::new().unwrap();
    let doomed = Arena::new().unwrap();
    let parked = Arc::new(Barrier::new(2));
    let resumed = Arc::new(Barrier::new(2));
    let t = thread::spawn({
        let (parked, resumed) = (parked.clone(), resumed.clone());
        move || {
            let _outer = outer.enter().unwrap();
            let guard = doomed.enter().unwrap();
            // Small, medium and large blocks of the doomed arena, never
            // touched after the destroy.
            for size in [48, 20_000, 3 * MIB] {
                let p = engine::malloc(size);
                assert!(!p.is_null());
                assert_eq!(Arena::of(p), Some(doomed));
                touch(p, size, 1);
            }
            parked.wait();
            // The main thread destroys `doomed` while this thread waits here.
            resumed.wait();
            assert_eq!(
                Arena::current(),
                Arena::default_arena(),
                "a thread whose arena was destroyed must prefer the default arena"
            );
            let b = Box::new([7u8; 100]);
            assert_eq!(Arena::of(b.as_ptr()), Some(Arena::default_arena()));
            let big = vec![9u8; 2 * MIB];
            assert_eq!(Arena::of(big.as_ptr()), Some(Arena::default_arena()));
            let aligned = engine::malloc_aligned(5000, 4096);
            assert_eq!(Arena::of(aligned), Some(Arena::default_arena()));
            free(aligned);
            let many: Vec<Vec<u64>> = (0..3000u64)
                .map(|i| vec![i; 1 + (i as usize * 7) % 500])
                .collect();
            for (i, v) in many.iter().enumerate() {
                assert!(v.iter().all(|&x| x == i as u64), "block {i} changed");
                assert_eq!(Arena::of(v.as_ptr().cast()), Some(Arena::default_arena()));
            }
            assert!(b.iter().all(|&x| x == 7) && big.iter().all(|&x| x == 9));
            assert_eq!(doomed.enter().err(), Some(ArenaError::StaleHandle));
            // The guard for `doomed` restores `outer`, which is alive.
            drop(guard);
            assert_eq!(Arena::current(), outer);
            let after = Box::new(5u64);
            assert_eq!(Arena::of((&*after as *const u64).cast()), Some(outer));
        }
    });
    parked.wait();
    // `t` is parked on `resumed`, not inside the allocator.
    let s = stats(doomed);
    assert_eq!(s.threads, 1, "the parked thread prefers the doomed arena");
    assert_eq!(s.live_blocks, 3);
    // SAFETY: the thread does not use the arena's blocks again and waits
    // on the barrier while this runs.
    unsafe { doomed.destroy() }.unwrap();
    resumed.wait();
    t.join().expect("the thread that lost its arena failed");
    let s = stats(outer);
    assert_eq!(s.threads, 0);
    assert_eq!(
        s.live_blocks, 0,
        "the thread's blocks in `outer` were freed"
    );
}

// ----------------------------------------------------------------- limits

#[test]
fn a_limit_stops_growth_until_memory_is_freed_or_the_limit_is_lifted() {
    const LIMIT: usize = 4 * MIB;
    let arena = Arena::new().unwrap();
    arena.set_limit(Some(LIMIT)).unwrap();
    assert_eq!(stats(arena).limit_bytes, LIMIT);

    // Small blocks until the limit refuses one.
    let mut small = Vec::new();
    loop {
        set_errno(0);
        let p = alloc_in(arena, 1000);
        if p.is_null() {
            assert_eq!(errno(), libc::ENOMEM, "errno past the limit");
            break;
        }
        small.push(p);
        assert!(
            small.len() <= LIMIT / 1000,
            "the limit never stopped small blocks"
        );
    }
    let s = stats(arena);
    assert!(
        s.in_use_bytes <= LIMIT,
        "in use {} past the limit",
        s.in_use_bytes
    );
    assert!(
        s.in_use_bytes + MIB > LIMIT,
        "refused at {} in use, more than a span short of {LIMIT}",
        s.in_use_bytes
    );
    assert_eq!(s.live_blocks, small.len());
    assert_eq!(s.live_bytes, small.len() * engine::block_size_for(1000));
    assert!(s.peak_in_use_bytes >= s.in_use_bytes);
    let headroom = LIMIT - s.in_use_bytes;
    set_errno(0);
    assert!(
        alloc_in(arena, headroom.max(MEDIUM_MAX) + 1).is_null(),
        "a large block past the limit"
    );
    assert_eq!(errno(), libc::ENOMEM);
    let mut v: ArenaVec<u8, &Arena> = ArenaVec::new_in(&arena);
    assert!(v.try_reserve(headroom.max(MEDIUM_MAX) + 1).is_err());
    assert!(
        <&Arena as Allocator>::allocate(&&arena, Layout::from_size_align(2000, 8).unwrap())
            .is_err(),
        "Allocator::allocate past the limit"
    );

    // Freeing a block lets the next one through.
    free(small.pop().unwrap());
    let again = alloc_in(arena, 1000);
    assert!(
        !again.is_null(),
        "a freed block must be usable again under the limit"
    );
    small.push(again);
    for p in small.drain(..) {
        free(p);
    }
    let s = stats(arena);
    assert_eq!((s.live_blocks, s.live_bytes), (0, 0));
    assert!(
        s.in_use_bytes <= MIB,
        "{} still in use with no block",
        s.in_use_bytes
    );

    // Large blocks until refused; freeing one lets the next through.
    let mut large = Vec::new();
    loop {
        set_errno(0);
        let p = alloc_in(arena, MIB);
        if p.is_null() {
            assert_eq!(errno(), libc::ENOMEM);
            break;
        }
        large.push(p);
        assert!(large.len() <= 4, "the limit never stopped large blocks");
    }
    assert!(
        large.len() >= 2,
        "only {} MiB blocks fit in {LIMIT}",
        large.len()
    );
    assert!(stats(arena).in_use_bytes <= LIMIT);
    free(large.pop().unwrap());
    let p = alloc_in(arena, MIB);
    assert!(!p.is_null(), "a freed large block must make room again");
    large.push(p);

    // realloc growth past the limit fails and keeps the block as it was.
    let p = large[0];
    // SAFETY: a live block of MIB bytes.
    unsafe { pattern::fill_sparse(p, MIB, 11) };
    let (before, usable_before) = (stats(arena), usable(p));
    set_errno(0);
    // SAFETY: a live block of ours.
    let q = unsafe { engine::realloc(p, 8 * MIB) };
    assert!(q.is_null(), "realloc grew a block past the limit");
    assert_eq!(errno(), libc::ENOMEM);
    // SAFETY: still live (realloc failed).
    assert_eq!(unsafe { pattern::check_sparse(p, MIB, 11) }, Ok(()));
    assert_eq!(usable(p), usable_before);
    let after = stats(arena);
    assert_eq!(
        (after.live_blocks, after.live_bytes, after.in_use_bytes),
        (before.live_blocks, before.live_bytes, before.in_use_bytes),
        "a failed realloc changed the arena's figures"
    );
    // A small block grown into a class the arena has no span of.
    let sb = alloc_in(arena, 1000);
    assert!(
        !sb.is_null(),
        "the current span of the class still has room"
    );
    // SAFETY: 1000 writable bytes.
    unsafe { pattern::fill(sb, 1000, 12) };
    let headroom = LIMIT - stats(arena).in_use_bytes;
    let grown = (headroom + 1).max(2 * KIB);
    set_errno(0);
    // SAFETY: a live block of ours.
    assert!(
        unsafe { engine::realloc(sb, grown) }.is_null(),
        "realloc({grown})"
    );
    assert_eq!(errno(), libc::ENOMEM);
    // SAFETY: still live.
    assert_eq!(unsafe { pattern::check(sb, 1000, 12) }, Ok(()));
    // Through allocator_api2: the vector keeps its contents. (Its first
    // block comes from the current span of the 1000-byte class.)
    let mut v: ArenaVec<u8, &Arena> = ArenaVec::new_in(&arena);
    assert!(v.try_reserve_exact(1000).is_ok());
    v.extend_from_slice(&[3u8; 1000]);
    assert!(v.try_reserve(8 * MIB).is_err());
    assert!(v.len() == 1000 && v.iter().all(|&b| b == 3));

    // Lifting the limit.
    arena.set_limit(None).unwrap();
    assert_eq!(stats(arena).limit_bytes, 0);
    // SAFETY: a live block of ours.
    let q = unsafe { engine::realloc(p, 8 * MIB) };
    assert!(!q.is_null(), "realloc without a limit");
    large[0] = q;
    // SAFETY: `q` kept the first MIB bytes.
    assert_eq!(unsafe { pattern::check_sparse(q, MIB, 11) }, Ok(()));
    // SAFETY: a live block of ours.
    let s2 = unsafe { engine::realloc(sb, grown) };
    assert!(!s2.is_null());
    // SAFETY: the first 1000 bytes were kept.
    assert_eq!(unsafe { pattern::check(s2, 1000, 12) }, Ok(()));
    assert!(v.try_reserve(8 * MIB).is_ok());
    let big = alloc_in(arena, 16 * MIB);
    assert!(!big.is_null());
    assert!(stats(arena).in_use_bytes > LIMIT);

    // A limit below what is in use stops growth only.
    arena.set_limit(Some(MIB)).unwrap();
    set_errno(0);
    assert!(alloc_in(arena, 2 * MIB).is_null());
    assert_eq!(errno(), libc::ENOMEM);
    free(big);
    free(s2);
    for p in large {
        free(p);
    }
    drop(v);
    assert_eq!(stats(arena).live_blocks, 0);
    // SAFETY: nothing of it is used again.
    unsafe { arena.destroy() }.unwrap();
}

#[test]
fn a_limit_reached_by_idle_threads_frees_up_when_another_thread_frees_their_blocks() {
    // Without the housekeeper: the case that stayed refused forever, and no
    // purge races the reclaim, so the statistics after it are exact.
    in_child_with(
        "a_limit_reached_by_idle_threads_frees_up_when_another_thread_frees_their_blocks",
        &[("ARENALLOC_BACKGROUND", "0")],
        || limit_frees_up_after_remote_frees(true),
    );
}

#[test]
fn a_limit_reached_by_idle_threads_frees_up_with_the_housekeeper_running() {
    // The housekeeper may collect part of the remote frees first, so the
    // allocation succeeds without a reclaim and the rest stays pending
    // until a later pass: only the allocations are checked.
    limit_frees_up_after_remote_frees(false);
}

/// Two threads fill an arena to its limit and stay alive, idle; this
/// thread frees all their blocks (remote frees). An allocation in the arena
/// must then succeed, small and large; with `exact`, no reclaim raced it,
/// so nothing may be left pending or counted.
fn limit_frees_up_after_remote_frees(exact: bool) {
    const LIMIT: usize = 8 * MIB;
    let arena = Arena::new().unwrap();
    arena.set_limit(Some(LIMIT)).unwrap();
    // Two threads fill the arena to its limit and stay alive, idle, holding
    // the spans of their blocks.
    let (blocks_tx, blocks_rx) = mpsc::channel::<Vec<usize>>();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let exit_rx = Arc::new(std::sync::Mutex::new(exit_rx));
    let fillers: Vec<_> = (0..2)
        .map(|_| {
            let blocks_tx = blocks_tx.clone();
            let exit_rx = Arc::clone(&exit_rx);
            thread::spawn(move || {
                // Not entering the arena: this thread's own allocations
                // (the vector) must not use up the limit.
                let mut blocks = Vec::with_capacity(8 * 1024);
                loop {
                    let p = alloc_in(arena, 1500);
                    if p.is_null() {
                        break;
                    }
                    blocks.push(p as usize);
                }
                blocks_tx.send(blocks).unwrap();
                let _ = exit_rx.lock().unwrap().recv();
            })
        })
        .collect();
    let blocks: Vec<usize> = (0..2).flat_map(|_| blocks_rx.recv().unwrap()).collect();
    assert!(
        blocks.len() > 4000,
        "{} blocks fit under the limit",
        blocks.len()
    );
    assert!(alloc_in(arena, 100).is_null(), "the arena is full");
    // This thread frees every block: remote frees, which the idle owners
    // never collect.
    for &b in &blocks {
        free(b as *mut u8);
    }
    let pending = stats(arena);
    assert!(
        !exact || pending.pending_remote_spans > 0,
        "the stats do not show the remote frees pending: {pending:?}"
    );
    let small = alloc_retrying(arena, 100, exact);
    assert!(
        !small.is_null(),
        "the limit stayed exhausted after every block was freed: {pending:?}"
    );
    let after = stats(arena);
    if exact {
        assert!(
            after.in_use_bytes < LIMIT / 4,
            "freed spans still count against the limit: {after:?}"
        );
        assert_eq!(after.pending_remote_spans, 0, "{after:?}");
    }
    free(small);
    // The same for a large block, from a full arena again.
    let refill: Vec<usize> = (0..blocks.len())
        .map(|_| alloc_in(arena, 1500) as usize)
        .take_while(|&p| p != 0)
        .collect();
    let freer = thread::spawn(move || {
        for b in refill {
            free(b as *mut u8);
        }
    });
    freer.join().unwrap();
    let large = alloc_retrying(arena, 2 * MIB, exact);
    assert!(
        !large.is_null(),
        "a large block was refused after the frees"
    );
    free(large);
    drop(exit_tx);
    for f in fillers {
        f.join().unwrap();
    }
}

/// `alloc_in`, tried again for up to a second unless `once`: with the
/// housekeeper running, a thread whose heap holds the freed blocks may be
/// claimed by it (for another arena) longer than a reclaim waits. The bug
/// this guards against refused the allocation for good.
fn alloc_retrying(arena: Arena, size: usize, once: bool) -> *mut u8 {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let p = alloc_in(arena, size);
        if !p.is_null() || once || std::time::Instant::now() >= deadline {
            return p;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn at_the_limit_blocks_freed_into_a_threads_older_spans_are_found_again() {
    // One thread fills the arena with 1 KiB blocks (64 per span) up to the
    // limit; another frees one block in each of 20 of its spans. The
    // owner's next allocation must find one of them (by its bounded scan of
    // its full spans, or by collecting the remote frees when the limit
    // refuses a new span), not fail.
    const LIMIT: usize = 4 * MIB;
    let arena = Arena::new().unwrap();
    arena.set_limit(Some(LIMIT)).unwrap();
    let (blocks_tx, blocks_rx) = mpsc::channel::<Vec<usize>>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let owner = thread::spawn(move || {
        let mut blocks = Vec::with_capacity(8 * 1024);
        loop {
            let p = alloc_in(arena, 1000);
            if p.is_null() {
                break;
            }
            blocks.push(p as usize);
        }
        blocks_tx.send(blocks).unwrap();
        go_rx.recv().unwrap();
        let p = alloc_in(arena, 1000);
        assert!(
            !p.is_null(),
            "refused at the limit although 20 spans had free blocks"
        );
        free(p);
    });
    let blocks = blocks_rx.recv().unwrap();
    assert!(blocks.len() >= 64 * 40, "{} blocks", blocks.len());
    let mut spans: Vec<usize> = blocks.iter().map(|&b| b & !0xffff).collect();
    spans.dedup();
    let newest: HashSet<usize> = spans.iter().skip(36).take(20).copied().collect();
    assert_eq!(newest.len(), 20, "{} spans", spans.len());
    let mut freed = HashSet::new();
    let mut rest = Vec::new();
    for &b in &blocks {
        if newest.contains(&(b & !0xffff)) && freed.insert(b & !0xffff) {
            free(b as *mut u8);
        } else {
            rest.push(b);
        }
    }
    go_tx.send(()).unwrap();
    owner.join().unwrap();
    for b in rest {
        free(b as *mut u8);
    }
}

// ------------------------------------------------------- stats vs a model

#[derive(Clone, Debug)]
enum StatOp {
    Alloc {
        size: usize,
        align: usize,
        zero: bool,
    },
    Realloc(Index, usize),
    Free(Index),
}

fn stat_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        45 => 0usize..=1024,
        25 => 1025usize..=MEDIUM_MAX,
        10 => prop::sample::select(vec![
            0usize, 1, 16, 17, 128, 129, 1024, 1025, 65_536, MEDIUM_MAX - 1, MEDIUM_MAX,
            MEDIUM_MAX + 1, MIB, MIB + 1,
        ]),
        15 => (MEDIUM_MAX + 1)..=(3 * MIB),
    ]
}

fn stat_align() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => Just(16usize),
        2 => (5u32..=12).prop_map(|b| 1usize << b),
        1 => (13u32..=22).prop_map(|b| 1usize << b),
    ]
}

fn stat_op() -> impl Strategy<Value = StatOp> {
    prop_oneof![
        5 => (stat_size(), stat_align(), any::<bool>())
            .prop_map(|(size, align, zero)| StatOp::Alloc { size, align, zero }),
        2 => (any::<Index>(), stat_size()).prop_map(|(i, s)| StatOp::Realloc(i, s)),
        4 => any::<Index>().prop_map(StatOp::Free),
    ]
}

struct Live {
    p: *mut u8,
    size: usize,
    align: usize,
    usable: usize,
    seed: u64,
}

/// What the arena must report: its live blocks and their usable sizes
/// (ArenaStats::live_bytes is documented as "usable sizes").
struct StatModel {
    arena: Arena,
    blocks: Vec<Live>,
    next_seed: u64,
}

impl StatModel {
    fn check_stats(&self, after: &str) -> Result<(), TestCaseError> {
        let s = stats(self.arena);
        let bytes: usize = self.blocks.iter().map(|b| b.usable).sum();
        prop_assert_eq!(
            s.live_blocks,
            self.blocks.len(),
            "live_blocks after {}",
            after
        );
        prop_assert_eq!(s.live_bytes, bytes, "live_bytes after {}", after);
        prop_assert!(
            s.in_use_bytes >= s.live_bytes,
            "after {after}: in use {} < live {}",
            s.in_use_bytes,
            s.live_bytes
        );
        prop_assert!(s.peak_in_use_bytes >= s.in_use_bytes, "peak below in use");
        prop_assert!(
            s.mapped_bytes >= s.in_use_bytes,
            "after {after}: mapped {} < in use {}",
            s.mapped_bytes,
            s.in_use_bytes
        );
        prop_assert_eq!((s.threads, s.limit_bytes), (0, 0));
        Ok(())
    }

    /// Checks a block the arena returned and fills it. A fresh block of an
    /// ordinary alignment has exactly its size class's usable size; a
    /// realloc may keep a block of a bigger class in place.
    fn admit(
        &mut self,
        p: *mut u8,
        size: usize,
        align: usize,
        fresh: bool,
    ) -> Result<Live, TestCaseError> {
        prop_assert!(!p.is_null(), "allocation of {size} (align {align}) failed");
        prop_assert_eq!(
            p as usize % align.max(16),
            0,
            "{:p} not aligned to {}",
            p,
            align
        );
        prop_assert_eq!(Arena::of(p), Some(self.arena), "{:p} left its arena", p);
        let usable = usable(p);
        prop_assert!(usable >= size, "usable {usable} < {size}");
        if fresh && align <= 16 && size <= MEDIUM_MAX {
            prop_assert_eq!(
                usable,
                engine::block_size_for(size),
                "usable size of {}",
                size
            );
        }
        self.next_seed += 1;
        let seed = self.next_seed;
        // SAFETY: `size` writable bytes.
        unsafe { pattern::fill_sparse(p, size, seed) };
        Ok(Live {
            p,
            size,
            align,
            usable,
            seed,
        })
    }

    fn verify(b: &Live, prefix: usize) -> Result<(), TestCaseError> {
        // SAFETY: a live block with `b.size >= prefix` bytes of pattern.
        let r = unsafe { pattern::check_sparse_prefix(b.p, b.size, prefix, b.seed) };
        prop_assert_eq!(r, Ok(()), "block {:p} of {} lost its contents", b.p, b.size);
        Ok(())
    }

    fn apply(&mut self, op: &StatOp) -> Result<(), TestCaseError> {
        let h = engine_handle(self.arena);
        match *op {
            StatOp::Alloc { size, align, zero } => {
                let p = engine::arena_alloc(h, size, align, zero);
                if zero && !p.is_null() {
                    // SAFETY: `size` readable bytes.
                    let nz = unsafe { pattern::first_nonzero(p, size) };
                    prop_assert_eq!(nz, None, "zeroed block of {} has a non-zero byte", size);
                }
                let live = self.admit(p, size, align, true)?;
                self.blocks.push(live);
            }
            StatOp::Realloc(i, new_size) => {
                if self.blocks.is_empty() {
                    return Ok(());
                }
                let old = self.blocks.swap_remove(i.index(self.blocks.len()));
                Self::verify(&old, old.size)?;
                // SAFETY: a live block of ours with alignment `old.align`.
                let q = unsafe { engine::realloc_aligned(old.p, new_size, old.align) };
                prop_assert!(!q.is_null(), "realloc({}, {new_size}) failed", old.size);
                let kept = Live { p: q, ..old };
                Self::verify(&kept, kept.size.min(new_size))?;
                let live = self.admit(q, new_size, kept.align, false)?;
                self.blocks.push(live);
            }
            StatOp::Free(i) => {
                if self.blocks.is_empty() {
                    return Ok(());
                }
                let b = self.blocks.swap_remove(i.index(self.blocks.len()));
                Self::verify(&b, b.size)?;
                free(b.p);
            }
        }
        Ok(())
    }

    fn run(&mut self, ops: &[StatOp]) -> Result<(), TestCaseError> {
        self.check_stats("creation")?;
        for (n, op) in ops.iter().enumerate() {
            self.apply(op)?;
            self.check_stats(&format!("op {n}: {op:?}"))?;
        }
        while let Some(b) = self.blocks.pop() {
            Self::verify(&b, b.size)?;
            free(b.p);
        }
        self.check_stats("freeing everything")
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn arena_stats_count_exactly_the_live_blocks_and_their_usable_sizes(
        ops in prop::collection::vec(stat_op(), 1..80)
    ) {
        let arena = Arena::new().unwrap();
        let mut model = StatModel { arena, blocks: Vec::new(), next_seed: 0 };
        let result = model.run(&ops);
        // Also after a failure, so shrinking does not run out of arenas.
        // SAFETY: the model's blocks are not used again.
        unsafe { arena.destroy() }.unwrap();
        result?;
    }
}

// -------------------------------------------------------------- switching

/// One step of a thread's life among three dedicated arenas and the default
/// one (index `SWITCH_ARENAS`).
#[derive(Clone, Debug)]
enum SwitchOp {
    Switch(usize),
    Alloc(usize),
    /// Frees the arena's blocks, destroys it and creates a new one.
    Recreate(usize),
}

const SWITCH_ARENAS: usize = 3;

fn switch_op() -> impl Strategy<Value = SwitchOp> {
    prop_oneof![
        6 => (0..=SWITCH_ARENAS).prop_map(SwitchOp::Switch),
        6 => stat_size().prop_map(SwitchOp::Alloc),
        1 => (0..SWITCH_ARENAS).prop_map(SwitchOp::Recreate),
    ]
}

/// Runs `ops`, returning the first step at which the preferred arena or a
/// block's arena was not the expected one. Nothing here allocates through
/// the global allocator while a dedicated arena is preferred (a destroy
/// would free it under the test's feet): `blocks` has room for every step.
fn run_switches(arenas: &mut [Arena; SWITCH_ARENAS], ops: &[SwitchOp]) -> Option<(usize, String)> {
    let handle = |arenas: &[Arena; SWITCH_ARENAS], i: usize| {
        if i == SWITCH_ARENAS {
            engine::arena_default()
        } else {
            engine_handle(arenas[i])
        }
    };
    let mut blocks: Vec<(*mut u8, usize)> = Vec::with_capacity(ops.len());
    let mut preferred = SWITCH_ARENAS;
    let mut failure = None;
    for (step, op) in ops.iter().enumerate() {
        match *op {
            SwitchOp::Switch(i) => {
                let previous = engine::arena_set(handle(arenas, i));
                if previous != Some(handle(arenas, preferred)) {
                    failure = Some((step, "the switch returned the wrong previous arena"));
                }
                preferred = i;
            }
            SwitchOp::Alloc(size) => {
                let p = engine::malloc(size);
                if p.is_null() {
                    failure = Some((step, "malloc failed"));
                } else {
                    blocks.push((p, preferred));
                    if engine::arena_of(p) != Some(handle(arenas, preferred)) {
                        failure = Some((step, "a block landed outside the preferred arena"));
                    }
                }
            }
            SwitchOp::Recreate(i) => {
                let mut b = 0;
                while b < blocks.len() {
                    if blocks[b].1 == i {
                        free(blocks.swap_remove(b).0);
                    } else {
                        b += 1;
                    }
                }
                // SAFETY: the arena's blocks were just freed and no other
                // thread knows it.
                unsafe { engine::arena_destroy(handle(arenas, i)) };
                if preferred == i {
                    preferred = SWITCH_ARENAS;
                }
                match Arena::new() {
                    Ok(arena) => arenas[i] = arena,
                    Err(_) => failure = Some((step, "no new arena")),
                }
            }
        }
        if failure.is_none() && engine::arena_current() != handle(arenas, preferred) {
            failure = Some((step, "the preferred arena is not the expected one"));
        }
        if failure.is_some() {
            break;
        }
    }
    engine::arena_set(engine::arena_default());
    for (p, _) in blocks {
        free(p);
    }
    failure.map(|(step, what)| (step, what.to_string()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Switching back and forth (the switch remembers the heap it left, so
    /// going back is the cheap case) always allocates in the arena the
    /// thread prefers, also when an arena it used was destroyed and its
    /// slot reused.
    #[test]
    fn every_block_lands_in_the_arena_the_thread_prefers_after_any_switches(
        ops in prop::collection::vec(switch_op(), 1..120)
    ) {
        let mut arenas = [(); SWITCH_ARENAS].map(|_| Arena::new().unwrap());
        let failure = run_switches(&mut arenas, &ops);
        for arena in arenas {
            prop_assert_eq!(stats(arena).live_blocks, 0);
            // SAFETY: every block was freed; no other thread knows them.
            unsafe { arena.destroy() }.unwrap();
        }
        if let Some((step, what)) = failure {
            prop_assert!(false, "step {} ({:?}): {}", step, ops[step], what);
        }
    }
}

// ---------------------------------------------------------------- threads

#[test]
fn stats_count_the_threads_that_prefer_the_arena() {
    const ENTERING: usize = 4;
    let arena = Arena::new().unwrap();
    // The entering threads, one bystander that only allocates in the arena
    // without preferring it, and this thread.
    let step = Arc::new(Barrier::new(ENTERING + 2));
    assert_eq!(stats(arena).threads, 0);
    let mut threads = Vec::new();
    for i in 0..ENTERING {
        let step = step.clone();
        threads.push(thread::spawn(move || {
            let guard = arena.enter().unwrap();
            let b = Box::new(i);
            assert_eq!(Arena::of((&*b as *const usize).cast()), Some(arena));
            step.wait(); // 1: all in
            step.wait(); // 2: counted
            drop(b);
            let guard = if i < 2 {
                drop(guard);
                None
            } else {
                Some(guard)
            };
            step.wait(); // 3: two left
            step.wait(); // 4: counted
                         // The others exit while they still prefer the arena.
            std::mem::forget(guard);
        }));
    }
    threads.push(thread::spawn({
        let step = step.clone();
        move || {
            let p = alloc_in(arena, 64);
            assert!(!p.is_null());
            for _ in 0..4 {
                step.wait();
            }
            free(p);
        }
    }));
    step.wait(); // 1
    assert_eq!(stats(arena).threads, ENTERING, "threads that entered");
    {
        let _in = arena.enter().unwrap();
        assert_eq!(
            stats(arena).threads,
            ENTERING + 1,
            "this thread entered too"
        );
    }
    assert_eq!(stats(arena).threads, ENTERING, "after this thread left");
    step.wait(); // 2
    step.wait(); // 3
    assert_eq!(stats(arena).threads, ENTERING - 2, "after two threads left");
    step.wait(); // 4
    for t in threads {
        t.join().unwrap();
    }
    let s = stats(arena);
    assert_eq!(s.threads, 0, "after the last threads exited");
    assert_eq!(s.live_blocks, 0);
}

#[test]
fn a_block_freed_from_another_arena_is_reused_only_by_its_own() {
    const SIZES: [usize; 3] = [48, 3000, 20_000];
    const PER_SIZE: usize = 32;
    let x = Arena::new().unwrap();
    let y = Arena::new().unwrap();
    let blocks: Vec<usize> = SIZES
        .iter()
        .flat_map(|&s| (0..PER_SIZE).map(move |_| alloc_in(x, s) as usize))
        .collect();
    for &p in &blocks {
        assert_eq!(Arena::of(p as *const u8), Some(x));
    }
    let freed: Arc<HashSet<usize>> = Arc::new(blocks.iter().copied().collect());
    assert_eq!(freed.len(), blocks.len());
    // Another thread, preferring Y, frees them, then allocates the same
    // sizes in Y over and over.
    let t = thread::spawn({
        let freed = freed.clone();
        move || {
            let _in_y = y.enter().unwrap();
            for p in blocks {
                free(p as *mut u8);
            }
            let mut mine = Vec::with_capacity(8 * SIZES.len() * PER_SIZE);
            for round in 0..8 {
                for &s in &SIZES {
                    for _ in 0..PER_SIZE {
                        let p = engine::malloc(s);
                        assert_eq!(Arena::of(p), Some(y));
                        assert!(
                            !freed.contains(&(p as usize)),
                            "Y (round {round}) got {p:p}, a block of X"
                        );
                        mine.push(p as usize);
                    }
                }
                // Churn: give half back to Y and go on.
                for p in mine.drain(..mine.len() / 2) {
                    free(p as *mut u8);
                }
            }
            for p in mine {
                free(p as *mut u8);
            }
        }
    });
    t.join().unwrap();
    // From this thread too, Y never hands them out.
    let in_y: Vec<*mut u8> = (0..8)
        .flat_map(|_| SIZES.iter().map(|&s| alloc_in(y, s)))
        .collect();
    for &p in &in_y {
        assert_eq!(Arena::of(p), Some(y));
        assert!(!freed.contains(&(p as usize)), "Y got {p:p}, a block of X");
    }
    // X gets every one of them back.
    let mut again = Vec::new();
    let mut reused = HashSet::new();
    for _ in 0..16 {
        for &s in &SIZES {
            for _ in 0..PER_SIZE {
                let p = alloc_in(x, s);
                assert_eq!(Arena::of(p), Some(x));
                if freed.contains(&(p as usize)) {
                    reused.insert(p as usize);
                }
                again.push(p);
            }
        }
    }
    assert_eq!(
        reused.len(),
        freed.len(),
        "X reused only {} of the {} blocks freed to it",
        reused.len(),
        freed.len()
    );
    assert_eq!(stats(x).live_blocks, again.len());
    assert_eq!(stats(y).live_blocks, in_y.len());
    // A local free while this thread prefers Y also returns the block to X.
    let p = alloc_in(x, 48);
    {
        let _in_y = y.enter().unwrap();
        free(p);
        for _ in 0..64 {
            let q = engine::malloc(48);
            assert_ne!(q, p, "Y got X's block back from a local free");
            assert_eq!(Arena::of(q), Some(y));
            free(q);
        }
    }
    let mut found = false;
    let mut extra = Vec::new();
    for _ in 0..4096 {
        let q = alloc_in(x, 48);
        extra.push(q);
        if q == p {
            found = true;
            break;
        }
    }
    assert!(found, "X never reused its block {p:p} freed under Y");
    for p in again.into_iter().chain(in_y).chain(extra) {
        free(p);
    }
    assert_eq!(stats(x).live_blocks, 0);
    assert_eq!(stats(y).live_blocks, 0);
}

#[test]
fn eight_threads_share_one_arena_under_stress() {
    const THREADS: usize = 8;
    const OPS: usize = 4000;
    const SLOTS: usize = 128;
    let shared = Arena::new().unwrap();
    let done = Arc::new(Barrier::new(THREADS));
    // Thread i sends some of its blocks to thread i + 1, which frees them.
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS)
        .map(|_| mpsc::channel::<(usize, usize, u64)>())
        .unzip();
    let mut rxs: Vec<Option<_>> = rxs.into_iter().map(Some).collect();
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let tx = txs[(i + 1) % THREADS].clone();
            let rx = rxs[i].take().unwrap();
            let done = done.clone();
            thread::spawn(move || {
                let _in = shared.enter().unwrap();
                let h = engine_handle(shared);
                let check_free = |(p, size, seed): (usize, usize, u64), who: &str| {
                    // SAFETY: a live block of `size` bytes filled with `seed`.
                    let r = unsafe { pattern::check_sparse(p as *const u8, size, seed) };
                    assert_eq!(r, Ok(()), "{who}: block {p:#x} of {size} bytes changed");
                    free(p as *mut u8);
                };
                let mut rng = Rng::new(0x5eed + i as u64);
                let mut slots: Vec<Option<(usize, usize, u64)>> = vec![None; SLOTS];
                for op in 0..OPS {
                    while let Ok(block) = rx.try_recv() {
                        check_free(block, "received");
                    }
                    let k = rng.below(SLOTS);
                    if let Some(block) = slots[k].take() {
                        if rng.one_in(4) {
                            tx.send(block).unwrap();
                        } else {
                            check_free(block, "own");
                        }
                    }
                    if rng.one_in(3) {
                        continue;
                    }
                    let size = if rng.one_in(64) {
                        rng.range(MEDIUM_MAX + 1, 2 * MIB)
                    } else {
                        rng.log_range(1, 32 * KIB)
                    };
                    let p = match op % 3 {
                        0 => engine::malloc(size),
                        1 => engine::arena_alloc(h, size, 16, false),
                        _ => engine::zalloc(size),
                    };
                    assert!(!p.is_null(), "allocation of {size} failed");
                    assert_eq!(Arena::of(p), Some(shared), "a block outside the arena");
                    let seed = rng.next_u64();
                    // SAFETY: `size` writable bytes.
                    unsafe { pattern::fill_sparse(p, size, seed) };
                    slots[k] = Some((p as usize, size, seed));
                }
                for block in slots.iter_mut().filter_map(Option::take) {
                    check_free(block, "own at the end");
                }
                drop(slots);
                drop(tx);
                for block in rx.iter() {
                    check_free(block, "received at the end");
                }
                drop(rx);
                // Every block is freed before any thread exits (and hands
                // its spans back, collecting the frees of the others).
                done.wait();
            })
        })
        .collect();
    drop(txs);
    for h in handles {
        h.join().expect("a stress thread failed");
    }
    let s = stats(shared);
    assert_eq!(
        (s.live_blocks, s.live_bytes),
        (0, 0),
        "blocks left after every thread freed all of its: {s:?}"
    );
    assert_eq!(s.threads, 0);
    assert_eq!(s.in_use_bytes, 0, "spans still in use with no block: {s:?}");
    assert!(s.peak_in_use_bytes > 0);
}

// ---------------------------------------------------- allocator_api2, guard

#[test]
fn an_allocator_api2_vec_in_the_arena_is_counted_and_returned() {
    let arena = Arena::new().unwrap();
    let mut v: ArenaVec<u64, &Arena> = ArenaVec::new_in(&arena);
    assert_eq!(stats(arena).live_blocks, 0);
    let mut capacity = v.capacity();
    let mut regrowths = 0;
    for i in 0..200_000u64 {
        v.push(i);
        if v.capacity() != capacity {
            capacity = v.capacity();
            regrowths += 1;
            let p = v.as_mut_ptr().cast::<u8>();
            assert_eq!(Arena::of(p), Some(arena), "capacity {capacity}");
            let s = stats(arena);
            assert_eq!(
                s.live_blocks, 1,
                "capacity {capacity}: the old block was not freed"
            );
            assert_eq!(s.live_bytes, usable(p), "capacity {capacity}");
            assert!(s.live_bytes >= capacity * 8);
        }
    }
    assert!(regrowths >= 10, "the vector grew only {regrowths} times");
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64));
    assert!(
        stats(arena).live_bytes >= 200_000 * 8,
        "a large block by now"
    );
    // This thread never entered the arena.
    assert_eq!(Arena::current(), Arena::default_arena());
    assert_eq!(stats(arena).threads, 0);
    v.truncate(10);
    v.shrink_to_fit();
    let s = stats(arena);
    assert_eq!(s.live_blocks, 1);
    assert_eq!(s.live_bytes, usable(v.as_mut_ptr().cast()));
    assert!(
        s.live_bytes < 4 * KIB,
        "shrink_to_fit kept {} bytes",
        s.live_bytes
    );
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64));
    let strings: ArenaVec<String, &Arena> = {
        let mut s = ArenaVec::new_in(&arena);
        s.extend((0..100).map(|i| i.to_string()));
        s
    };
    assert_eq!(
        stats(arena).live_blocks,
        2,
        "the strings themselves are global"
    );
    drop(strings);
    drop(v);
    let s = stats(arena);
    assert_eq!((s.live_blocks, s.live_bytes), (0, 0));
    // SAFETY: nothing of it is used again.
    unsafe { arena.destroy() }.unwrap();
}

#[test]
fn guards_restore_the_previous_arena_when_a_closure_panics() {
    let outer = Arena::new().unwrap();
    let a = Arena::new().unwrap();
    let b = Arena::new().unwrap();
    let _outer = outer.enter().unwrap();
    // Nested `run`s, panicking in the innermost. (These arenas are never
    // destroyed: the panic machinery may allocate in them.)
    let result = catch_unwind(AssertUnwindSafe(|| {
        a.run(|| {
            assert_eq!(Arena::current(), a);
            b.run(|| {
                assert_eq!(Arena::current(), b);
                std::panic::panic_any(42u32)
            })
        })
    }));
    let payload = result.expect_err("the closure panicked");
    assert_eq!(payload.downcast_ref::<u32>(), Some(&42));
    assert_eq!(Arena::current(), outer, "run did not restore the arena");
    assert_eq!(stats(a).threads, 0);
    assert_eq!(stats(b).threads, 0);
    assert_eq!(stats(outer).threads, 1);
    drop(payload);
    let after = Box::new(1u64);
    assert_eq!(Arena::of((&*after as *const u64).cast()), Some(outer));
    // A bare guard, too.
    let result = catch_unwind(AssertUnwindSafe(|| {
        let _in = a.enter().unwrap();
        std::panic::panic_any(7u8)
    }));
    assert!(result.is_err());
    assert_eq!(Arena::current(), outer);
    // A guard whose previous arena was destroyed leaves the thread where it
    // is (the engine refuses the stale handle).
    let gone = Arena::new().unwrap();
    let in_gone = gone.enter().unwrap();
    let in_a = a.enter().unwrap();
    // SAFETY: nothing was allocated in `gone`; this thread is not inside
    // the allocator.
    unsafe { gone.destroy() }.unwrap();
    drop(in_a);
    assert_eq!(
        Arena::current(),
        a,
        "restoring a destroyed arena must be refused"
    );
    drop(in_gone);
    assert_eq!(Arena::current(), outer);
}

// ------------------------------------------------------------------- trim

/// 1 KiB blocks fill a 64 KiB span (the kept-span tests below).
const SPAN: usize = 64 * KIB;

/// Fills `spans` spans of 1 KiB blocks in `arena` from the calling thread
/// and frees every block; returns the arena's bytes in use once filled and
/// once freed. The list of blocks is made outside the arena, so only the
/// blocks go into it.
fn fill_spans_then_free(arena: Arena, spans: usize) -> (usize, usize) {
    let mut blocks = Vec::with_capacity(spans * SPAN / KIB);
    let guard = arena.enter().unwrap();
    for _ in 0..spans * SPAN / KIB {
        blocks.push(engine::malloc(KIB));
    }
    let filled = stats(arena).in_use_bytes;
    for &b in &blocks {
        free(b);
    }
    let freed = stats(arena).in_use_bytes;
    drop(guard);
    assert!(blocks.iter().all(|b| !b.is_null()));
    (filled, freed)
}

/// Runs `then` while `threads` threads wait, each having filled two spans
/// in `arena` and freed them (so each holds its current span and offers
/// the other as a kept empty span); returns what `then` returned, once the
/// threads have exited.
fn while_threads_emptied_a_span<R>(arena: Arena, threads: usize, then: impl FnOnce() -> R) -> R {
    let all_freed = Arc::new(Barrier::new(threads + 1));
    let may_exit = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (all_freed, may_exit) = (all_freed.clone(), may_exit.clone());
            thread::spawn(move || {
                fill_spans_then_free(arena, 2);
                all_freed.wait();
                may_exit.wait();
            })
        })
        .collect();
    all_freed.wait();
    let result = then();
    may_exit.wait();
    for h in handles {
        h.join().unwrap();
    }
    result
}

#[test]
fn spans_emptied_by_frees_stay_up_to_a_bound_per_class_until_a_trim() {
    // No housekeeper: it would give the kept spans back once the heap idles.
    in_child_with(
        "spans_emptied_by_frees_stay_up_to_a_bound_per_class_until_a_trim",
        &[("ARENALLOC_BACKGROUND", "0")],
        keep_empty_spans,
    );
}

/// A thread fills `KEEP_EMPTY_PER_CLASS + 2` spans of 1 KiB blocks in an
/// arena (all full but its current one) and frees every block: the first
/// `KEEP_EMPTY_PER_CLASS` spans to empty stay, as its class's spans with
/// room, for the next batch; the one after goes back to the arena; the
/// current span stays pinned. A trim from another thread, while the owner
/// waits outside the allocator, takes them all. Fails where every emptied
/// span goes back at once (in use: one span), and where fewer or more are
/// kept.
fn keep_empty_spans() {
    const KEEP: usize = engine::heap::KEEP_EMPTY_PER_CLASS;
    let arena = Arena::new().unwrap();
    let (freed_tx, freed_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let owner = thread::spawn(move || {
        freed_tx
            .send(fill_spans_then_free(arena, KEEP + 2))
            .unwrap();
        done_rx.recv().unwrap();
    });
    let (filled, freed) = freed_rx.recv().unwrap();
    assert_eq!(filled, (KEEP + 2) * SPAN, "spans of 1 KiB blocks");
    assert_eq!(
        freed,
        (KEEP + 1) * SPAN,
        "after the frees: the current span and {KEEP} kept empty spans"
    );
    let _ = arena.trim();
    assert_eq!(stats(arena).in_use_bytes, 0, "the trim left a span");
    done_tx.send(()).unwrap();
    owner.join().unwrap();
    // SAFETY: nothing of it is used again.
    unsafe { arena.destroy() }.unwrap();
}

#[test]
fn threads_that_each_empty_a_span_keep_no_more_than_the_process_wide_bound() {
    in_child_with(
        "threads_that_each_empty_a_span_keep_no_more_than_the_process_wide_bound",
        &[("ARENALLOC_BACKGROUND", "0")],
        kept_spans_are_bounded,
    );
}

/// 96 threads each fill two spans of 1 KiB blocks in an arena and free
/// every block, then wait: each one's first span empties as its class's
/// only available span, and would stay; but all heaps together keep at most
/// 4 MiB of such spans (64 of them), so that many threads hold no more than
/// a few. In use: each thread's current span, plus 4 MiB. Fails with a
/// bound per heap (96 kept: 6 MiB), and with none kept (0).
fn kept_spans_are_bounded() {
    const THREADS: usize = 96;
    const LIMIT: usize = 4 * MIB;
    let arena = Arena::new().unwrap();
    let in_use = while_threads_emptied_a_span(arena, THREADS, || stats(arena).in_use_bytes);
    let current = THREADS * SPAN;
    // Other heaps (the runtime's, in the default arena) may keep a span
    // or two of the bound; two heaps at once may each pass it by a span.
    assert!(
        in_use >= current + LIMIT - 8 * SPAN && in_use <= current + LIMIT + 2 * SPAN,
        "in use {} KiB: {} KiB of current spans and about {} KiB kept expected",
        in_use / KIB,
        current / KIB,
        LIMIT / KIB
    );
    let _ = arena.trim();
    assert_eq!(stats(arena).in_use_bytes, 0);
    // SAFETY: nothing of it is used again.
    unsafe { arena.destroy() }.unwrap();
}

#[test]
fn a_fork_child_keeps_empty_spans_though_the_parents_other_threads_kept_the_bound() {
    in_child_with(
        "a_fork_child_keeps_empty_spans_though_the_parents_other_threads_kept_the_bound",
        &[("ARENALLOC_BACKGROUND", "0")],
        kept_budget_after_fork,
    );
}

/// 80 threads each keep an empty span (the 4 MiB bound is then used up)
/// and wait; this thread forks. In the child, the only thread, the bound
/// is counted again from its own heaps (the other threads' are gone), so a
/// span it empties is kept. Fails if the child inherits the parent's count
/// (its span then goes back at once: one span in use, not two).
fn kept_budget_after_fork() {
    let x = Arena::new().unwrap();
    let y = Arena::new().unwrap();
    let status = while_threads_emptied_a_span(x, 80, || {
        // SAFETY: the child calls only the allocator and `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let (_, freed) = fill_spans_then_free(y, 2);
            // SAFETY: ends the child at once, without the test harness.
            unsafe { libc::_exit(if freed == 2 * SPAN { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    });
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "in the child, an emptied span was not kept (status {status:#x})"
    );
}

#[test]
fn trim_returns_an_arenas_free_memory() {
    // Explicit trim only: no housekeeper pass may purge between the
    // snapshots (changing the delay at run time would not stop a pass
    // already sleeping, and would change it for the other tests here).
    in_child_with(
        "trim_returns_an_arenas_free_memory",
        &[("ARENALLOC_BACKGROUND", "0")],
        trim_and_measure,
    );
}

/// In the child process, without the housekeeper: 4000 small blocks and
/// four 4 MiB blocks in an arena, freed, then trimmed.
fn trim_and_measure() {
    assert!(!engine::purger::background_enabled());
    let arena = Arena::new().unwrap();
    let small: Vec<*mut u8> = (0..4000)
        .map(|_| {
            let p = alloc_in(arena, 4000);
            assert!(!p.is_null());
            touch(p, 4000, 0x11);
            p
        })
        .collect();
    let large: Vec<*mut u8> = (0..4)
        .map(|_| {
            let p = alloc_in(arena, 4 * MIB);
            assert!(!p.is_null());
            touch(p, 4 * MIB, 0x22);
            p
        })
        .collect();
    let full = stats(arena);
    assert!(
        full.resident_bytes >= 4000 * 4000 + 16 * MIB,
        "only {} resident",
        full.resident_bytes
    );
    for p in small.into_iter().chain(large) {
        free(p);
    }
    let freed = stats(arena);
    assert_eq!((freed.live_blocks, freed.live_bytes), (0, 0));
    let released = arena.trim().expect("trim a live arena");
    let trimmed = stats(arena);
    assert!(
        released >= 16 * MIB,
        "trim released {released} bytes; 16 MiB of large blocks were freed"
    );
    assert!(
        trimmed.resident_bytes + 16 * MIB <= freed.resident_bytes,
        "resident {} -> {} only",
        freed.resident_bytes,
        trimmed.resident_bytes
    );
    assert!(
        trimmed.resident_bytes < MIB,
        "{} bytes still resident with no block",
        trimmed.resident_bytes
    );
    assert!(
        trimmed.mapped_bytes <= 4 * MIB,
        "{} bytes still mapped: more than the segment of the current span",
        trimmed.mapped_bytes
    );
    assert_eq!(arena.trim(), Ok(0), "a second trim found more to release");
    // The arena still works after a trim.
    let p = alloc_in(arena, 4000);
    let q = alloc_in(arena, 4 * MIB);
    assert!(!p.is_null() && !q.is_null());
    touch(p, 4000, 1);
    touch(q, 4 * MIB, 2);
    assert_eq!(stats(arena).live_blocks, 2);
    free(p);
    free(q);
    // SAFETY: nothing of it is used again.
    unsafe { arena.destroy() }.unwrap();
}

/// The global allocator's `dealloc` finds a block's region by masking alone
/// (Rust's contract says the block is ours) for alignments below a segment,
/// and through the ownership map above: every size and alignment, small,
/// medium and large, is freed back to its own arena.
#[test]
fn global_dealloc_frees_every_size_and_alignment_back_to_its_arena() {
    let arena = Arena::new().expect("an arena");
    let sizes = [1, 64, 3000, 40 * KIB, MEDIUM_MAX, MEDIUM_MAX + 1, 5 * MIB];
    let aligns = [8, 64, 4 * KIB, 64 * KIB, 2 * MIB, 4 * MIB, 8 * MIB];
    for (round, &size) in sizes.iter().enumerate() {
        for &align in &aligns {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: a non-zero size; the block is freed with its layout.
            let p = arena.run(|| unsafe { std::alloc::GlobalAlloc::alloc(&GLOBAL, layout) });
            assert!(!p.is_null(), "{size} B aligned to {align}");
            assert_eq!(p as usize % align, 0, "{size} B aligned to {align}");
            touch(p, size, round as u8);
            assert_eq!(stats(arena).live_blocks, 1, "{size} B aligned to {align}");
            // SAFETY: `p` came from `alloc` with `layout`.
            unsafe { std::alloc::GlobalAlloc::dealloc(&GLOBAL, p, layout) };
            assert_eq!(stats(arena).live_blocks, 0, "{size} B aligned to {align}");
        }
    }
    // SAFETY: nothing of it is used again.
    unsafe { arena.destroy() }.unwrap();
}

/// Blocks of 20 000 bytes live in spans of three 64 KiB slices, so most of
/// a span's blocks lie in its tail slices, whose frees must find the span
/// through its head (the thirteenth session tried a `free` that did not).
/// The owner's free puts such a block back on its own list (the next
/// `malloc` of the size returns it, before a block freed earlier), another
/// thread's free puts it on the remote list, and once the owner has exited
/// the arena has nothing in use.
#[test]
fn blocks_in_the_tail_slices_of_a_span_go_back_to_their_span() {
    // No housekeeper: a claim between the owner's free and its next malloc
    // would send the free to the remote list, and the order checked below
    // would not hold.
    in_child_with(
        "blocks_in_the_tail_slices_of_a_span_go_back_to_their_span",
        &[("ARENALLOC_BACKGROUND", "0")],
        tail_slice_blocks_go_back_to_their_span,
    );
}

fn tail_slice_blocks_go_back_to_their_span() {
    const SIZE: usize = 20_000;
    let arena = Arena::new().unwrap();
    let owner = thread::spawn(move || {
        // Room made before the guard: these vectors stay out of the arena.
        let mut blocks: Vec<*mut u8> = Vec::with_capacity(9);
        let mut in_tail: Vec<*mut u8> = Vec::with_capacity(9);
        let guard = arena.enter().unwrap();
        blocks.extend((0..9).map(|_| engine::malloc(SIZE)));
        // Checked after the guard is dropped (a failed assert allocates).
        let all_there = blocks.iter().all(|b| !b.is_null());
        let first = *blocks.iter().min().unwrap() as usize;
        in_tail.extend(
            blocks
                .iter()
                .copied()
                .filter(|&b| !b.is_null() && b as usize - first >= SPAN),
        );
        let one_span = blocks.iter().all(|&b| (b as usize) < first + 3 * SPAN);
        if !all_there || !one_span || in_tail.len() < 2 {
            drop(guard);
            panic!("expected 9 blocks in one span of three slices, 2 or more past its first slice: {blocks:?}");
        }
        // A block of the head slice first, so the owner's list is not
        // empty: a tail block sent to the remote list instead would not be
        // the next one handed out.
        let in_head = first as *mut u8;
        free(in_head);
        let freed_by_owner = in_tail[0];
        free(freed_by_owner);
        let again = engine::malloc(SIZE);
        let again_head = engine::malloc(SIZE);
        drop(guard);
        assert_eq!(
            again, freed_by_owner,
            "the owner's free did not list the block"
        );
        assert_eq!(again_head, in_head);
        let remote = in_tail[1] as usize;
        thread::spawn(move || free(remote as *mut u8))
            .join()
            .unwrap();
        for &b in blocks.iter().filter(|&&b| b != in_tail[1]) {
            free(b);
        }
    });
    owner.join().unwrap();
    let _ = arena.trim();
    assert_eq!(stats(arena).in_use_bytes, 0, "a block of the span is lost");
    // SAFETY: nothing of it is used again.
    unsafe { arena.destroy() }.unwrap();
}
