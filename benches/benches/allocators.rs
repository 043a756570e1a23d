//! glibc, arenalloc, mimalloc and jemalloc on the same workloads.
//!
//! One criterion group per workload; in each group one function per
//! allocator (`glibc`, `arenalloc`, `mimalloc`, `jemalloc`), so criterion's
//! reports and `benches/compare_table.py` compare them side by side. Every
//! allocator is called through `GlobalAlloc` directly, from code that is
//! generic over the allocator; the binary's global allocator stays glibc.
//!
//! Run: `cargo bench -p arenalloc-benches` (all), or pass a filter, e.g.
//! `cargo bench -p arenalloc-benches -- malloc_free`.

use std::alloc::{GlobalAlloc, System};
use std::time::Duration;

use arenalloc::ArenaAlloc;
use arenalloc_benches::{
    batch, large_churn, malloc_free, random_sizes, realloc_growth, thread_spawn_join,
    CrossThreadFree, FreeOrder, Growth, KIB, MIB,
};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, Bencher, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use mimalloc::MiMalloc;
use tikv_jemallocator::Jemalloc;

static GLIBC: System = System;
static ARENALLOC: ArenaAlloc = ArenaAlloc;
static MIMALLOC: MiMalloc = MiMalloc;
static JEMALLOC: Jemalloc = Jemalloc;

/// A benchmark body, generic over the allocator.
trait Workload {
    fn run<A: GlobalAlloc + Sync + 'static>(&self, b: &mut Bencher<'_>, a: &'static A);
}

/// Adds one function per allocator to `group`, then finishes it.
fn compare<W: Workload>(mut group: BenchmarkGroup<'_, WallTime>, w: &W) {
    group.bench_function("glibc", |b| w.run(b, &GLIBC));
    group.bench_function("arenalloc", |b| w.run(b, &ARENALLOC));
    group.bench_function("mimalloc", |b| w.run(b, &MIMALLOC));
    group.bench_function("jemalloc", |b| w.run(b, &JEMALLOC));
    group.finish();
}

/// A size in the shortest of B, KiB, MiB.
fn size_name(size: usize) -> String {
    if size >= MIB && size.is_multiple_of(MIB) {
        format!("{}MiB", size / MIB)
    } else if size >= KIB && size.is_multiple_of(KIB) {
        format!("{}KiB", size / KIB)
    } else {
        format!("{size}B")
    }
}

struct MallocFree(usize);

impl Workload for MallocFree {
    fn run<A: GlobalAlloc + Sync + 'static>(&self, b: &mut Bencher<'_>, a: &'static A) {
        b.iter(|| malloc_free(a, self.0));
    }
}

fn bench_malloc_free(c: &mut Criterion) {
    for size in [16, 64, 256, KIB, 8 * KIB, 64 * KIB, MIB] {
        let group = c.benchmark_group(format!("malloc_free_{}", size_name(size)));
        compare(group, &MallocFree(size));
    }
}

const BATCH_COUNT: usize = 10_000;
const BATCH_SIZE: usize = 64;

struct Batch(FreeOrder);

impl Workload for Batch {
    fn run<A: GlobalAlloc + Sync + 'static>(&self, b: &mut Bencher<'_>, a: &'static A) {
        let mut slots = Vec::with_capacity(BATCH_COUNT);
        b.iter(|| batch(a, &mut slots, BATCH_COUNT, BATCH_SIZE, self.0));
    }
}

fn bench_batch(c: &mut Criterion) {
    for (order, name) in [(FreeOrder::Fifo, "fifo"), (FreeOrder::Lifo, "lifo")] {
        let mut group = c.benchmark_group(format!(
            "batch_{}x{}_{name}",
            BATCH_COUNT,
            size_name(BATCH_SIZE)
        ));
        group.throughput(Throughput::Elements(BATCH_COUNT as u64));
        compare(group, &Batch(order));
    }
}

const REALLOC_MAX: usize = MIB;

struct Realloc(Growth);

impl Workload for Realloc {
    fn run<A: GlobalAlloc + Sync + 'static>(&self, b: &mut Bencher<'_>, a: &'static A) {
        b.iter(|| realloc_growth(a, self.0, REALLOC_MAX));
    }
}

