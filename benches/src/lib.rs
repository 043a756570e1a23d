//! Allocator workloads for the arenalloc benchmarks.
//!
//! Every workload is generic over [`GlobalAlloc`] and calls the allocator
//! through that trait directly (never as the global allocator), so each
//! allocator under test runs the same code. The criterion benches in
//! `benches/allocators.rs` and the profiling driver in
//! `examples/profile.rs` both use these functions.
//!
//! Blocks are requested with an alignment of 8 (what a `Box<u64>` or a
//! `Vec<usize>` asks for), which every allocator serves on its fast path.

use std::alloc::{handle_alloc_error, GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// One kibibyte.
pub const KIB: usize = 1 << 10;
/// One mebibyte.
pub const MIB: usize = 1 << 20;
/// The alignment every workload asks for.
pub const ALIGN: usize = 8;
/// Page size assumed when touching large blocks.
pub const PAGE: usize = 4 * KIB;

/// The layout of a block of `size` bytes at [`ALIGN`].
#[inline]
pub fn layout(size: usize) -> Layout {
    match Layout::from_size_align(size, ALIGN) {
        Ok(l) => l,
        Err(_) => panic!("bad layout: {size} bytes"),
    }
}

/// Allocates `layout` from `a`, aborting the process if it fails.
///
/// # Safety
/// `layout` has a non-zero size.
#[inline]
pub unsafe fn alloc_or_abort<A: GlobalAlloc>(a: &A, layout: Layout) -> *mut u8 {
    // SAFETY: forwarded from the caller.
    let p = unsafe { a.alloc(layout) };
    if p.is_null() {
        handle_alloc_error(layout);
    }
    p
}

/// A small deterministic pseudo-random generator (splitmix64).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        assert!(lo <= hi);
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
}

/// One allocation of `size` bytes, one byte written, one free.
#[inline]
pub fn malloc_free<A: GlobalAlloc>(a: &A, size: usize) {
    let layout = layout(black_box(size));
    // SAFETY: the sizes used are non-zero; the block is freed once with the
    // layout it was allocated with.
    unsafe {
        let p = alloc_or_abort(a, layout);
        p.write(1);
        // The pointer escapes, so neither the write nor the pair is elided.
        let p = black_box(p);
        a.dealloc(p, layout);
    }
}

/// The order in which [`batch`] frees its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeOrder {
    /// First allocated, first freed.
    Fifo,
    /// Last allocated, first freed.
    Lifo,
}

/// Allocates `count` blocks of `size` bytes (writing one byte to each),
/// then frees them all in `order`. `slots` is scratch space kept by the
/// caller so that the workload itself makes no other allocation.
pub fn batch<A: GlobalAlloc>(
    a: &A,
    slots: &mut Vec<*mut u8>,
    count: usize,
    size: usize,
    order: FreeOrder,
) {
    let layout = layout(size);
    slots.clear();
    slots.reserve(count);
    for _ in 0..count {
        // SAFETY: non-zero size.
        let p = unsafe { alloc_or_abort(a, layout) };
        // SAFETY: a live block of `size` >= 1 bytes.
        unsafe { p.write(1) };
        slots.push(p);
    }
    black_box(&mut *slots);
    // SAFETY: every pointer is a live block allocated above with `layout`,
    // freed exactly once.
    match order {
        FreeOrder::Fifo => {
            for &p in slots.iter() {
                unsafe { a.dealloc(p, layout) };
            }
        }
        FreeOrder::Lifo => {
            for &p in slots.iter().rev() {
                unsafe { a.dealloc(p, layout) };
            }
        }
    }
    slots.clear();
}

/// How [`realloc_growth`] grows its block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Growth {
    /// 1, 2, 4, … bytes.
    Doubling,
    /// 1, 1 + step, 1 + 2·step, … bytes.
    Step(usize),
}

impl Growth {
    /// How many `realloc` calls growing from 1 byte to `max` makes.
    pub fn steps(self, max: usize) -> usize {
        let mut size = 1;
        let mut n = 0;
        while size < max {
            size = self.next(size, max);
            n += 1;
        }
        n
    }

