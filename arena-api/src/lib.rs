//! arenalloc for Rust programs.
//!
//! Install it as the global allocator:
//!
//! ```
//! use arenalloc::ArenaAlloc;
//!
//! #[global_allocator]
//! static GLOBAL: ArenaAlloc = ArenaAlloc;
//!
//! let v: Vec<u64> = (0..1000).collect();
//! assert_eq!(v.iter().sum::<u64>(), 499_500);
//! ```
#![warn(missing_docs)]

use core::alloc::{GlobalAlloc, Layout};

mod arena;
pub use arena::{Arena, ArenaError, ArenaGuard, ArenaStats};

pub use arenalloc_engine::Stats;

/// The arenalloc global allocator: a zero-sized handle to the engine.
///
/// It uses the layout it is given: alignments above 16 bytes are served
/// from size classes whose blocks are naturally aligned (or from aligned
/// mappings), and `realloc` stays in place when the block's size class
/// still fits.
#[derive(Clone, Copy, Debug, Default)]
pub struct ArenaAlloc;

// SAFETY: the engine returns blocks of at least `layout.size()` bytes aligned
// to `layout.align()`, or null; blocks stay valid until freed; `dealloc` and
// `realloc` accept exactly the blocks it handed out.
unsafe impl GlobalAlloc for ArenaAlloc {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        arenalloc_engine::malloc_aligned(layout.size(), layout.align())
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        arenalloc_engine::zalloc_aligned(layout.size(), layout.align())
    }

    #[inline(always)]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: GlobalAlloc's contract: `ptr` came from this allocator.
        unsafe { arenalloc_engine::free(ptr) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc's contract: `ptr` is a live block of ours with
        // alignment `layout.align()`.
        unsafe { arenalloc_engine::realloc_aligned(ptr, new_size, layout.align()) }
    }
}

/// The allocator's figures now (mapped, live and resident bytes).
pub fn stats() -> Stats {
    arenalloc_engine::stats()
}

/// Returns free memory to the operating system now; returns the bytes
/// released.
pub fn trim() -> usize {
    arenalloc_engine::trim()
}

/// Bytes usable in a block returned by [`ArenaAlloc`].
///
/// # Safety
/// `ptr` is null or a live block allocated by [`ArenaAlloc`].
pub unsafe fn usable_size(ptr: *mut u8) -> usize {
    // SAFETY: forwarded from the caller.
    unsafe { arenalloc_engine::usable_size(ptr) }
}

/// Whether `ptr` lies in memory arenalloc manages. Lets a program that mixes
/// allocators route a free to the right one.
pub fn owns(ptr: *const u8) -> bool {
    arenalloc_engine::owns(ptr)
}
