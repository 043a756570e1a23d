//! What an arena that holds (almost) nothing costs: creates N arenas (4096
//! by default), allocates one 64-byte block in each from this thread, and
//! prints the process's RSS and VSZ growth per arena, measured from
//! `/proc/self/statm` before and after; then frees the blocks, trims, and
//! measures again; then destroys the arenas and measures a last time.
//!
//! ```text
//! cargo run --release -p arenalloc-benches --example empty_arena_cost [N]
//! ```
//!
//! arenalloc is the global allocator here, so the `Vec` of handles is in the
//! default arena and counted too (32 KiB for 4096 handles).

use std::alloc::Layout;
use std::ptr::NonNull;

use allocator_api2::alloc::Allocator;
use arenalloc::{Arena, ArenaAlloc};

#[global_allocator]
static GLOBAL: ArenaAlloc = ArenaAlloc;

/// (RSS, VSZ) in bytes.
fn statm() -> (usize, usize) {
    let text = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse::<usize>().expect("a number"));
    let vsz_pages = fields.next().expect("VSZ");
    let rss_pages = fields.next().expect("RSS");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    (rss_pages * page, vsz_pages * page)
}

fn report(stage: &str, base: (usize, usize), count: usize) {
    let (rss, vsz) = statm();
    let rss_delta = rss as f64 - base.0 as f64;
    let vsz_delta = vsz as f64 - base.1 as f64;
    println!(
        "{stage:<34} RSS {:>8.1} MiB (+{:>7.1} KiB/arena)   VSZ {:>8.1} MiB (+{:>7.1} KiB/arena)",
        rss as f64 / 1048576.0,
        rss_delta / 1024.0 / count as f64,
        vsz as f64 / 1048576.0,
        vsz_delta / 1024.0 / count as f64,
    );
}

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N is a number"))
        .unwrap_or(4096);
    let layout = Layout::from_size_align(64, 8).expect("a layout");
    let mut arenas = Vec::with_capacity(count);
    let mut blocks: Vec<NonNull<u8>> = Vec::with_capacity(count);
    let base = statm();
    report("before", base, count);

    for _ in 0..count {
        arenas.push(Arena::new().expect("an arena"));
    }
    report("created", base, count);

    for arena in &arenas {
        let block = arena.allocate(layout).expect("a block");
        blocks.push(block.cast());
    }
    report("one 64 B block in each", base, count);

    for (arena, block) in arenas.iter().zip(&blocks) {
        // SAFETY: allocated above from this arena with this layout.
        unsafe { arena.deallocate(*block, layout) };
    }
    let released: usize = arenas.iter().map(|a| a.trim().expect("live arena")).sum();
    report("blocks freed, arenas trimmed", base, count);
    println!("  trim released {:.1} MiB", released as f64 / 1048576.0);

    for arena in arenas.drain(..) {
        // SAFETY: no block of the arena is used any more and no other thread
        // touches it.
        unsafe { arena.destroy().expect("live arena") };
    }
    report("destroyed", base, count);
}