    fn next(self, size: usize, max: usize) -> usize {
        match self {
            Growth::Doubling => (size * 2).min(max),
            Growth::Step(step) => (size + step).min(max),
        }
    }
}

/// Allocates 1 byte, grows it with `realloc` up to `max` bytes (writing
/// the last byte after every step), then frees it.
pub fn realloc_growth<A: GlobalAlloc>(a: &A, growth: Growth, max: usize) {
    let mut size = 1;
    let mut current = layout(size);
    // SAFETY: non-zero size; every pointer used is the live block returned
    // by the previous call, with the layout it currently has.
    unsafe {
        let mut p = alloc_or_abort(a, current);
        p.write(1);
        while size < max {
            size = growth.next(size, max);
            let q = a.realloc(p, current, size);
            if q.is_null() {
                handle_alloc_error(layout(size));
            }
            p = q;
            current = layout(size);
            p.add(size - 1).write(1);
        }
        let p = black_box(p);
        a.dealloc(p, current);
    }
}

/// Deterministic pseudo-random sizes in `lo..=hi`.
pub fn random_sizes(seed: u64, count: usize, lo: usize, hi: usize) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed);
    (0..count).map(|_| rng.range(lo, hi)).collect()
}

/// For each size: allocate a block that big, write one byte per page, free
/// it.
pub fn large_churn<A: GlobalAlloc>(a: &A, sizes: &[usize]) {
    for &size in sizes {
        let layout = layout(size);
        // SAFETY: non-zero size; the block is written within its bounds and
        // freed once with its layout.
        unsafe {
            let p = alloc_or_abort(a, layout);
            let mut offset = 0;
            while offset < size {
                p.add(offset).write(1);
                offset += PAGE;
            }
            let p = black_box(p);
            a.dealloc(p, layout);
        }
    }
}

/// How many blocks the thread of [`thread_spawn_join`] allocates.
pub const THREAD_BLOCKS: usize = 10;

/// Spawns a thread that allocates [`THREAD_BLOCKS`] blocks of `size`
/// bytes from `a`, writes one byte to each, frees them and exits; joins it.
///
/// The thread's creation itself (its stack, `std`'s thread record) goes
/// through the process's global allocator, the same for every `A`.
pub fn thread_spawn_join<A: GlobalAlloc + Sync + 'static>(a: &'static A, size: usize) {
    let handle = thread::spawn(move || {
        let layout = layout(size);
        let mut blocks = [core::ptr::null_mut::<u8>(); THREAD_BLOCKS];
        // SAFETY: non-zero size; each block is freed once with its layout.
        unsafe {
            for slot in blocks.iter_mut() {
                let p = alloc_or_abort(a, layout);
                p.write(1);
                *slot = p;
            }
            black_box(&mut blocks);
            for &p in blocks.iter() {
                a.dealloc(p, layout);
            }
        }
    });
    if handle.join().is_err() {
        panic!("allocating thread panicked");
    }
}

/// A block in flight between the producer and the consumer thread.
struct Block {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: the block is owned by whichever thread holds it; `GlobalAlloc`
// implementations that are `Sync` accept frees from any thread.
unsafe impl Send for Block {}

enum ToConsumer {
    Free(Vec<Block>),
    Sync,
}

enum FromConsumer {
    /// An emptied batch vector, for reuse.
    Empty(Vec<Block>),
    /// Every batch sent before the `Sync` was freed.
    Synced,
}

/// Cross-thread free: the calling thread (the producer) allocates batches of
/// blocks with sizes from a fixed pseudo-random table; a consumer thread
/// frees them. At most [`CrossThreadFree::IN_FLIGHT`] batches wait in the
/// channel, so the two threads run as a pipeline.
pub struct CrossThreadFree<A: GlobalAlloc + Sync + 'static> {
    alloc: &'static A,
    sizes: Vec<usize>,
    pool: Vec<Vec<Block>>,
    to_consumer: Option<SyncSender<ToConsumer>>,
    from_consumer: Receiver<FromConsumer>,
    consumer: Option<JoinHandle<()>>,
}

