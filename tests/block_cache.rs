//! The thread heaps' caches of freed blocks (`block_cache`): what a cache
//! holds is free to the program in the statistics, and goes back to its
//! spans when the heap is trimmed (by its own thread or a claimer), when
//! its thread exits and before its arena's limit refuses an allocation; an
//! arena's destruction forgets it.
//!
//! Each test uses an arena of its own, so that its spans are its own.

use std::ptr;
use std::sync::mpsc;
use std::thread;

use arenalloc::ArenaAlloc;
use arenalloc_engine as engine;
use engine::ArenaHandle;

#[global_allocator]
static GLOBAL: ArenaAlloc = ArenaAlloc;

/// A size whose class has a bin, and fewer blocks than it holds (256), so
/// that all of them stay in the cache when freed: one span's worth of live
/// blocks at most.
const SIZE: usize = 64;
const BLOCKS: usize = 100;

/// On the calling thread, in `arena`: allocates [`BLOCKS`] blocks of
/// [`SIZE`] bytes with `malloc` and frees them all (into the thread's
/// cache), then makes the previous arena preferred again. Allocates
/// nothing else meanwhile.
fn fill_and_free_in(arena: ArenaHandle) {
    let previous = engine::arena_set(arena).expect("a live arena");
    let mut blocks = [ptr::null_mut(); BLOCKS];
    for b in &mut blocks {
        *b = engine::malloc(SIZE);
        assert!(!b.is_null());
    }
    for &b in &blocks {
        // SAFETY: live blocks of ours, freed once.
        unsafe { engine::free(b) };
    }
    engine::arena_set(previous).expect("the previous arena");
}

fn stats(arena: ArenaHandle) -> engine::ArenaStats {
    engine::arena_stats(arena).expect("a live arena")
}

fn destroy(arena: ArenaHandle) {
    // SAFETY: the test's own arena; no block of it is used any more.
    assert!(unsafe { engine::arena_destroy(arena) });
}

#[test]
fn cached_blocks_are_free_and_a_trim_from_another_thread_gives_their_span_back() {
    let arena = engine::arena_new().unwrap();
    let (filled_tx, filled_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    // The owner stays alive, idle, while another thread trims: the trim
    // claims its heap.
    let owner = thread::spawn(move || {
        fill_and_free_in(arena);
        filled_tx.send(()).unwrap();
        done_rx.recv().unwrap();
    });
    filled_rx.recv().unwrap();
    let before = stats(arena);
    assert_eq!(before.live_blocks, 0, "cached blocks count as free");
    assert_eq!(before.live_bytes, 0);
    assert!(before.in_use_bytes > 0, "the span waits for a purge");
    engine::arena_trim(arena).unwrap();
    assert_eq!(
        stats(arena).in_use_bytes,
        0,
        "the trim gave the owner's cached blocks back, and so their span"
    );
    done_tx.send(()).unwrap();
    owner.join().unwrap();
    destroy(arena);
}

#[test]
fn a_thread_that_exits_gives_its_cached_blocks_back() {
    let arena = engine::arena_new().unwrap();
    thread::spawn(move || fill_and_free_in(arena))
        .join()
        .unwrap();
    let after = stats(arena);
    assert_eq!(after.live_blocks, 0);
    assert_eq!(
        after.in_use_bytes, 0,
        "the exiting thread's span emptied, not abandoned with cached blocks"
    );
    destroy(arena);
}

#[test]
fn an_arena_limit_takes_cached_blocks_back_before_it_refuses() {
    let arena = engine::arena_new().unwrap();
    // One slice: the span of the cached blocks, and nothing more.
    assert!(engine::arena_set_limit(arena, 64 << 10));
    fill_and_free_in(arena);
    assert_eq!(stats(arena).in_use_bytes, 64 << 10);
    // Another class needs a span of its own: only if the cached blocks go
    // back to theirs, which then empties, is there room.
    let previous = engine::arena_set(arena).unwrap();
    let p = engine::malloc(2 * SIZE);
    engine::arena_set(previous).unwrap();
    assert!(!p.is_null(), "refused for blocks that were free");
    assert_eq!(engine::arena_of(p), Some(arena));
    // SAFETY: a live block of ours, freed once.
    unsafe { engine::free(p) };
    destroy(arena);
}

#[test]
fn a_destroyed_arena_leaves_nothing_in_the_cache_of_a_thread_that_prefers_it() {
    let arena = engine::arena_new().unwrap();
    let previous = engine::arena_set(arena).unwrap();
    let mut blocks = [ptr::null_mut(); BLOCKS];
    for b in &mut blocks {
        *b = engine::malloc(SIZE);
        assert!(!b.is_null());
    }
    for &b in &blocks {
        // SAFETY: live blocks of ours, freed once.
        unsafe { engine::free(b) };
    }
    // Destroyed while this thread still prefers it: its memory is unmapped.
    destroy(arena);
    let p = engine::malloc(SIZE);
    assert!(!p.is_null());
    assert_eq!(
        engine::arena_of(p),
        Some(engine::arena_default()),
        "a block of the destroyed arena came back"
    );
    // SAFETY: a live block of ours, freed once.
    unsafe { engine::free(p) };
    engine::arena_set(previous).unwrap();
}
