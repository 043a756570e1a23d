//! Dedicated arenas: blocks of different arenas never share a span or a
//! segment; frees from any thread keep a block in the arena that owns it;
//! handles are checked; the scoped guard restores the previous arena.

use std::collections::{BTreeSet, HashSet};
use std::sync::{mpsc, Arc, Barrier};

use arenalloc::{Arena, ArenaAlloc, ArenaError};
use arenalloc_engine as engine;

#[global_allocator]
static GLOBAL: ArenaAlloc = ArenaAlloc;

const SEGMENT: usize = 4 << 20;

fn segment_of(p: *const u8) -> usize {
    p as usize & !(SEGMENT - 1)
}

fn errno() -> i32 {
    engine::os::errno()
}

#[test]
fn interleaved_allocations_of_two_arenas_never_share_a_segment() {
    let a = Arena::new().unwrap();
    let b = Arena::new().unwrap();
    let mut blocks = Vec::new();
    for i in 0..20_000usize {
        let size = 16 + (i * 37) % 3000;
        let arena = if i % 2 == 0 { a } else { b };
        let p = engine::arena_alloc(
            engine::ArenaHandle::from_raw(arena.as_raw()).unwrap(),
            size,
            16,
            false,
        );
        assert!(!p.is_null());
        assert_eq!(Arena::of(p), Some(arena), "block {i} in the wrong arena");
        blocks.push((p, arena));
    }
    let segs = |which: Arena| -> BTreeSet<usize> {
        blocks
            .iter()
            .filter(|(_, arena)| *arena == which)
            .map(|(p, _)| segment_of(*p))
            .collect()
    };
    let (sa, sb) = (segs(a), segs(b));
    assert!(
        sa.is_disjoint(&sb),
        "arenas share segments: {:?}",
        sa.intersection(&sb)
    );
    for (p, _) in blocks {
        // SAFETY: live blocks of ours, freed once.
        unsafe { engine::free(p) };
    }
}

#[test]
fn the_guard_routes_every_allocation_and_restores_the_previous_arena() {
    let library = Arena::new().unwrap();
    assert_eq!(Arena::current(), Arena::default_arena());
    let (cache, big) = {
        let _guard = library.enter().unwrap();
        assert_eq!(Arena::current(), library);
        let cache: Vec<String> = (0..1000).map(|i| format!("entry {i}")).collect();
        let big = vec![7u8; 3 << 20];
        (cache, big)
    };
    assert_eq!(Arena::current(), Arena::default_arena());
    assert_eq!(Arena::of(cache.as_ptr().cast()), Some(library));
    for s in &cache {
        assert_eq!(Arena::of(s.as_ptr()), Some(library));
    }
    assert_eq!(Arena::of(big.as_ptr()), Some(library), "large blocks too");
    let mine = Box::new([1u8; 100]);
    assert_eq!(Arena::of(mine.as_ptr()), Some(Arena::default_arena()));
}

#[test]
fn run_restores_the_arena_when_the_closure_panics() {
    let arena = Arena::new().unwrap();
    let outer = Arena::new().unwrap();
    let _outer = outer.enter().unwrap();
    let result = std::panic::catch_unwind(|| {
        arena.run(|| {
            assert_eq!(Arena::current(), arena);
            panic!("inside the arena");
        })
    });
    assert!(result.is_err());
    assert_eq!(Arena::current(), outer);
}

#[test]
fn stale_and_foreign_handles_are_refused_and_leave_the_thread_alone() {
    let arena = Arena::new().unwrap();
    let _in = arena.enter().unwrap();
    // A made-up handle: slot far out of range.
    let foreign = engine::ArenaHandle::from_raw(0x0000_0003_0000_ffff).unwrap();
    engine::os::set_errno(0);
    assert_eq!(engine::arena_set(foreign), None);
    assert_eq!(errno(), libc::EINVAL);
    assert_eq!(
        Arena::current(),
        arena,
        "a refused switch must not change the arena"
    );
    // The right slot with another tag (what a destroyed arena's handle
    // looks like).
    let stale = engine::ArenaHandle::from_raw(arena.as_raw() + (2u64 << 13)).unwrap();
    engine::os::set_errno(0);
    assert!(engine::arena_alloc(stale, 64, 16, false).is_null());
    assert_eq!(errno(), libc::EINVAL);
    assert_eq!(engine::arena_set(stale), None);
    assert_eq!(Arena::current(), arena);
    let _ = ArenaError::StaleHandle.to_string();
}

