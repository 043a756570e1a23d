//! Races between the two sides of the engine's protocols, forced at named
//! pause points (the engine's `race-hooks` feature, which only this test
//! suite enables): a test arms a point for one thread, waits until that
//! thread is parked there, does the other side's work, then lets it go. So
//! each interleaving below happens on every run, not once in a million.
//!
//! - A thread exits while its arena is destroyed and a new arena takes the
//!   slot (1).
//!
//! Each test runs in a child process (this binary re-run for that test
//! alone with `RACES_CHILD=<test>`): a lost race shows as a crash or a hang
//! there, and the child has the engine's global state to itself. This
//! binary keeps the system allocator, so Rust's own allocations (thread
//! spawns, channels) never touch the arenas under test.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use arenalloc_engine as engine;
use arenalloc_tests::{map_page_at, test_in_child};
use engine::race_hooks::{self, Point};

const CHILD_VAR: &str = "RACES_CHILD";
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// In the child: runs `body` and prints `<name>: done`. In the test
/// process: runs this binary again for `name` alone and checks the child
/// finished the body and exited cleanly.
fn in_child(name: &str, body: fn()) {
    in_child_with(name, &[], body)
}

/// [`in_child`] with `env` added to the child's environment.
fn in_child_with(name: &str, env: &[(&str, &str)], body: fn()) {
    test_in_child(CHILD_VAR, name, env, CHILD_TIMEOUT, body);
}

