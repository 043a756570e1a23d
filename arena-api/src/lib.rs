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
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: GlobalAlloc's contract: `ptr` is a live block of this
        // allocator, allocated with `layout`.
        unsafe { arenalloc_engine::free_known_block(ptr, layout.align()) }
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

/// Why [`route_library`] refused a pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// Empty, longer than 255 bytes, or containing a `,` or a NUL.
    BadPattern,
    /// 16 patterns are set already.
    TooManyPatterns,
    /// Neither this allocator nor a preloaded `libarenalloc.so` is the
    /// process's `malloc`, which routing needs: the C library must free a
    /// routed library's blocks with the allocator that made them.
    NotProcessMalloc,
}

impl core::fmt::Display for RouteError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            RouteError::BadPattern => "the pattern is empty, too long, or has a ',' or a NUL",
            RouteError::TooManyPatterns => "16 library patterns are set already",
            RouteError::NotProcessMalloc => {
                "arenalloc is not this process's malloc (preload libarenalloc.so)"
            }
        })
    }
}

impl std::error::Error for RouteError {}

/// Routes the C libraries whose file name (or path, for a pattern with a
/// `/`) matches the glob `pattern`, now and when loaded later, each to an
/// arena of its own: whatever their code allocates, through `malloc` and its
/// family or the C library's allocating functions, goes there, so their
/// long-lived blocks never pin the program's freed memory. The same as
/// `ARENALLOC_LIBRARY_ARENAS=pattern` at start-up. Returns how many loaded
/// objects the pattern names now (0 is not an error: a later `dlopen` may
/// match).
///
/// It needs arenalloc as the process's `malloc`: in a Rust program, run it
/// with `libarenalloc.so` preloaded (the routing is then the preloaded
/// library's).
///
/// ```no_run
/// match arenalloc::route_library("libgnutls.so*") {
///     Ok(n) => println!("{n} object(s) routed"),
///     Err(e) => eprintln!("not routed: {e}"),
/// }
/// ```
pub fn route_library(pattern: &str) -> Result<usize, RouteError> {
    use arenalloc_engine::library_routing::{self, RouteError as EngineError};
    match library_routing::route_library(pattern.as_bytes()) {
        Ok(named) => Ok(named),
        Err(EngineError::BadPattern) => Err(RouteError::BadPattern),
        Err(EngineError::TooManyPatterns) => Err(RouteError::TooManyPatterns),
        Err(EngineError::NotProcessMalloc) => route_in_preloaded_library(pattern),
    }
}

/// [`route_library`] through the preloaded `libarenalloc.so`'s
/// `malloc_route_library`, when that is the process's `malloc`.
fn route_in_preloaded_library(pattern: &str) -> Result<usize, RouteError> {
    let pattern = std::ffi::CString::new(pattern).map_err(|_| RouteError::BadPattern)?;
    // SAFETY: dlsym with a NUL-terminated name in the global scope.
    let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"malloc_route_library".as_ptr()) };
    if symbol.is_null() {
        return Err(RouteError::NotProcessMalloc);
    }
    type RouteFn = unsafe extern "C" fn(*const libc::c_char) -> libc::c_int;
    // SAFETY: the C ABI's malloc_route_library has this signature.
    let route = unsafe { core::mem::transmute::<*mut libc::c_void, RouteFn>(symbol) };
    // SAFETY: a NUL-terminated pattern that outlives the call.
    let named = unsafe { route(pattern.as_ptr()) };
    if named >= 0 {
        return Ok(named as usize);
    }
    Err(match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ENOSPC) => RouteError::TooManyPatterns,
        Some(libc::EINVAL) => RouteError::BadPattern,
        _ => RouteError::NotProcessMalloc,
    })
}
