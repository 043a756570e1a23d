//! A thread resumes a malloc/free loop after a trim gave back the free
//! pages of its current span (as the housekeeper does to an idle thread):
//! the loop's cost per pair, with and without the trim before it.
//!
//! ```text
//! cargo build --profile bench -p arenalloc-benches --example resume_after_trim
//! target/release/examples/resume_after_trim trim 64
//! target/release/examples/resume_after_trim none 64
//! ```
//!
//! Before the loop, 4000 blocks of SIZE bytes are allocated and all but
//! the first freed, so the first span keeps a live block among free pages;
//! `trim` then gives those pages back and parks their blocks. Each of three
//! rounds times 30 M malloc/free pairs.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::time::Instant;

use arenalloc::ArenaAlloc;

static ARENALLOC: ArenaAlloc = ArenaAlloc;

const PAIRS: u32 = 30_000_000;

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "trim".into());
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    if mode != "trim" && mode != "none" {
        eprintln!("usage: resume_after_trim trim|none [SIZE]");
        std::process::exit(2);
    }
    let layout = Layout::from_size_align(size, 8).expect("a valid size");
    // SAFETY: every block is freed once, with the layout it was allocated
    // with, and written only within its size.
    unsafe {
        let blocks: Vec<*mut u8> = (0..4000)
            .map(|_| {
                let p = ARENALLOC.alloc(layout);
                assert!(!p.is_null());
                p.write(1);
                p
            })
            .collect();
        for &p in &blocks[1..] {
            ARENALLOC.dealloc(p, layout);
        }
        if mode == "trim" {
            println!("trim gave back {} bytes", arenalloc::trim());
        }
        for round in 0..3 {
            let started = Instant::now();
            for _ in 0..PAIRS {
                let p = ARENALLOC.alloc(layout);
                p.write(1);
                ARENALLOC.dealloc(black_box(p), layout);
            }
            let ns = started.elapsed().as_nanos() as f64 / f64::from(PAIRS);
            println!("{mode} {size} B round {round}: {ns:.2} ns a pair");
        }
        ARENALLOC.dealloc(blocks[0], layout);
    }
}
