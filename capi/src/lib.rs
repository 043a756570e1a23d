//! The C ABI of arenalloc: the `malloc` family with glibc's contract, built
//! as `libarenalloc.so` (for `LD_PRELOAD`) and `libarenalloc.a`.
//!
//! This is the only crate with unmangled symbols. Each function here checks
//! the C contract (overflow, alignment rules, `errno`) and forwards to the
//! engine; none of them allocates through `std`.
//!
//! `no_std`, like the engine, wherever panics abort (the release build
//! users get): the library then carries no part of Rust's runtime (its
//! panic, backtrace and unwinding code was a third of the machine code, and
//! it loaded libgcc_s), so a program that preloads it maps and faults in
//! less. Unwinding builds (debug, tests) keep `std`, which unwinding needs.
#![cfg_attr(panic = "abort", no_std)]

use core::ffi::{c_char, c_int, c_void};
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

use arenalloc_engine as engine;

// libgcc_s: `std` needs it where the crate unwinds; where it aborts, the
// C stand-ins' cleanups find their unwinder through `src/unwind_shim.c`,
// which `build.rs` links into the shared library (see there).
#[cfg(all(target_env = "gnu", not(all(panic = "abort", arenalloc_unwind_shim))))]
#[link(name = "gcc_s")]
unsafe extern "C" {}
use engine::c_contract;
use engine::diag::Line;
use engine::os;

/// glibc's `mallopt` parameters, all accepted (see [`mallopt`]).
const M_MXFAST: c_int = 1;
const M_ARENA_MAX: c_int = -8;

#[unsafe(no_mangle)]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    engine::malloc(size).cast()
}

/// # Safety
/// `p` is null or a live block from this allocator.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: the C contract of free.
    unsafe { engine::free(p.cast()) }
}

/// # Safety
/// As [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cfree(p: *mut c_void) {
    // SAFETY: the C contract of free.
    unsafe { engine::free(p.cast()) }
}

/// C23 sized free. The size is not needed to find the block's owner.
///
/// # Safety
/// As [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free_sized(p: *mut c_void, _size: usize) {
    // SAFETY: the C contract of free.
    unsafe { engine::free(p.cast()) }
}

/// C23 sized free of an aligned block.
///
/// # Safety
/// As [`free`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free_aligned_sized(p: *mut c_void, _align: usize, _size: usize) {
    // SAFETY: the C contract of free.
    unsafe { engine::free(p.cast()) }
}

#[unsafe(no_mangle)]
pub extern "C" fn calloc(count: usize, size: usize) -> *mut c_void {
    c_contract::calloc(count, size)
}

/// glibc semantics: `realloc(NULL, n)` is `malloc(n)`; `realloc(p, 0)` frees
/// `p` and returns NULL; on failure the old block is left intact.
///
/// # Safety
/// `p` is null or a live block from this allocator.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: the C contract of realloc.
    unsafe { c_contract::realloc(p, size) }
}

/// # Safety
/// As [`realloc`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, count: usize, size: usize) -> *mut c_void {
    // SAFETY: the C contract of realloc.
    unsafe { c_contract::reallocarray(p, count, size) }
}

/// POSIX: `align` must be a power of two and a multiple of `sizeof(void*)`;
/// errors are returned, not stored in errno (which is left unchanged).
///
/// # Safety
/// `out` is a valid pointer to write the result to.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    // SAFETY: the C contract of posix_memalign.
    unsafe { c_contract::posix_memalign(out, align, size) }
}

/// C11 `aligned_alloc`: `align` must be a power of two (any size, as glibc).
#[unsafe(no_mangle)]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    c_contract::aligned_alloc(align, size)
}

/// glibc `memalign`: an alignment that is not a power of two is rounded up to
/// one; one too large to round is `EINVAL`.
#[unsafe(no_mangle)]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    c_contract::memalign(align, size)
}

#[unsafe(no_mangle)]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    c_contract::valloc(size)
}

/// `valloc` with the size rounded up to whole pages (at least one).
#[unsafe(no_mangle)]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    c_contract::pvalloc(size)
}

