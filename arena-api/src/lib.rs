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

/// Turns the background housekeeper on or off at run time (the environment
/// variable `ARENALLOC_BACKGROUND=0` turns it off from the start). Off, free
/// memory goes back to the OS only through [`trim`], [`Arena::trim`] and the
/// allocator's own slow paths.
///
/// ```
/// arenalloc::set_background_purging(false);
/// assert!(!arenalloc::background_purging());
/// arenalloc::set_background_purging(true);
/// ```
pub fn set_background_purging(enabled: bool) {
    arenalloc_engine::purger::set_background(enabled)
}

/// Whether the background housekeeper is on.
pub fn background_purging() -> bool {
    arenalloc_engine::purger::background_enabled()
}

/// Sets how long memory stays free before the housekeeper returns it (the
/// environment variable `ARENALLOC_PURGE_DELAY_MS` sets it from the start).
///
/// ```
/// use std::time::Duration;
/// arenalloc::set_purge_delay(Duration::from_millis(250));
/// assert_eq!(arenalloc::purge_delay(), Duration::from_millis(250));
/// ```
pub fn set_purge_delay(delay: std::time::Duration) {
    let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    arenalloc_engine::purger::set_purge_delay_ms(ms)
}

/// How long memory stays free before the housekeeper returns it.
pub fn purge_delay() -> std::time::Duration {
    std::time::Duration::from_millis(arenalloc_engine::purger::purge_delay_ms())
}

/// Bytes returned to the OS so far by the housekeeper and by trims.
pub fn purged_bytes() -> usize {
    arenalloc_engine::purger::purged_bytes()
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