impl<A: GlobalAlloc + Sync + 'static> CrossThreadFree<A> {
    /// Batches that may wait in the channel.
    pub const IN_FLIGHT: usize = 4;

    /// Starts the consumer thread. Each batch has `sizes.len()` blocks.
    pub fn new(alloc: &'static A, sizes: Vec<usize>) -> Self {
        let (to_consumer, rx) = mpsc::sync_channel::<ToConsumer>(Self::IN_FLIGHT);
        let (tx, from_consumer) = mpsc::channel::<FromConsumer>();
        let consumer = thread::spawn(move || {
            for msg in rx {
                match msg {
                    ToConsumer::Free(mut blocks) => {
                        for b in blocks.drain(..) {
                            // SAFETY: a live block from `alloc` with this
                            // layout, handed over by the producer.
                            unsafe { alloc.dealloc(b.ptr, b.layout) };
                        }
                        // The producer may be gone at shutdown.
                        let _ = tx.send(FromConsumer::Empty(blocks));
                    }
                    ToConsumer::Sync => {
                        let _ = tx.send(FromConsumer::Synced);
                    }
                }
            }
        });
        let pool = (0..Self::IN_FLIGHT + 2)
            .map(|_| Vec::with_capacity(sizes.len()))
            .collect();
        Self {
            alloc,
            sizes,
            pool,
            to_consumer: Some(to_consumer),
            from_consumer,
            consumer: Some(consumer),
        }
    }

    fn sender(&self) -> &SyncSender<ToConsumer> {
        match &self.to_consumer {
            Some(s) => s,
            None => unreachable!("sender is only taken on drop"),
        }
    }

    /// Allocates one batch and hands it to the consumer.
    pub fn send_batch(&mut self) {
        while let Ok(reply) = self.from_consumer.try_recv() {
            self.stash(reply);
        }
        let mut blocks = self
            .pool
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.sizes.len()));
        for &size in &self.sizes {
            let layout = layout(size);
            // SAFETY: non-zero size; the consumer frees it with `layout`.
            let ptr = unsafe { alloc_or_abort(self.alloc, layout) };
            // SAFETY: a live block of at least one byte.
            unsafe { ptr.write(1) };
            blocks.push(Block { ptr, layout });
        }
        if self.sender().send(ToConsumer::Free(blocks)).is_err() {
            panic!("consumer thread is gone");
        }
    }

    /// Waits until the consumer has freed every batch sent so far.
    pub fn sync(&mut self) {
        if self.sender().send(ToConsumer::Sync).is_err() {
            panic!("consumer thread is gone");
        }
        loop {
            match self.from_consumer.recv() {
                Ok(FromConsumer::Synced) => return,
                Ok(reply) => self.stash(reply),
                Err(_) => panic!("consumer thread is gone"),
            }
        }
    }

    fn stash(&mut self, reply: FromConsumer) {
        if let FromConsumer::Empty(v) = reply {
            self.pool.push(v);
        }
    }

    /// Sends `batches` batches and waits until all are freed; returns the
    /// time taken.
    pub fn run(&mut self, batches: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..batches {
            self.send_batch();
        }
        self.sync();
        start.elapsed()
    }
}

impl<A: GlobalAlloc + Sync + 'static> Drop for CrossThreadFree<A> {
    fn drop(&mut self) {
        drop(self.to_consumer.take());
        if let Some(h) = self.consumer.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    static SYSTEM: System = System;

    #[test]
    fn workloads_run_on_system() {
        malloc_free(&System, 64);
        let mut slots = Vec::new();
        batch(&System, &mut slots, 100, 64, FreeOrder::Fifo);
        batch(&System, &mut slots, 100, 64, FreeOrder::Lifo);
        realloc_growth(&System, Growth::Doubling, 64 * KIB);
        realloc_growth(&System, Growth::Step(64), 64 * KIB);
        large_churn(&System, &[MIB + 1, 2 * MIB]);
        thread_spawn_join(&SYSTEM, 100);
        let mut x = CrossThreadFree::new(&SYSTEM, random_sizes(1, 100, 64, KIB));
        x.run(10);
    }

    #[test]
    fn growth_steps() {
        assert_eq!(Growth::Doubling.steps(MIB), 20);
        assert_eq!(Growth::Step(64).steps(65), 1);
        assert_eq!(Growth::Step(64).steps(MIB), MIB.div_ceil(64));
    }
}