/// Waits until a thread is parked at `point`.
fn wait_parked(point: Point) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !race_hooks::is_parked(point) {
        assert!(
            Instant::now() < deadline,
            "no thread reached {point:?} within 20 s"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// A thread that runs `work` in its own thread, sends its id, and then
/// waits for the word before it goes on to `then` (and exits).
fn thread_with_pause<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
    then: impl FnOnce(T) + Send + 'static,
) -> (usize, mpsc::Sender<()>, thread::JoinHandle<()>) {
    let (id_tx, id_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let handle = thread::spawn(move || {
        let value = work();
        id_tx.send(race_hooks::thread_id()).unwrap();
        go_rx.recv().unwrap();
        then(value);
    });
    (id_rx.recv().unwrap(), go_tx, handle)
}

// ------------------------------- 1. thread exit against arena destroy

#[test]
fn a_thread_exiting_while_its_arena_is_destroyed_leaves_the_next_arena_in_the_slot_intact() {
    in_child(
        "a_thread_exiting_while_its_arena_is_destroyed_leaves_the_next_arena_in_the_slot_intact",
        exit_during_destroy,
    );
}

/// Thread T uses arena X and exits; its exit reads its heap's arena and
/// parks before taking the lock. Meanwhile X is destroyed (T's heap is
/// detached), arena Y is created in the same slot and thread U joins it.
/// When T goes on it must not touch Y's heap list: before the fix it
/// "removed" its detached heap and cleared Y's list head, so Y lost U's
/// heap, a destroy of Y missed it, and U then allocated from unmapped
/// spans (SIGSEGV).
fn exit_during_destroy() {
    let x = engine::arena_new().expect("arena X");
    let (t_id, t_go, t) = thread_with_pause(
        move || {
            engine::arena_set(x).expect("enter X");
            let p = engine::malloc(64);
            assert!(!p.is_null());
            p as usize
        },
        |_block| {},
    );
    race_hooks::arm(Point::AbandonBeforeLock, t_id);
    t_go.send(()).unwrap();
    wait_parked(Point::AbandonBeforeLock);

    // SAFETY: T's block is never used again; T is parked at its exit, not
    // inside the allocator for X.
    assert!(unsafe { engine::arena_destroy(x) });
    let y = engine::arena_new().expect("arena Y");
    let (u_id, u_go, u) = thread_with_pause(
        move || {
            engine::arena_set(y).expect("enter Y");
            let p = engine::malloc(64);
            assert!(!p.is_null());
            p as usize
        },
        |block| {
            // Y is gone: this thread falls back to the default arena.
            let p = engine::malloc(64);
            assert!(!p.is_null());
            // SAFETY: a block of ours.
            unsafe { p.write_bytes(0x5a, 64) };
            assert_eq!(engine::arena_of(p), Some(engine::arena_default()));
            // SAFETY: as above.
            unsafe { engine::free(p) };
            let _ = block;
        },
    );
    let _ = u_id;
    assert_eq!(engine::arena_stats(y).expect("Y is live").threads, 1);

    race_hooks::release(Point::AbandonBeforeLock);
    t.join().expect("thread T");
    assert_eq!(
        engine::arena_stats(y).expect("Y is live").threads,
        1,
        "T's exit took U's heap out of Y's list"
    );
    // SAFETY: U's block is never used again; U waits outside the allocator.
    assert!(unsafe { engine::arena_destroy(y) });
    u_go.send(()).unwrap();
    u.join().expect("thread U");
}

// -------------------- 2. a handle checked, then the arena destroyed

#[test]
fn a_limit_set_through_a_handle_that_went_stale_does_not_land_on_the_next_arena() {
    in_child(
        "a_limit_set_through_a_handle_that_went_stale_does_not_land_on_the_next_arena",
        stale_limit,
    );
}

/// Thread C sets a limit on X and parks after its handle resolved, before
/// the lock; X is destroyed and Y created in the same slot. C's call must
/// fail (the handle is stale) and Y must stay without a limit. Before the
/// fix the limit landed on Y.
fn stale_limit() {
    let x = engine::arena_new().expect("arena X");
    let (c_id, c_go, c) = thread_with_pause(
        || {},
        move |()| {
            engine::os::set_errno(0);
            let accepted = engine::arena_set_limit(x, 4096);
            assert!(!accepted, "a stale handle's limit was accepted");
            assert_eq!(engine::os::errno(), libc::EINVAL);
        },
    );
    race_hooks::arm(Point::ControlBeforeLock, c_id);
    c_go.send(()).unwrap();
    wait_parked(Point::ControlBeforeLock);
    // SAFETY: X holds no block; nobody uses it.
    assert!(unsafe { engine::arena_destroy(x) });
    let y = engine::arena_new().expect("arena Y");
    race_hooks::release(Point::ControlBeforeLock);
    c.join().expect("thread C");
    assert_eq!(
        engine::arena_stats(y).expect("Y is live").limit_bytes,
        0,
        "X's limit landed on Y"
    );
    let p = engine::arena_alloc(y, 64 * 1024, 16, false);
    assert!(!p.is_null(), "Y refuses memory under X's limit");
    // SAFETY: a block of ours.
    unsafe { engine::free(p) };
}

/// Arena X with free slices in several segments (work for several lock
/// holds); thread P trims it (the child runs with
/// `ARENALLOC_PURGE_SLICE_US=0`: one step per hold) and parks between two
/// holds; then X is destroyed. Returns P's id and handle; P is still
/// parked at `PurgeBetweenSlices`.
fn destroy_an_arena_while_its_trim_is_between_slices() -> (usize, thread::JoinHandle<()>) {
    engine::purger::set_background(false);
    let x = engine::arena_new().expect("arena X");
    let blocks: Vec<usize> = (0..40)
        .map(|_| engine::arena_alloc(x, 100 * 1024, 16, false) as usize)
        .collect();
    for &b in &blocks {
        // SAFETY: blocks of ours.
        unsafe { engine::free(b as *mut u8) };
    }
    let (p_id, p_go, p) = thread_with_pause(
        || {},
        move |()| {
            let _ = engine::arena_trim(x);
        },
    );
    race_hooks::arm(Point::PurgeBetweenSlices, p_id);
    p_go.send(()).unwrap();
    wait_parked(Point::PurgeBetweenSlices);
    // SAFETY: X's blocks were all freed; nobody uses it.
    assert!(unsafe { engine::arena_destroy(x) });
    (p_id, p)
}

#[test]
fn a_trim_whose_arena_is_destroyed_between_slices_leaves_the_next_arena_alone() {
    in_child_with(
        "a_trim_whose_arena_is_destroyed_between_slices_leaves_the_next_arena_alone",
        &[("ARENALLOC_PURGE_SLICE_US", "0")],
        trim_across_destroy,
    );
}

/// Thread P trims X, one step per lock hold (`ARENALLOC_PURGE_SLICE_US=0`),
/// and parks between two holds; X is destroyed and
/// Y created in the same slot, with a freed large block in its cache. P's
/// trim must stop: Y's cached block stays (it is Y's, not X's to give
/// back). Before the fix P went on and purged Y.
fn trim_across_destroy() {
    let (_, p) = destroy_an_arena_while_its_trim_is_between_slices();
    let y = engine::arena_new().expect("arena Y");
    let big = engine::arena_alloc(y, 8 << 20, 16, false);
    assert!(!big.is_null());
    // SAFETY: all 8 MiB are ours; then freed into Y's cache.
    unsafe {
        big.write_bytes(1, 8 << 20);
        engine::free(big);
    }
    let mapped = engine::arena_stats(y).unwrap().mapped_bytes;
    assert!(mapped >= 8 << 20);
    race_hooks::release(Point::PurgeBetweenSlices);
    p.join().expect("thread P");
    assert_eq!(
        engine::arena_stats(y).unwrap().mapped_bytes,
        mapped,
        "X's trim went on into Y and unmapped Y's cached block"
    );
}

// ----------------------------------------------- 3. handles

#[test]
fn handles_made_up_from_a_slot_number_are_refused() {
    in_child(
        "handles_made_up_from_a_slot_number_are_refused",
        made_up_handles,
    );
}

/// The first arena created lives in slot 1. Before the fix its handle was
/// `(1 << 32) | 2`, so any code could name (and destroy) it; now every
/// guess built from the slot number is refused.
fn made_up_handles() {
    let real = engine::arena_new().expect("an arena");
    let slot_bits = real.to_raw() & 0x1fff;
    let mut accepted = Vec::new();
    let guesses = (0..4096u64)
        .map(|g| (g << 32) | slot_bits)
        .chain((0..200_000u64).map(|t| (t << 13) | slot_bits));
    // The real handle is among the guesses only if it can be guessed (a
    // chance of 2e5 in 2^51 now).
    for raw in guesses {
        let handle = engine::ArenaHandle::from_raw(raw).unwrap();
        if engine::arena_stats(handle).is_some() {
            accepted.push(raw);
        }
    }
    assert!(
        accepted.is_empty(),
        "made-up handles accepted: {accepted:#x?}"
    );
    assert!(engine::arena_stats(real).is_some());
}

#[test]
fn a_stale_handle_stays_stale_after_four_billion_lives_of_its_slot() {
    in_child(
        "a_stale_handle_stays_stale_after_four_billion_lives_of_its_slot",
        no_wrap,
    );
}

/// A handle whose arena was destroyed, with 2^32 arenas created since (the
/// count is advanced by a test hook: 2^32 real creations take minutes),
/// must not name the slot's new arena. With 32-bit generations it did.
fn no_wrap() {
    let old = engine::arena_new().expect("an arena");
    // SAFETY: the arena holds nothing.
    assert!(unsafe { engine::arena_destroy(old) });
    for skipped in [(1u64 << 32) - 1, 1 << 31, (1 << 32) - 2] {
        engine::registry::skip_lives(skipped);
        let new = engine::arena_new().expect("an arena");
        assert_eq!(new.to_raw() & 0x1fff, old.to_raw() & 0x1fff, "same slot");
        assert_ne!(new, old, "a stale handle came back to life");
        assert!(engine::arena_stats(old).is_none());
        // SAFETY: the arena holds nothing.
        assert!(unsafe { engine::arena_destroy(new) });
    }
}

// ------------------------------- 4. the ownership map and unmapping

#[test]
fn an_address_in_a_hole_being_unmapped_is_never_ours() {
    in_child(
        "an_address_in_a_hole_being_unmapped_is_never_ours",
        hole_being_unmapped,
    );
}

/// Four 1 KiB-block spans in a fresh arena take slices 1-4 of a segment;
/// the blocks of slices 2 and 3 are freed, so trim unmaps that run. Thread
/// P's trim parks right after the `munmap`; a page mapped into the hole
/// then must not read as ours. Before the fix the hole was recorded only
/// after the pause, and `owns` said yes.
fn hole_being_unmapped() {
    const SEGMENT: usize = 4 << 20;
    const SLICE: usize = 64 << 10;
    let x = engine::arena_new().expect("arena X");
    engine::arena_set(x).expect("enter X");
    let blocks: Vec<usize> = (0..4 * 64).map(|_| engine::malloc(1024) as usize).collect();
    let base = blocks[0] & !(SEGMENT - 1);
    let slice = |b: usize| (b - base) / SLICE;
    assert!(blocks.iter().all(|&b| b & !(SEGMENT - 1) == base));
    for &b in blocks.iter().filter(|&&b| matches!(slice(b), 2 | 3)) {
        // SAFETY: a block of ours.
        unsafe { engine::free(b as *mut u8) };
    }
    engine::arena_set(engine::arena_default()).expect("leave X");
    let hole = base + 2 * SLICE;
    let (p_id, p_go, p) = thread_with_pause(
        || {},
        move |()| {
            let _ = engine::arena_trim(x);
        },
    );
    race_hooks::arm(Point::HoleUnmapped, p_id);
    p_go.send(()).unwrap();
    wait_parked(Point::HoleUnmapped);
    // Fails if the hole was not unmapped.
    map_page_at(hole);
    let ours = engine::owns(hole as *const u8);
    let arena = engine::arena_of(hole as *const u8);
    // SAFETY: our own page.
    unsafe { libc::munmap(hole as *mut libc::c_void, 4096) };
    race_hooks::release(Point::HoleUnmapped);
    p.join().expect("thread P");
    assert!(!ours, "a foreign page in a hole was taken for ours");
    assert_eq!(arena, None);
    for &b in blocks.iter().filter(|&&b| !matches!(slice(b), 2 | 3)) {
        // SAFETY: a block of ours.
        unsafe { engine::free(b as *mut u8) };
    }
}

#[test]
fn owns_racing_the_unmap_of_a_segment_reads_no_unmapped_header() {
    in_child(
        "owns_racing_the_unmap_of_a_segment_reads_no_unmapped_header",
        owns_during_unmap,
    );
}

/// Thread R asks `owns(p)` for a block of arena X and parks after the
/// ownership map said yes, before the header read; thread D destroys X
/// (unmapping its segment). Before the fix D unmapped at once and R's
/// header read then faulted (SIGSEGV); now D waits for R.
fn owns_during_unmap() {
    let x = engine::arena_new().expect("arena X");
    let p = engine::arena_alloc(x, 64, 16, false) as usize;
    assert!(p != 0);
    let (r_id, r_go, r) = thread_with_pause(
        || {},
        move |()| {
            assert!(engine::owns(p as *const u8));
        },
    );
    race_hooks::arm(Point::OwnershipMarkSeen, r_id);
    r_go.send(()).unwrap();
    wait_parked(Point::OwnershipMarkSeen);
    // SAFETY: X's one block is never used again (R only asks about its
    // address).
    let d = thread::spawn(move || assert!(unsafe { engine::arena_destroy(x) }));
    thread::sleep(Duration::from_millis(300));
    let d_waited = !d.is_finished();
    race_hooks::release(Point::OwnershipMarkSeen);
    r.join().expect("thread R");
    d.join().expect("thread D");
    assert!(d_waited, "the destroy did not wait for the reader");
    assert!(!engine::owns(p as *const u8));
}

// ----------------------------------------------------- 5. fork

#[test]
fn fork_while_a_purge_holds_the_lock_of_a_destroyed_arena_leaves_the_child_working() {
    in_child_with(
        "fork_while_a_purge_holds_the_lock_of_a_destroyed_arena_leaves_the_child_working",
        &[("ARENALLOC_PURGE_SLICE_US", "0")],
        fork_during_purge_of_destroyed,
    );
}

/// Thread P trims X and parks between two lock holds; X is destroyed; P
/// takes X's lock again and parks holding it. Another thread forks: the
/// fork handlers must take that lock too (wait for P), or the child
/// inherits it held, and the child's next arena creation, which reuses X's
/// slot, hangs. The child creates an arena and exits 0.
fn fork_during_purge_of_destroyed() {
    let (p_id, p) = destroy_an_arena_while_its_trim_is_between_slices();
    race_hooks::arm(Point::PurgeLocked, p_id);
    race_hooks::release(Point::PurgeBetweenSlices);
    wait_parked(Point::PurgeLocked);
    let forker = thread::spawn(|| {
        // SAFETY: the child only creates an arena and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = engine::arena_new().is_some();
            // SAFETY: ends the child without running the parent's atexit.
            unsafe { libc::_exit(if ok { 0 } else { 3 }) };
        }
        assert!(pid > 0, "fork failed");
        pid
    });
    thread::sleep(Duration::from_millis(200));
    race_hooks::release(Point::PurgeLocked);
    let pid = forker.join().expect("the forking thread");
    p.join().expect("thread P");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = 0;
    loop {
        // SAFETY: our child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if Instant::now() >= deadline {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("the forked child hung creating an arena (a lock held across fork)");
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );
}

#[test]
fn an_unmap_waits_only_for_the_inspections_that_began_before_it() {
    in_child(
        "an_unmap_waits_only_for_the_inspections_that_began_before_it",
        unmap_not_held_up_by_new_inspections,
    );
}

/// Inspection R1 (`owns`) parks after reading a bit of arena X's segment;
/// destroy D of X waits for it. Inspection R2 begins after D started and
/// parks inside. When R1 leaves, D must finish although R2 is still inside:
/// a stream of new inspections cannot hold an unmap (and the arena lock it
/// runs under) up for ever. With one reader count for all, D waited for R2.
fn unmap_not_held_up_by_new_inspections() {
    let x = engine::arena_new().expect("arena X");
    let p = engine::arena_alloc(x, 64, 16, false) as usize;
    let other = engine::malloc(64) as usize;
    let (r1_id, r1_go, r1) = thread_with_pause(
        || {},
        move |()| {
            engine::owns(p as *const u8);
        },
    );
    race_hooks::arm(Point::OwnershipMarkSeen, r1_id);
    r1_go.send(()).unwrap();
    wait_parked(Point::OwnershipMarkSeen);
    // SAFETY: X's one block is never used again.
    let d = thread::spawn(move || assert!(unsafe { engine::arena_destroy(x) }));
    thread::sleep(Duration::from_millis(100));
    assert!(!d.is_finished(), "the destroy did not wait for R1");
    let (r2_id, r2_go, r2) = thread_with_pause(
        || {},
        move |()| {
            assert!(engine::owns(other as *const u8));
        },
    );
    race_hooks::arm(Point::InspectCounted, r2_id);
    r2_go.send(()).unwrap();
    wait_parked(Point::InspectCounted);
    race_hooks::release(Point::OwnershipMarkSeen);
    r1.join().expect("R1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    let finished = d.is_finished();
    race_hooks::release(Point::InspectCounted);
    r2.join().expect("R2");
    d.join().expect("D");
    assert!(
        finished,
        "the unmap waited for an inspection that began after it"
    );
    // SAFETY: a block of ours.
    unsafe { engine::free(other as *mut u8) };
}

#[test]
fn switching_to_an_arena_destroyed_meanwhile_is_refused_and_joins_no_other_arena() {
    in_child(
        "switching_to_an_arena_destroyed_meanwhile_is_refused_and_joins_no_other_arena",
        stale_switch,
    );
}

/// Thread T switches to X; its handle resolves, and T parks before its new
/// heap joins X. X is destroyed and Y created in the slot. T's switch must
/// fail with `EINVAL` and leave T in the default arena, not in Y (before
/// the fix it joined Y through X's handle and reported success).
fn stale_switch() {
    let x = engine::arena_new().expect("arena X");
    let (t_id, t_go, t) = thread_with_pause(
        || {},
        move |()| {
            engine::os::set_errno(0);
            let switched = engine::arena_set(x);
            let errno = engine::os::errno();
            assert_eq!(switched, None, "a stale handle was switched to");
            assert_eq!(errno, libc::EINVAL);
            assert_eq!(engine::arena_current(), engine::arena_default());
        },
    );
    race_hooks::arm(Point::JoinBeforeLock, t_id);
    t_go.send(()).unwrap();
    wait_parked(Point::JoinBeforeLock);
    // SAFETY: X holds nothing; T is parked outside X's lock.
    assert!(unsafe { engine::arena_destroy(x) });
    let y = engine::arena_new().expect("arena Y");
    race_hooks::release(Point::JoinBeforeLock);
    t.join().expect("thread T");
    assert_eq!(engine::arena_stats(y).unwrap().threads, 0);
}

// --------------------------- 6. the purger's claim against the owner

/// Makes `x` the calling thread's arena and allocates and frees ten 1 KiB
/// blocks there: the thread's heap keeps a current span with no block in
/// it, which a trim gives back if it can claim the heap.
fn leave_an_empty_current_span_in(x: engine::ArenaHandle) {
    engine::arena_set(x).expect("enter X");
    let blocks: Vec<usize> = (0..10).map(|_| engine::malloc(1000) as usize).collect();
    for &b in &blocks {
        // SAFETY: blocks of ours.
        unsafe { engine::free(b as *mut u8) };
    }
}

#[test]
fn a_trim_never_takes_memory_from_a_thread_that_is_inside_the_allocator() {
    in_child(
        "a_trim_never_takes_memory_from_a_thread_that_is_inside_the_allocator",
        claim_against_owner,
    );
}

/// Thread O allocates and frees in arena X, so its heap keeps a current
/// span with no block in it (a trim would give it back); O then parks on
/// `malloc`'s slow path, inside the allocator. A trim of X meanwhile must
/// not claim O's heap (X's bytes in use stay), and once O is outside again a
/// trim takes the span.
fn claim_against_owner() {
    let x = engine::arena_new().expect("arena X");
    let (o_id, o_go, o) = thread_with_pause(
        move || leave_an_empty_current_span_in(x),
        |()| {
            // A class this thread has no span of yet: the slow path.
            let p = engine::malloc(3000);
            assert!(!p.is_null());
            // SAFETY: a block of ours.
            unsafe { engine::free(p) };
        },
    );
    let held = engine::arena_stats(x).unwrap().in_use_bytes;
    assert!(held > 0, "O's heap holds no span");
    trim_while_held_takes_nothing(x, Point::MallocSlowPath, (o_id, o_go, o), held);
}

/// Lets thread O (`o`: its id, its go-ahead and its handle) go on, holds it
/// at `point` (inside the allocator), trims arena X meanwhile and checks
/// the trim took none of the `held` bytes in use; then lets O finish and
/// exit, after which X holds nothing.
fn trim_while_held_takes_nothing(
    x: engine::ArenaHandle,
    point: Point,
    (o_id, o_go, o): (usize, mpsc::Sender<()>, thread::JoinHandle<()>),
    held: usize,
) {
    race_hooks::arm(point, o_id);
    o_go.send(()).unwrap();
    wait_parked(point);
    let _ = engine::arena_trim(x);
    let while_inside = engine::arena_stats(x).unwrap().in_use_bytes;
    race_hooks::release(point);
    o.join().expect("thread O");
    assert_eq!(
        while_inside, held,
        "a trim took spans from a heap whose owner was inside the allocator at {point:?}"
    );
    // O has exited: its spans went back to X (empty ones as free slices).
    let _ = engine::arena_trim(x);
    assert_eq!(engine::arena_stats(x).unwrap().in_use_bytes, 0);
}

#[test]
fn a_trim_never_takes_a_span_whose_last_block_the_owner_is_freeing() {
    in_child(
        "a_trim_never_takes_a_span_whose_last_block_the_owner_is_freeing",
        last_free_against_trim,
    );
}

/// Thread O fills a span of 1 KiB blocks in arena X and starts the next
/// one, then frees the first span's blocks; its last free empties the span
/// on `free`'s fast path, which hands it back from inside the allocator
/// (`span_emptied`, going from the fast path's flag to the nesting depth
/// with no moment outside). O is held just after that switch while this
/// thread trims X: the trim must not claim O's heap (it would retire the
/// empty span, and O would retire it a second time).
fn last_free_against_trim() {
    /// 1 KiB blocks in a 64 KiB span.
    const PER_SPAN: usize = 64;
    let x = engine::arena_new().expect("arena X");
    let (o_id, o_go, o) = thread_with_pause(
        move || {
            engine::arena_set(x).expect("enter X");
            let blocks: Vec<usize> = (0..=PER_SPAN)
                .map(|_| engine::malloc(1024) as usize)
                .collect();
            assert!(blocks.iter().all(|&b| b != 0));
            // The first span's blocks but its last: its span is in O's
            // available list then, with one block out.
            for &b in &blocks[..PER_SPAN - 1] {
                // SAFETY: blocks of ours, each freed once.
                unsafe { engine::free(b as *mut u8) };
            }
            blocks
        },
        move |blocks| {
            for &b in &blocks[PER_SPAN - 1..] {
                // SAFETY: as above.
                unsafe { engine::free(b as *mut u8) };
            }
        },
    );
    let held = engine::arena_stats(x).unwrap().in_use_bytes;
    assert!(held >= 2 * PER_SPAN * 1024, "O holds two spans: {held}");
    trim_while_held_takes_nothing(x, Point::SpanEmptied, (o_id, o_go, o), held);
}

#[test]
fn an_idle_threads_heap_is_trimmed_while_it_waits_outside_the_allocator() {
    in_child(
        "an_idle_threads_heap_is_trimmed_while_it_waits_outside_the_allocator",
        claim_of_idle_owner,
    );
}

/// The other side of the handshake: the same heap, its owner parked
/// outside the allocator (waiting on a channel): a trim claims it and takes
/// the empty current span; the owner then allocates on as usual.
fn claim_of_idle_owner() {
    let x = engine::arena_new().expect("arena X");
    let (_o_id, o_go, o) = thread_with_pause(
        move || leave_an_empty_current_span_in(x),
        |()| {
            let blocks: Vec<usize> = (0..100).map(|_| engine::malloc(1000) as usize).collect();
            let mut sorted = blocks.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), blocks.len(), "a block was handed out twice");
            for &b in &blocks {
                // SAFETY: blocks of ours.
                unsafe { engine::free(b as *mut u8) };
            }
        },
    );
    assert!(engine::arena_stats(x).unwrap().in_use_bytes > 0);
    let _ = engine::arena_trim(x);
    assert_eq!(
        engine::arena_stats(x).unwrap().in_use_bytes,
        0,
        "the idle owner's empty span was not taken"
    );
    o_go.send(()).unwrap();
    o.join().expect("thread O");
}