/// # Safety
/// `p` is null or a live block from this allocator.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    // SAFETY: the C contract of malloc_usable_size.
    unsafe { engine::usable_size(p.cast()) }
}

/// Returns free memory to the OS; 1 if any was released, else 0. `pad` is
/// accepted for compatibility; arenalloc keeps no top-of-heap pad.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_trim(_pad: usize) -> c_int {
    c_int::from(engine::trim() > 0)
}

/// Accepts glibc's parameters (returns 1) so programs that tune glibc keep
/// working; arenalloc's own behaviour is not changed by them. Unknown
/// parameters return 0, the documented failure value (glibc 2.36 returns 1
/// for them too, which hides typos).
#[unsafe(no_mangle)]
pub extern "C" fn mallopt(param: c_int, _value: c_int) -> c_int {
    c_int::from(param == M_MXFAST || (M_ARENA_MAX..=-1).contains(&param))
}

/// glibc's `struct mallinfo2`, filled from arenalloc's figures.
#[repr(C)]
#[derive(Default)]
pub struct Mallinfo2 {
    pub arena: usize,
    pub ordblks: usize,
    pub smblks: usize,
    pub hblks: usize,
    pub hblkhd: usize,
    pub usmblks: usize,
    pub fsmblks: usize,
    pub uordblks: usize,
    pub fordblks: usize,
    pub keepcost: usize,
}

/// glibc's `struct mallinfo` (int fields; values saturate).
#[repr(C)]
#[derive(Default)]
pub struct Mallinfo {
    pub arena: c_int,
    pub ordblks: c_int,
    pub smblks: c_int,
    pub hblks: c_int,
    pub hblkhd: c_int,
    pub usmblks: c_int,
    pub fsmblks: c_int,
    pub uordblks: c_int,
    pub fordblks: c_int,
    pub keepcost: c_int,
}