fn bench_realloc(c: &mut Criterion) {
    for (growth, name) in [(Growth::Doubling, "double"), (Growth::Step(64), "step64B")] {
        let mut group = c.benchmark_group(format!("realloc_{name}_to_{}", size_name(REALLOC_MAX)));
        group.throughput(Throughput::Elements(growth.steps(REALLOC_MAX) as u64));
        compare(group, &Realloc(growth));
    }
}

const XTHREAD_BATCH: usize = 1000;

struct CrossThread;

impl Workload for CrossThread {
    fn run<A: GlobalAlloc + Sync + 'static>(&self, b: &mut Bencher<'_>, a: &'static A) {
        let sizes = random_sizes(0x5eed, XTHREAD_BATCH, 64, KIB);
        let mut pipe = CrossThreadFree::new(a, sizes);
        b.iter_custom(|batches| pipe.run(batches));
    }
}

fn bench_cross_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("xthread_free_{XTHREAD_BATCH}x64B-1KiB"));
    group.throughput(Throughput::Elements(XTHREAD_BATCH as u64));
    compare(group, &CrossThread);
}

const LARGE_BLOCKS: usize = 20;

struct LargeChurn(Vec<usize>);

impl Workload for LargeChurn {
    fn run<A: GlobalAlloc + Sync + 'static>(&self, b: &mut Bencher<'_>, a: &'static A) {
        b.iter(|| large_churn(a, &self.0));
    }
}

fn bench_large_churn(c: &mut Criterion) {
    let sizes = random_sizes(0x1a7e, LARGE_BLOCKS, 5 * MIB, 25 * MIB);
    let mut group = c.benchmark_group(format!("large_churn_{LARGE_BLOCKS}x5-25MiB"));
    // 1 ms to 0.3 s per iteration (the slow end when every block faults in
    // fresh pages): ten flat samples are enough.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6));
    group.throughput(Throughput::Bytes(sizes.iter().sum::<usize>() as u64));
    compare(group, &LargeChurn(sizes));
}

const THREAD_BLOCK_SIZE: usize = 100;

struct ThreadSpawn;

impl Workload for ThreadSpawn {
    fn run<A: GlobalAlloc + Sync + 'static>(&self, b: &mut Bencher<'_>, a: &'static A) {
        b.iter(|| thread_spawn_join(a, THREAD_BLOCK_SIZE));
    }
}

fn bench_thread_spawn(c: &mut Criterion) {
    let group = c.benchmark_group("thread_spawn_join_10x100B");
    compare(group, &ThreadSpawn);
}

/// The cost of wrapping a library call in a dedicated arena: switch to it
/// and back (`malloc_set_arena` twice), with the thread's heap for it
/// already created. arenalloc only; the other allocators have no shared
/// per-thread arena switch to compare with.
fn bench_arena_switch(c: &mut Criterion) {
    let library = arenalloc::Arena::new().expect("an arena");
    drop(library.run(|| Box::new(1u8))); // creates this thread's heap for it
    let mut group = c.benchmark_group("arena_switch_and_restore");
    group.bench_function("arenalloc", |b| {
        b.iter(|| {
            let guard = std::hint::black_box(&library).enter().expect("enter");
            drop(std::hint::black_box(guard));
        })
    });
    group.finish();

    // What a block costs in a dedicated arena against the default one, and
    // a whole wrapped library call that allocates one block.
    let mut group = c.benchmark_group("arena_malloc_free_64B");
    group.bench_function("default_arena", |b| b.iter(|| malloc_free(&ARENALLOC, 64)));
    group.bench_function("dedicated_arena", |b| {
        let _guard = library.enter().expect("enter");
        b.iter(|| malloc_free(&ARENALLOC, 64))
    });
    group.bench_function("switch_malloc_free_restore", |b| {
        b.iter(|| library.run(|| malloc_free(&ARENALLOC, 64)))
    });
    group.finish();
}

/// Short enough for the whole suite (56 benchmarks) to finish in about five
/// minutes on two cores; override per run with
/// `-- --warm-up-time S --measurement-time S` (not for large_churn, whose
/// group sets its own).
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_malloc_free, bench_batch, bench_realloc, bench_cross_thread,
        bench_large_churn, bench_thread_spawn, bench_arena_switch
}
criterion_main!(benches);