#[test]
fn an_owner_frees_without_waiting_while_a_trim_holds_its_heap() {
    in_child(
        "an_owner_frees_without_waiting_while_a_trim_holds_its_heap",
        free_during_claim,
    );
}

/// `free`'s fast path does not look at the claim; it compares the span's
/// owner with the thread's owner key, which a claimer changes. Thread O
/// keeps ten blocks in arena X and waits outside the allocator; a trim of X
/// in thread T claims O's heap and is held there (`ClaimConfirmed`). O then
/// frees a block: the free must neither touch O's spans (the claimer's now)
/// nor wait for the claim, but go onto the span's remote list. After the
/// trim, O allocates and frees on as usual, and X ends with nothing in use.
fn free_during_claim() {
    let x = engine::arena_new().expect("arena X");
    let (freed_tx, freed_rx) = mpsc::channel();
    let (_o_id, o_go, o) = thread_with_pause(
        move || {
            engine::arena_set(x).expect("enter X");
            (0..10)
                .map(|_| engine::malloc(1000) as usize)
                .collect::<Vec<usize>>()
        },
        move |blocks| {
            // SAFETY: a block of ours, freed once.
            unsafe { engine::free(blocks[0] as *mut u8) };
            freed_tx.send(()).unwrap();
            let again: Vec<usize> = (0..100).map(|_| engine::malloc(1000) as usize).collect();
            let mut all: Vec<usize> = again.iter().chain(&blocks[1..]).copied().collect();
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), 109, "a block was handed out twice");
            for &b in again.iter().chain(&blocks[1..]) {
                // SAFETY: blocks of ours, each freed once.
                unsafe { engine::free(b as *mut u8) };
            }
        },
    );
    let (t_id, t_go, t) = thread_with_pause(
        || (),
        move |()| {
            let _ = engine::arena_trim(x);
        },
    );
    race_hooks::arm(Point::ClaimConfirmed, t_id);
    t_go.send(()).unwrap();
    wait_parked(Point::ClaimConfirmed);
    o_go.send(()).unwrap();
    let waited = freed_rx.recv_timeout(Duration::from_secs(10));
    race_hooks::release(Point::ClaimConfirmed);
    t.join().expect("thread T");
    assert!(
        waited.is_ok(),
        "the owner's free waited for the claim (or touched the claimed heap)"
    );
    o.join().expect("thread O");
    let _ = engine::arena_trim(x);
    assert_eq!(engine::arena_stats(x).unwrap().in_use_bytes, 0);
}