/// `arena`: bytes mapped for spans; `hblkhd`: bytes in large blocks;
/// `uordblks`: bytes in use; `fordblks`: mapped but free.
#[unsafe(no_mangle)]
pub extern "C" fn mallinfo2() -> Mallinfo2 {
    let s = engine::stats();
    Mallinfo2 {
        arena: s.mapped_bytes.saturating_sub(s.large_live_bytes),
        hblkhd: s.large_live_bytes,
        uordblks: s.live_bytes,
        fordblks: s.mapped_bytes.saturating_sub(s.live_bytes),
        usmblks: s.peak_mapped_bytes,
        ..Mallinfo2::default()
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn mallinfo() -> Mallinfo {
    let m = mallinfo2();
    let clamp = |v: usize| v.min(c_int::MAX as usize) as c_int;
    Mallinfo {
        arena: clamp(m.arena),
        hblkhd: clamp(m.hblkhd),
        uordblks: clamp(m.uordblks),
        fordblks: clamp(m.fordblks),
        usmblks: clamp(m.usmblks),
        ..Mallinfo::default()
    }
}

/// Prints a summary to stderr, in the spirit of glibc's.
#[unsafe(no_mangle)]
#[link_section = "arenalloc_cold"]
pub extern "C" fn malloc_stats() {
    let s = engine::stats();
    let rows: [(&str, usize); 7] = [
        ("system bytes     = ", s.mapped_bytes),
        ("in use bytes     = ", s.live_bytes),
        ("in use blocks    = ", s.live_blocks),
        ("large bytes      = ", s.large_live_bytes),
        ("max system bytes = ", s.peak_mapped_bytes),
        ("resident bytes   = ", s.resident_bytes),
        ("segments         = ", s.segments),
    ];
    Line::new().text("arenalloc:\n").emit();
    for (label, value) in rows {
        Line::new().text(label).num(value).text("\n").emit();
    }
}

/// glibc's `malloc_info`: an XML summary written to `stream`.
///
/// # Safety
/// `stream` is a valid `FILE*` open for writing.
#[unsafe(no_mangle)]
#[link_section = "arenalloc_cold"]
pub unsafe extern "C" fn malloc_info(options: c_int, stream: *mut libc::FILE) -> c_int {
    if options != 0 {
        os::set_errno(libc::EINVAL);
        return -1;
    }
    let s = engine::stats();
    let mut line = Line::new();
    line.text("<malloc version=\"arenalloc-1\">\n<system type=\"current\" size=\"")
        .num(s.mapped_bytes)
        .text("\"/>\n<system type=\"max\" size=\"")
        .num(s.peak_mapped_bytes)
        .text("\"/>\n<total type=\"inuse\" size=\"")
        .num(s.live_bytes)
        .text("\"/>\n</malloc>\n");
    let bytes = line.as_bytes();
    // SAFETY: the caller passes a valid stream; the buffer is live.
    let written = unsafe { libc::fwrite(bytes.as_ptr().cast(), 1, bytes.len(), stream) };
    if written == bytes.len() {
        0
    } else {
        -1
    }
}

unsafe extern "C" {
    /// The C library's environment pointer (`__environ`).
    static mut environ: *const *const c_char;
}

/// Runs when the library is loaded, before every other object's
/// constructors (the library is linked with `-z initfirst`), so that a
/// routed library's constructors already allocate in its arena. At that
/// point the C library has not yet set `environ`, so `getenv` would find
/// nothing: it is given the environment the dynamic linker passes here, the
/// same pointer the C library sets a moment later.
///
/// Then: with `ARENALLOC_VERBOSE=1`, one line to stderr so a user can see
/// that the preload took; with `ARENALLOC_LIBRARY_ARENAS`, the routing.
extern "C" fn on_load(_argc: c_int, _argv: *const *const c_char, envp: *const *const c_char) {
    // SAFETY: single-threaded start-up; only a null `environ` is replaced,
    // with the environment the dynamic linker passed to initialisers.
    unsafe {
        let environment = ptr::addr_of_mut!(environ);
        if environment.read().is_null() && !envp.is_null() {
            environment.write(envp);
        }
    }
    let verbose = os::env_var(c"ARENALLOC_VERBOSE").is_some_and(|v| v == b"1");
    if verbose {
        Line::new()
            .text("arenalloc: loaded (pid ")
            // SAFETY: getpid has no preconditions.
            .num(unsafe { libc::getpid() } as usize)
            .text(")\n")
            .emit();
    }
    if let Some(patterns) = os::env_var(c"ARENALLOC_LIBRARY_ARENAS") {
        engine::library_routing::route_from_environment(patterns, verbose);
    }
}

/// Nothing here panics (the engine's paths are checked for it, see
/// `tests/no_panic_paths.rs`); should the impossible happen, abort with a
/// message instead of pulling Rust's panic runtime into the library.
#[cfg(panic = "abort")]
#[panic_handler]
fn on_panic(_: &core::panic::PanicInfo) -> ! {
    engine::diag::fatal("a Rust panic in arenalloc")
}

#[used]
#[unsafe(link_section = ".init_array")]
static ON_LOAD: extern "C" fn(c_int, *const *const c_char, *const *const c_char) = on_load;

/// The C library's `dlopen`, found at the first call.
static REAL_DLOPEN: AtomicUsize = AtomicUsize::new(0);

/// `dlopen`, seen on its way to the C library's so that a library it loads
/// that a routing pattern names is routed before `dlopen` returns.
///
/// The C library's `dlopen` looks at its caller (the search path and
/// `$ORIGIN` of the calling object): so unless routing is on and the name
/// opens the same object whoever calls, this jumps to it with the caller's
/// return address untouched, as if it had not been here. Otherwise it calls
/// it and routes what was loaded.
///
/// # Safety
/// The C contract of `dlopen`.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlopen(name: *const c_char, flags: c_int) -> *mut c_void {
    core::arch::naked_asm!(
        // Keep the arguments; the stack is 16-byte aligned for the call.
        "push rdi",
        "push rsi",
        "sub rsp, 8",
        "mov rdx, qword ptr [rsp + 24]",
        "call {decide}",
        "add rsp, 8",
        "pop rsi",
        "pop rdi",
        "test al, al",
        "jnz 2f",
        "jmp qword ptr [rip + {real}]",
        "2:",
        "mov rdx, qword ptr [rsp]",
        "jmp {routed}",
        decide = sym dlopen_routes,
        real = sym REAL_DLOPEN,
        routed = sym dlopen_and_route,
    )
}

/// Whether [`dlopen`] should open `name` itself and route what it loads;
/// makes sure the C library's `dlopen` is known either way.
extern "C" fn dlopen_routes(name: *const c_char, flags: c_int, caller: usize) -> bool {
    if REAL_DLOPEN.load(Ordering::Acquire) == 0 {
        REAL_DLOPEN.store(find_real_dlopen(), Ordering::Release);
    }
    // RTLD_NOLOAD loads nothing (and is how the routing itself waits for
    // loads in progress).
    engine::library_routing::active()
        && flags & libc::RTLD_NOLOAD == 0
        && engine::library_routing::dlopen_is_caller_independent(
            // SAFETY: dlopen's contract: a non-null name is a C string.
            (!name.is_null()).then(|| unsafe { core::ffi::CStr::from_ptr(name) }),
            caller,
        )
}

/// The C library's `dlopen` by version (glibc 2.34 moved it into libc; the
/// older version is the one before), found after this library's: an
/// earlier preload that wraps `dlsym` could otherwise hand back this
/// library's own `dlopen`, which would then call itself.
fn find_real_dlopen() -> usize {
    let own = dlopen as *const () as usize;
    for version in [c"GLIBC_2.34", c"GLIBC_2.2.5"] {
        // SAFETY: dlvsym with NUL-terminated names; RTLD_NEXT looks after
        // this library.
        let found = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlopen".as_ptr(), version.as_ptr()) };
        if !found.is_null() && found as usize != own {
            return found as usize;
        }
    }
    Line::new()
        .text("arenalloc: dlopen: the C library's dlopen was not found\n")
        .emit();
    // SAFETY: abort is always safe to call.
    unsafe { libc::abort() }
}

extern "C" fn dlopen_and_route(name: *const c_char, flags: c_int, _caller: usize) -> *mut c_void {
    let real = REAL_DLOPEN.load(Ordering::Acquire);
    // SAFETY: `dlopen_routes` stored the C library's dlopen, whose type
    // this is.
    let real: unsafe extern "C" fn(*const c_char, c_int) -> *mut c_void =
        unsafe { core::mem::transmute(real) };
    // SAFETY: the caller's contract of dlopen, forwarded.
    let handle = unsafe { real(name, flags) };
    if !handle.is_null() {
        let saved = os::errno();
        engine::library_routing::after_dlopen();
        os::set_errno(saved);
    }
    handle
}

/// Routes every loaded object whose file name (or path, for a pattern with
/// a `/`) matches the glob `pattern`, and those loaded later, each to an
/// arena of its own: what their code allocates (directly, through a stored
/// function pointer, or through the C library's allocating functions such as
/// `strdup`) goes there. Returns how many loaded objects it names now; -1
/// with `errno` EINVAL for a NULL, empty or over-long pattern, ENOSPC past 16
/// patterns, ENOTSUP where this library is not the process's malloc.
///
/// # Safety
/// `pattern` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
#[link_section = "arenalloc_cold"]
pub unsafe extern "C" fn malloc_route_library(pattern: *const c_char) -> c_int {
    if pattern.is_null() {
        os::set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: the caller passes a NUL-terminated string.
    let pattern = unsafe { core::ffi::CStr::from_ptr(pattern) }.to_bytes();
    match engine::library_routing::route_library(pattern) {
        Ok(named) => c_int::try_from(named).unwrap_or(c_int::MAX),
        Err(error) => {
            use engine::library_routing::RouteError;
            os::set_errno(match error {
                RouteError::BadPattern => libc::EINVAL,
                RouteError::TooManyPatterns => libc::ENOSPC,
                RouteError::NotProcessMalloc => libc::ENOTSUP,
            });
            -1
        }
    }
}

/// An arena handle, opaque to C: `arena_hd *` in `arenalloc.h`. It is never
/// dereferenced; its bits name a registry slot and one life of it (a tag
/// that never repeats and cannot be guessed), so a stale or made-up handle
/// is detected.
#[repr(C)]
pub struct ArenaHd {
    _opaque: [u8; 0],
}

fn to_c(handle: engine::ArenaHandle) -> *mut ArenaHd {
    handle.to_raw() as usize as *mut ArenaHd
}

fn from_c(handle: *mut ArenaHd) -> Option<engine::ArenaHandle> {
    engine::ArenaHandle::from_raw(handle as usize as u64)
}

/// Creates an arena. NULL with `errno = ENOMEM` when no more can exist.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_new_arena() -> *mut ArenaHd {
    engine::arena_new().map_or(ptr::null_mut(), to_c)
}

/// Makes `arena` the calling thread's preferred arena; returns the previous
/// one. NULL with `errno = EINVAL` for a stale, destroyed or foreign handle
/// (the thread's arena is unchanged).
#[unsafe(no_mangle)]
pub extern "C" fn malloc_set_arena(arena: *mut ArenaHd) -> *mut ArenaHd {
    match from_c(arena) {
        Some(handle) => engine::arena_set(handle).map_or(ptr::null_mut(), to_c),
        None => {
            os::set_errno(libc::EINVAL);
            ptr::null_mut()
        }
    }
}

/// The calling thread's preferred arena.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_get_arena() -> *mut ArenaHd {
    to_c(engine::arena_current())
}

