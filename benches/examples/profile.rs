//! A small driver for profiling one workload on one allocator, e.g. under
//! callgrind:
//!
//! ```text
//! cargo build --profile bench -p arenalloc-benches --example profile
//! valgrind --tool=callgrind target/release/examples/profile realloc_step64 arenalloc 5
//! ```
//!
//! Usage: `profile WORKLOAD ALLOCATOR [ITERATIONS]`, where ALLOCATOR is one
//! of glibc, arenalloc, mimalloc, jemalloc and WORKLOAD one of the names
//! printed by `profile --help`.

use std::alloc::{GlobalAlloc, System};
use std::process::exit;
use std::time::Instant;

use arenalloc::ArenaAlloc;
use arenalloc_benches::{
    batch, large_churn, malloc_free, random_sizes, realloc_growth, thread_spawn_join,
    CrossThreadFree, FreeOrder, Growth, KIB, MIB,
};
use mimalloc::MiMalloc;
use tikv_jemallocator::Jemalloc;

static GLIBC: System = System;
static ARENALLOC: ArenaAlloc = ArenaAlloc;
static MIMALLOC: MiMalloc = MiMalloc;
static JEMALLOC: Jemalloc = Jemalloc;

const WORKLOADS: &[&str] = &[
    "malloc_free_16B",
    "malloc_free_64B",
    "malloc_free_256B",
    "malloc_free_1KiB",
    "malloc_free_8KiB",
    "malloc_free_64KiB",
    "malloc_free_1MiB",
    "batch_fifo",
    "batch_lifo",
    "realloc_double",
    "realloc_step64",
    "xthread_free",
    "large_churn",
    "thread_spawn_join",
    "arena_switch",
];

fn usage() -> ! {
    eprintln!("usage: profile WORKLOAD glibc|arenalloc|mimalloc|jemalloc [ITERATIONS]");
    eprintln!("workloads: {}", WORKLOADS.join(" "));
    exit(2)
}

fn run<A: GlobalAlloc + Sync + 'static>(a: &'static A, workload: &str, iters: u64) {
    let mut slots = Vec::with_capacity(10_000);
    match workload {
        "malloc_free_16B" => (0..iters).for_each(|_| malloc_free(a, 16)),
        "malloc_free_64B" => (0..iters).for_each(|_| malloc_free(a, 64)),
        "malloc_free_256B" => (0..iters).for_each(|_| malloc_free(a, 256)),
        "malloc_free_1KiB" => (0..iters).for_each(|_| malloc_free(a, KIB)),
        "malloc_free_8KiB" => (0..iters).for_each(|_| malloc_free(a, 8 * KIB)),
        "malloc_free_64KiB" => (0..iters).for_each(|_| malloc_free(a, 64 * KIB)),
        "malloc_free_1MiB" => (0..iters).for_each(|_| malloc_free(a, MIB)),
        "batch_fifo" => (0..iters).for_each(|_| batch(a, &mut slots, 10_000, 64, FreeOrder::Fifo)),
        "batch_lifo" => (0..iters).for_each(|_| batch(a, &mut slots, 10_000, 64, FreeOrder::Lifo)),
        "realloc_double" => (0..iters).for_each(|_| realloc_growth(a, Growth::Doubling, MIB)),
        "realloc_step64" => (0..iters).for_each(|_| realloc_growth(a, Growth::Step(64), MIB)),
        "xthread_free" => {
            let mut pipe = CrossThreadFree::new(a, random_sizes(0x5eed, 1000, 64, KIB));
            pipe.run(iters);
        }
        "large_churn" => {
            let sizes = random_sizes(0x1a7e, 20, 5 * MIB, 25 * MIB);
            (0..iters).for_each(|_| large_churn(a, &sizes));
        }
        "thread_spawn_join" => (0..iters).for_each(|_| thread_spawn_join(a, 100)),
        // arenalloc's own: enter a dedicated arena and restore (the
        // allocator argument is ignored).
        "arena_switch" => {
            let library = arenalloc::Arena::new().expect("an arena");
            drop(library.run(|| Box::new(1u8)));
            (0..iters).for_each(|_| drop(std::hint::black_box(&library).enter().expect("enter")));
        }
        _ => usage(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args.len() > 3 {
        usage();
    }
    let iters = match args.get(2).map(|s| s.parse::<u64>()) {
        None => 1000,
        Some(Ok(n)) => n,
        Some(Err(_)) => usage(),
    };
    let (workload, allocator) = (args[0].as_str(), args[1].as_str());
    let start = Instant::now();
    match allocator {
        "glibc" => run(&GLIBC, workload, iters),
        "arenalloc" => run(&ARENALLOC, workload, iters),
        "mimalloc" => run(&MIMALLOC, workload, iters),
        "jemalloc" => run(&JEMALLOC, workload, iters),
        _ => usage(),
    }
    let elapsed = start.elapsed();
    println!(
        "{workload} {allocator}: {iters} iterations in {elapsed:?} ({:?} each)",
        elapsed.div_f64(iters.max(1) as f64)
    );
}
