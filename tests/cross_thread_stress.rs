//! Blocks allocated on one thread and freed on another.
//!
//! - Producers allocate random sizes (16 B to 64 KiB mostly, some large),
//!   write a pattern and send the blocks to consumer threads, which check
//!   and free them: every free is a remote free. Several rounds, with new
//!   producer threads each round, so spans of exited producers (abandoned
//!   with live blocks) are freed into and adopted again.
//! - Four threads allocate and send each block to a random one of the four
//!   (themselves included), draining their own inbox as they go.
//! - This binary's global allocator is `ArenaAlloc`: the test harness, the
//!   channels and the std collections of the last test all run on arenalloc,
//!   with `Vec` growth (`realloc`, over-aligned too) and cross-thread drops.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::thread;

use arenalloc_engine as engine;
use arenalloc_tests::{pattern, Rng};

#[global_allocator]
static GLOBAL: arenalloc::ArenaAlloc = arenalloc::ArenaAlloc;

/// A block in flight: address, requested size, pattern seed, zeroed?
struct Msg {
    addr: usize,
    size: usize,
    seed: u64,
}

fn random_size(rng: &mut Rng) -> usize {
    if rng.one_in(64) {
        rng.log_range(128 * 1024 + 1, 4 << 20)
    } else {
        rng.log_range(16, 64 * 1024)
    }
}

/// Allocates a block of a random size by a random route (malloc, zalloc,
/// malloc_aligned, or malloc then realloc), checks what the route promises,
/// and fills it with the pattern of `seed`.
fn produce(rng: &mut Rng, seed: u64) -> Msg {
    let size = random_size(rng);
    let p = match rng.below(8) {
        0 => {
            let p = engine::zalloc(size);
            assert!(!p.is_null(), "zalloc({size}) failed");
            // SAFETY: `size` bytes at `p`.
            let nz = unsafe { pattern::first_nonzero(p, size) };
            assert_eq!(nz, None, "zalloc({size}) = {p:p} has a non-zero byte");
            p
        }
        1 => {
            let align = 1usize << rng.range(5, 16);
            let p = engine::malloc_aligned(size, align);
            assert!(!p.is_null(), "malloc_aligned({size}, {align}) failed");
            assert_eq!(
                p as usize % align,
                0,
                "malloc_aligned({size}, {align}) = {p:p}"
            );
            p
        }
        2 => {
            let first = rng.log_range(1, 4096);
            let p = engine::malloc(first);
            assert!(!p.is_null());
            // SAFETY: `first` bytes at `p`.
            unsafe { pattern::fill(p, first, seed) };
            // SAFETY: a live block of ours.
            let q = unsafe { engine::realloc(p, size) };
            assert!(!q.is_null(), "realloc({first} -> {size}) failed");
            // SAFETY: at least min(first, size) bytes at `q`.
            let kept = unsafe { pattern::check(q, first.min(size), seed) };
            assert_eq!(kept, Ok(()), "realloc({first} -> {size}) lost bytes");
            q
        }
        _ => {
            let p = engine::malloc(size);
            assert!(!p.is_null(), "malloc({size}) failed");
            p
        }
    };
    // SAFETY: a live block of ours.
    let usable = unsafe { engine::usable_size(p) };
    assert!(usable >= size, "usable_size {usable} < {size}");
    // SAFETY: `size` bytes at `p` are ours.
    unsafe { pattern::fill_sparse(p, size, seed) };
    Msg {
        addr: p as usize,
        size,
        seed,
    }
}

fn consume(m: Msg, who: &str) {
    let p = m.addr as *mut u8;
    // SAFETY: the producer gave up the block to us.
    let ok = unsafe { pattern::check_sparse(p, m.size, m.seed) };
    assert_eq!(
        ok,
        Ok(()),
        "{who}: block {p:p} of {} bytes (seed {:#x}) corrupted",
        m.size,
        m.seed
    );
    // SAFETY: as above; freed once, here.
    unsafe { engine::free(p) };
}