/// Allocates 1500-byte blocks in `x` until its limit refuses one; returns
/// them (as addresses, to cross threads).
fn fill_arena(x: engine::ArenaHandle) -> Vec<usize> {
    engine::arena_set(x).expect("enter X");
    let mut blocks = Vec::new();
    loop {
        let p = engine::malloc(1500);
        if p.is_null() {
            break;
        }
        blocks.push(p as usize);
    }
    engine::arena_set(engine::arena_default()).expect("leave X");
    blocks
}

#[test]
fn an_allocation_at_the_limit_waits_for_a_busy_owner_and_reclaims_its_freed_spans() {
    in_child_with(
        "an_allocation_at_the_limit_waits_for_a_busy_owner_and_reclaims_its_freed_spans",
        &[("ARENALLOC_BACKGROUND", "0")],
        reclaim_waits_for_busy_owner,
    );
}

/// Thread F fills arena X up to its limit; this thread frees every one of
/// F's blocks (remote frees, pending in F's spans). F is then inside the
/// allocator (parked on `malloc`'s slow path, as if preempted there) when
/// this thread allocates in the full arena: the reclaim cannot claim F's
/// heap, so it must look again once F is outside, not refuse the
/// allocation for blocks that are all free. Before the fix it refused it
/// (ENOMEM), which the CI run saw when a preempted filler thread lost
/// this race by chance.
fn reclaim_waits_for_busy_owner() {
    const LIMIT: usize = 4 << 20;
    let x = engine::arena_new().expect("arena X");
    assert!(engine::arena_set_limit(x, LIMIT));
    let (blocks_tx, blocks_rx) = mpsc::channel::<Vec<usize>>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let (f_id, f_go, f) = thread_with_pause(
        move || blocks_tx.send(fill_arena(x)).unwrap(),
        move |()| {
            // A class this thread has no span of yet: the slow path.
            let p = engine::malloc(3000);
            assert!(!p.is_null());
            // SAFETY: a block of ours.
            unsafe { engine::free(p) };
            done_tx.send(()).unwrap();
            // Alive, outside the allocator, until the test is over.
            exit_rx.recv().unwrap();
        },
    );
    let blocks = blocks_rx.recv().unwrap();
    assert!(
        blocks.len() > 2000,
        "{} blocks fit under the limit",
        blocks.len()
    );
    assert!(
        engine::arena_alloc(x, 100, 16, false).is_null(),
        "X is full"
    );
    for &b in &blocks {
        // SAFETY: F's blocks, each freed once.
        unsafe { engine::free(b as *mut u8) };
    }
    assert!(engine::arena_stats(x).unwrap().pending_remote_spans > 0);
    race_hooks::arm(Point::MallocSlowPath, f_id);
    f_go.send(()).unwrap();
    wait_parked(Point::MallocSlowPath);
    // Once the reclaim has found F busy, let F out of the allocator.
    race_hooks::arm(Point::ReclaimFoundBusy, race_hooks::thread_id());
    let releaser = thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !race_hooks::is_parked(Point::ReclaimFoundBusy) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        let reclaim_waited = race_hooks::is_parked(Point::ReclaimFoundBusy);
        race_hooks::release(Point::MallocSlowPath);
        done_rx.recv().unwrap();
        race_hooks::release(Point::ReclaimFoundBusy);
        reclaim_waited
    });
    let p = engine::arena_alloc(x, 100, 16, false);
    let reclaim_waited = releaser.join().expect("releaser");
    let after = engine::arena_stats(x).unwrap();
    assert!(
        !p.is_null(),
        "refused for the limit while F was busy (the reclaim waited: {reclaim_waited}): {after:?}"
    );
    assert_eq!(after.pending_remote_spans, 0, "{after:?}");
    assert!(after.in_use_bytes < LIMIT / 4, "{after:?}");
    // SAFETY: a block of ours.
    unsafe { engine::free(p) };
    exit_tx.send(()).unwrap();
    f.join().expect("thread F");
}