/// The default arena (never NULL, never destroyed).
#[unsafe(no_mangle)]
pub extern "C" fn malloc_default_arena() -> *mut ArenaHd {
    to_c(engine::arena_default())
}

/// The arena that owns `ptr` (any address in one of its blocks or
/// mappings), or null for memory that is not ours and for null. Safe for any
/// address: it reads only the allocator's own maps.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_arena_of(ptr: *const c_void) -> *mut ArenaHd {
    match engine::arena_of(ptr.cast()) {
        Some(handle) => to_c(handle),
        None => ptr::null_mut(),
    }
}

fn arena_alloc(arena: *mut ArenaHd, size: usize, align: usize, zero: bool) -> *mut c_void {
    match from_c(arena) {
        Some(handle) => engine::arena_alloc(handle, size, align, zero).cast(),
        None => {
            os::set_errno(libc::EINVAL);
            ptr::null_mut()
        }
    }
}

/// `malloc` in `arena` without switching to it.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_arena_malloc(arena: *mut ArenaHd, size: usize) -> *mut c_void {
    arena_alloc(arena, size, engine::MIN_ALIGN, false)
}

/// `calloc` in `arena` without switching to it.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_arena_calloc(
    arena: *mut ArenaHd,
    count: usize,
    size: usize,
) -> *mut c_void {
    match count.checked_mul(size) {
        Some(total) => arena_alloc(arena, total, engine::MIN_ALIGN, true),
        None => {
            os::set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// `aligned_alloc` in `arena` without switching to it.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_arena_aligned_alloc(
    arena: *mut ArenaHd,
    align: usize,
    size: usize,
) -> *mut c_void {
    arena_alloc(arena, size, align, false)
}

/// `struct malloc_arena_stats` in `arenalloc.h`: the engine's figures,
/// which are laid out for C (`repr(C)`, `size_t` fields, same order).
pub type MallocArenaStats = engine::ArenaStats;
const _: () =
    assert!(core::mem::size_of::<MallocArenaStats>() == 9 * core::mem::size_of::<usize>());

/// The engine's handle for a C handle, or `None` with `errno = EINVAL`.
fn handle_or_einval(arena: *mut ArenaHd) -> Option<engine::ArenaHandle> {
    let handle = from_c(arena);
    if handle.is_none() {
        os::set_errno(libc::EINVAL);
    }
    handle
}

/// Destroys `arena`: frees all its blocks at once and returns its memory to
/// the OS; threads that prefer it fall back to the default arena. 0 on
/// success; -1 with `errno = EINVAL` for the default arena or a stale,
/// destroyed or foreign handle, `EBUSY` for a routed library's arena.
///
/// # Safety
/// No block of the arena is used afterwards, and no other thread allocates
/// in, frees to or switches to the arena while this runs.
#[unsafe(no_mangle)]
#[link_section = "arenalloc_cold"]
pub unsafe extern "C" fn malloc_arena_destroy(arena: *mut ArenaHd) -> c_int {
    match handle_or_einval(arena) {
        // SAFETY: the caller's contract, as documented above.
        Some(handle) if unsafe { engine::arena_destroy(handle) } => 0,
        _ => -1,
    }
}

/// Returns `arena`'s free memory to the OS now: 1 if memory was released, 0
/// if there was nothing to release, -1 with `errno = EINVAL` for a stale or
/// foreign handle.
#[unsafe(no_mangle)]
#[link_section = "arenalloc_cold"]
pub extern "C" fn malloc_arena_trim(arena: *mut ArenaHd) -> c_int {
    match handle_or_einval(arena).and_then(engine::arena_trim) {
        Some(0) => 0,
        Some(_) => 1,
        None => -1,
    }
}

/// Fills `*out` with `arena`'s figures: 0, or -1 with `errno = EINVAL` for a
/// stale or foreign handle or a NULL `out`.
///
/// # Safety
/// `out` is null or points to writable memory for a
/// `struct malloc_arena_stats`.
#[unsafe(no_mangle)]
#[link_section = "arenalloc_cold"]
pub unsafe extern "C" fn malloc_arena_stats(
    arena: *mut ArenaHd,
    out: *mut MallocArenaStats,
) -> c_int {
    // SAFETY: forwarded; the first fields are what older callers allocated.
    unsafe { stats_into(arena, out.cast(), STATS_BYTES_BEFORE_PENDING) }
}

/// Bytes of `struct malloc_arena_stats` before `pending_remote_spans` was
/// added (eight words): all that a program built then has room for.
const STATS_BYTES_BEFORE_PENDING: usize = 8 * core::mem::size_of::<usize>();

/// Fills the first `out_size` bytes of `*out` (at most the whole struct of
/// this version) with `arena`'s statistics. Returns 0, or -1 with
/// `errno = EINVAL` for a stale or foreign handle, a null `out` or an
/// `out_size` of 0. The header's `malloc_arena_stats` macro calls this with
/// the size of the caller's struct, so fields added later never overrun it.
///
/// # Safety
/// `out` is null or writable for `out_size` bytes.
#[unsafe(no_mangle)]
#[link_section = "arenalloc_cold"]
pub unsafe extern "C" fn malloc_arena_stats_sized(
    arena: *mut ArenaHd,
    out: *mut MallocArenaStats,
    out_size: usize,
) -> c_int {
    // SAFETY: forwarded.
    unsafe { stats_into(arena, out.cast(), out_size) }
}

/// # Safety
/// `out` is null or writable for `out_size` bytes.
unsafe fn stats_into(arena: *mut ArenaHd, out: *mut u8, out_size: usize) -> c_int {
    if out.is_null() || out_size == 0 {
        os::set_errno(libc::EINVAL);
        return -1;
    }
    let Some(s) = handle_or_einval(arena).and_then(engine::arena_stats) else {
        return -1;
    };
    let bytes = out_size.min(core::mem::size_of::<MallocArenaStats>());
    // SAFETY: `s` is a plain struct of words; `out` is writable for
    // `out_size` >= `bytes` bytes (the caller's contract); they are distinct.
    unsafe { ptr::copy_nonoverlapping((&s as *const MallocArenaStats).cast::<u8>(), out, bytes) };
    0
}

/// Caps what `arena` may hold (bytes of spans and large blocks in use): past
/// it, allocations in the arena fail with NULL and `errno = ENOMEM`. 0
/// removes the limit. Returns 0, or -1 with `errno = EINVAL` for a stale or
/// foreign handle.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_arena_set_limit(arena: *mut ArenaHd, bytes: usize) -> c_int {
    match handle_or_einval(arena) {
        Some(handle) if engine::arena_set_limit(handle, bytes) => 0,
        _ => -1,
    }
}