#[test]
fn producers_hand_blocks_to_consumers_who_free_them() {
    const ROUNDS: u64 = 4;
    const PRODUCERS: u64 = 3;
    const CONSUMERS: usize = 2;
    const PER_PRODUCER: u64 = 4000;
    for round in 0..ROUNDS {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..CONSUMERS)
            .map(|_| mpsc::sync_channel::<Msg>(512))
            .unzip();
        let consumers: Vec<_> = receivers
            .into_iter()
            .enumerate()
            .map(|(c, rx)| {
                thread::spawn(move || {
                    let who = format!("round {round} consumer {c}");
                    let mut n = 0u64;
                    for m in rx {
                        consume(m, &who);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|t| {
                let senders = senders.clone();
                thread::spawn(move || {
                    let mut rng = Rng::new(round * 1000 + t);
                    // Some blocks stay with the producer and are freed
                    // locally at the end, mixed with the remote ones.
                    let mut kept = Vec::new();
                    for i in 0..PER_PRODUCER {
                        let seed = (round << 48) | (t << 32) | i;
                        let m = produce(&mut rng, seed);
                        if rng.one_in(8) {
                            kept.push(m);
                        } else {
                            let to = rng.below(senders.len());
                            senders[to].send(m).expect("consumer alive");
                        }
                    }
                    let local = kept.len() as u64;
                    for m in kept {
                        consume(m, "producer (local free)");
                    }
                    local
                })
            })
            .collect();
        drop(senders);
        let local: u64 = producers.into_iter().map(|h| h.join().unwrap()).sum();
        let remote: u64 = consumers.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(local + remote, PRODUCERS * PER_PRODUCER, "round {round}");
    }
}

#[test]
fn four_threads_free_each_others_blocks_at_random() {
    const THREADS: usize = 4;
    const PER_THREAD: u64 = 12_000;
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..THREADS).map(|_| mpsc::channel::<Msg>()).unzip();
    let handles: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(me, inbox)| {
            let senders = senders.clone();
            thread::spawn(move || {
                let who = format!("thread {me}");
                let mut rng = Rng::new(0xA11 + me as u64);
                let mut freed = 0u64;
                for i in 0..PER_THREAD {
                    let m = produce(&mut rng, ((me as u64) << 32) | i);
                    senders[rng.below(THREADS)].send(m).expect("inbox alive");
                    while let Ok(m) = inbox.try_recv() {
                        consume(m, &who);
                        freed += 1;
                    }
                }
                drop(senders);
                for m in inbox {
                    consume(m, &who);
                    freed += 1;
                }
                freed
            })
        })
        .collect();
    drop(senders);
    let freed: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(freed, THREADS as u64 * PER_THREAD);
}

#[repr(align(256))]
#[derive(Clone, Copy, PartialEq, Debug)]
struct Aligned256([u64; 4]);

#[repr(align(4096))]
#[derive(Clone, Copy, PartialEq, Debug)]
struct Page(u64);

/// What a producer builds with std collections and sends away.
struct Parcel {
    strings: Vec<String>,
    map: HashMap<u64, Vec<u8>>,
    tree: BTreeMap<u64, Box<[u8]>>,
    aligned: Vec<Aligned256>,
    pages: Vec<Page>,
    seed: u64,
}

fn bytes_of(seed: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: the capacity is `len`; every byte is written before set_len.
    unsafe {
        pattern::fill(v.as_mut_ptr(), len, seed);
        v.set_len(len);
    }
    v
}

fn has_pattern(bytes: &[u8], seed: u64) -> bool {
    // SAFETY: a live slice.
    unsafe { pattern::check(bytes.as_ptr(), bytes.len(), seed) }.is_ok()
}

fn build_parcel(rng: &mut Rng, seed: u64) -> Parcel {
    let mut strings = Vec::new();
    for i in 0..rng.range(1, 64) {
        // Grown by pushes: realloc through GlobalAlloc.
        let mut s = String::new();
        for _ in 0..rng.range(0, 40) {
            s.push_str(&format!("{seed}:{i};"));
        }
        strings.push(s);
    }
    let mut map = HashMap::new();
    let mut tree = BTreeMap::new();
    for k in 0..rng.range(1, 32) as u64 {
        map.insert(k, bytes_of(seed ^ k, rng.log_range(1, 32 * 1024)));
        let len = if rng.one_in(16) {
            rng.log_range(200_000, 2 << 20)
        } else {
            rng.log_range(1, 16 * 1024)
        };
        tree.insert(k, bytes_of(seed.rotate_left(7) ^ k, len).into_boxed_slice());
    }
    let mut aligned = Vec::new();
    for i in 0..rng.range(1, 600) as u64 {
        aligned.push(Aligned256([seed, i, !seed, !i]));
    }
    let mut pages = Vec::new();
    for i in 0..rng.range(1, 40) as u64 {
        pages.push(Page(seed ^ i));
    }
    Parcel {
        strings,
        map,
        tree,
        aligned,
        pages,
        seed,
    }
}

fn check_parcel(p: &Parcel) {
    let seed = p.seed;
    for (i, s) in p.strings.iter().enumerate() {
        let unit = format!("{seed}:{i};");
        assert_eq!(s.len() % unit.len(), 0);
        assert!(s
            .as_bytes()
            .chunks(unit.len())
            .all(|c| c == unit.as_bytes()));
        if s.capacity() > 0 {
            assert!(engine::owns(s.as_ptr()), "String buffer not from arenalloc");
        }
    }
    for (k, v) in &p.map {
        assert!(has_pattern(v, seed ^ k), "map[{k}] corrupted");
        assert!(engine::owns(v.as_ptr()));
    }
    for (k, v) in &p.tree {
        assert!(
            has_pattern(v, seed.rotate_left(7) ^ k),
            "tree[{k}] corrupted"
        );
        assert!(engine::owns(v.as_ptr()));
    }
    assert_eq!(p.aligned.as_ptr() as usize % 256, 0);
    assert!(engine::owns(p.aligned.as_ptr().cast()));
    for (i, a) in p.aligned.iter().enumerate() {
        let i = i as u64;
        assert_eq!(*a, Aligned256([seed, i, !seed, !i]));
    }
    assert_eq!(p.pages.as_ptr() as usize % 4096, 0);
    for (i, pg) in p.pages.iter().enumerate() {
        assert_eq!(pg.0, seed ^ i as u64);
    }
}

#[test]
fn std_collections_on_arenalloc_move_between_threads() {
    // The global allocator really is arenalloc in this binary.
    let probe = Box::new(0x5eed_u64);
    assert!(
        engine::owns((&*probe as *const u64).cast()),
        "Box not allocated by arenalloc: #[global_allocator] not in effect"
    );
    const PRODUCERS: u64 = 3;
    const PARCELS: u64 = 100;
    let (tx, rx) = mpsc::sync_channel::<Parcel>(8);
    let consumer = thread::spawn(move || {
        let mut n = 0;
        for parcel in rx {
            check_parcel(&parcel);
            // Dropped here: every buffer freed on a thread that did not
            // allocate it.
            drop(parcel);
            n += 1;
        }
        n
    });
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|t| {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut rng = Rng::new(0xC0FFEE + t);
                for i in 0..PARCELS {
                    let parcel = build_parcel(&mut rng, (t << 32) | i);
                    check_parcel(&parcel);
                    tx.send(parcel).expect("consumer alive");
                }
            })
        })
        .collect();
    drop(tx);
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(consumer.join().unwrap(), PRODUCERS * PARCELS);
}