#[test]
fn without_membarrier_an_allocation_at_the_limit_never_waits_for_heaps_it_cannot_claim() {
    in_child_with(
        "without_membarrier_an_allocation_at_the_limit_never_waits_for_heaps_it_cannot_claim",
        &[("ARENALLOC_BACKGROUND", "0")],
        reclaim_without_membarrier,
    );
}

/// Makes `membarrier` fail with ENOSYS for the calling thread and the
/// threads it starts (a seccomp filter, as some container profiles have).
fn block_membarrier() {
    let ins = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let filter = [
        // The system call's number.
        ins(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
        ins(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            libc::SYS_membarrier as u32,
        ),
        ins(
            libc::BPF_RET | libc::BPF_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        ),
        ins(libc::BPF_RET | libc::BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: plain prctl calls; the filter outlives the call (the kernel
    // copies it).
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &program as *const libc::sock_fprog
            ),
            0,
            "seccomp: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Without a working `membarrier` no claim is ever confirmed, so the
/// reclaim of an allocation refused for its arena's limit can never take
/// another thread's heap: it must give up at once, not count those heaps
/// as busy and wait for them (20 ms on every such allocation, which the
/// CI's containers would pay if their seccomp profile refused the call).
/// Thread F fills arena X and waits outside the allocator; this thread
/// frees F's blocks (remote frees, pending in F's spans) and allocates in
/// the full arena. F's heap cannot be claimed: the allocation is refused
/// (ENOMEM) without the reclaim stopping at its "found busy" point; once F
/// exits (and gives its spans back) X has room again.
fn reclaim_without_membarrier() {
    const LIMIT: usize = 4 << 20;
    block_membarrier();
    assert!(
        !engine::os::membarrier(),
        "membarrier still works under the filter"
    );
    let x = engine::arena_new().expect("arena X");
    assert!(engine::arena_set_limit(x, LIMIT));
    let (blocks_tx, blocks_rx) = mpsc::channel::<Vec<usize>>();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let f = thread::spawn(move || {
        blocks_tx.send(fill_arena(x)).unwrap();
        // Alive, outside the allocator, until told to exit.
        exit_rx.recv().unwrap();
    });
    let blocks = blocks_rx.recv().unwrap();
    assert!(blocks.len() > 2000, "{} blocks fit", blocks.len());
    for &b in &blocks {
        // SAFETY: F's blocks, each freed once.
        unsafe { engine::free(b as *mut u8) };
    }
    assert!(engine::arena_stats(x).unwrap().pending_remote_spans > 0);
    race_hooks::arm(Point::ReclaimFoundBusy, race_hooks::thread_id());
    let returned = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let returned = returned.clone();
        thread::spawn(move || {
            use std::sync::atomic::Ordering::Acquire;
            while !race_hooks::is_parked(Point::ReclaimFoundBusy) && !returned.load(Acquire) {
                thread::sleep(Duration::from_millis(1));
            }
            let waited = race_hooks::is_parked(Point::ReclaimFoundBusy);
            // Let it go on (or disarm the point, never reached).
            race_hooks::release(Point::ReclaimFoundBusy);
            waited
        })
    };
    let p = engine::arena_alloc(x, 100, 16, false);
    returned.store(true, std::sync::atomic::Ordering::Release);
    let waited = watcher.join().expect("watcher");
    assert!(
        !waited,
        "the reclaim counted a heap it could never claim as busy and waited for it"
    );
    assert!(p.is_null(), "X had room, so nothing was tested");
    exit_tx.send(()).unwrap();
    f.join().expect("thread F");
    let p = engine::arena_alloc(x, 100, 16, false);
    assert!(!p.is_null(), "no room in X after F gave its spans back");
    // SAFETY: a block of ours.
    unsafe { engine::free(p) };
}

// -------------------- 7. a remote free against the span's reuse

#[test]
fn a_remote_free_touches_nothing_of_the_span_once_its_push_landed() {
    in_child(
        "a_remote_free_touches_nothing_of_the_span_once_its_push_landed",
        remote_free_against_unmap,
    );
}

/// Thread R frees the only block of arena X's only segment and parks right
/// after its push landed, still inside `free`. The owner's trim collects
/// the block, retires the span and unmaps the segment. R must then return
/// without reading the span (it would fault on the unmapped header).
fn remote_free_against_unmap() {
    let x = engine::arena_new().expect("arena X");
    let p = engine::arena_alloc(x, 64, 16, false) as usize;
    let mapped = engine::arena_stats(x).unwrap().mapped_bytes;
    assert!(mapped > 0);
    let (r_id, r_go, r) = thread_with_pause(
        || {},
        move |()| {
            // SAFETY: a live block of ours, given up here.
            unsafe { engine::free(p as *mut u8) };
        },
    );
    race_hooks::arm(Point::RemotePushed, r_id);
    r_go.send(()).unwrap();
    wait_parked(Point::RemotePushed);
    let _ = engine::arena_trim(x);
    let after = engine::arena_stats(x).unwrap().mapped_bytes;
    race_hooks::release(Point::RemotePushed);
    r.join().expect("thread R");
    assert_eq!(after, 0, "the trim did not unmap the emptied segment");
    assert!(!engine::owns(p as *const u8));
}