#[test]
fn a_block_freed_by_a_thread_in_another_arena_returns_to_its_own_arena() {
    let x = Arena::new().unwrap();
    let y = Arena::new().unwrap();
    let hx = engine::ArenaHandle::from_raw(x.as_raw()).unwrap();
    // This thread allocates blocks in X.
    let blocks: Vec<usize> = (0..64)
        .map(|_| engine::arena_alloc(hx, 48, 16, false) as usize)
        .collect();
    let freed: HashSet<usize> = blocks.iter().copied().collect();
    // Another thread, preferring Y, frees them all.
    let (done_tx, done_rx) = mpsc::channel();
    let freed_by_other = freed.clone();
    std::thread::spawn(move || {
        let _in_y = y.enter().unwrap();
        for p in blocks {
            // SAFETY: live blocks of ours, handed over, freed once.
            unsafe { engine::free(p as *mut u8) };
        }
        // Y's allocations never reuse X's blocks.
        for _ in 0..64 {
            let p = engine::malloc(48);
            assert_eq!(Arena::of(p), Some(y));
            assert!(!freed_by_other.contains(&(p as usize)));
            // SAFETY: live block of ours.
            unsafe { engine::free(p) };
        }
        done_tx.send(()).unwrap();
    });
    done_rx.recv().unwrap();
    // X (this thread's heap for it) gets them back: the owner collects
    // remote frees before carving new blocks.
    let again: Vec<usize> = (0..200)
        .map(|_| engine::arena_alloc(hx, 48, 16, false) as usize)
        .collect();
    for &p in &again {
        assert_eq!(Arena::of(p as *const u8), Some(x));
    }
    let reused = again.iter().filter(|p| freed.contains(p)).count();
    assert_eq!(reused, freed.len(), "X must reuse every block freed to it");
    for p in again {
        // SAFETY: live blocks of ours.
        unsafe { engine::free(p as *mut u8) };
    }
}

#[test]
fn many_threads_share_one_arena() {
    let shared = Arena::new().unwrap();
    let threads = 8;
    let barrier = Arc::new(Barrier::new(threads));
    let (tx, rx) = mpsc::channel::<Vec<Box<[u8]>>>();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let barrier = barrier.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _in = shared.enter().unwrap();
                barrier.wait();
                for round in 0..50 {
                    let batch: Vec<Box<[u8]>> = (0..200)
                        .map(|i| {
                            vec![(t + round + i) as u8; 16 + (i * 13) % 2000].into_boxed_slice()
                        })
                        .collect();
                    for b in &batch {
                        assert_eq!(Arena::of(b.as_ptr()), Some(shared));
                    }
                    tx.send(batch).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let mut received = 0;
    for batch in rx {
        for b in &batch {
            assert!(b.iter().all(|&x| x == b[0]), "contents changed");
        }
        received += batch.len();
    }
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(received, threads * 50 * 200);
}

#[test]
fn four_thousand_arenas_can_exist_and_allocate() {
    let mut arenas = Vec::new();
    while arenas.len() < 4000 {
        arenas.push(Arena::new().expect("4096 arenas must be available"));
    }
    for (i, arena) in arenas.iter().enumerate().step_by(97) {
        let v: Vec<u64> = arena.run(|| (0..64).map(|x| x + i as u64).collect());
        assert_eq!(Arena::of(v.as_ptr().cast()), Some(*arena));
    }
}

#[test]
fn realloc_that_moves_a_block_keeps_it_in_its_own_arena() {
    let x = Arena::new().unwrap();
    let hx = engine::ArenaHandle::from_raw(x.as_raw()).unwrap();
    let mut p = engine::arena_alloc(hx, 24, 16, false);
    // SAFETY: 24 writable bytes.
    unsafe { std::ptr::write_bytes(p, 0x5a, 24) };
    // This thread prefers the default arena; grow through every size range,
    // small to medium to large, forcing moves.
    assert_eq!(Arena::current(), Arena::default_arena());
    for size in [200, 5000, 100_000, 3 << 20] {
        // SAFETY: a live block of ours.
        p = unsafe { engine::realloc(p, size) };
        assert!(!p.is_null());
        assert_eq!(Arena::of(p), Some(x), "realloc to {size} left arena X");
        // SAFETY: at least 24 readable bytes were kept.
        assert!(unsafe { std::slice::from_raw_parts(p, 24) }
            .iter()
            .all(|&b| b == 0x5a));
    }
    // SAFETY: a live block of ours.
    unsafe { engine::free(p) };
}
