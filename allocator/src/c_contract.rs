//! The C library's contract for the `malloc` family: overflow checks,
//! alignment rules and `errno`, as glibc documents them. The C ABI's exported
//! symbols and the stand-ins put into a routed library's GOT both call these,
//! so the two can never disagree.

use core::ffi::{c_int, c_void};
use core::ptr;

use crate::os::{self, PAGE_SIZE};

fn null_with(errno: c_int) -> *mut c_void {
    os::set_errno(errno);
    ptr::null_mut()
}

/// `calloc`: zeroed, with `ENOMEM` when `count * size` overflows.
pub fn calloc(count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        Some(total) => crate::zalloc(total).cast(),
        None => null_with(libc::ENOMEM),
    }
}

/// glibc semantics: `realloc(NULL, n)` is `malloc(n)`; `realloc(p, 0)` frees
/// `p` and returns NULL; on failure the old block is left intact.
///
/// # Safety
/// `p` is null or a live block from this allocator.
pub unsafe fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if size == 0 && !p.is_null() {
        // SAFETY: the caller's contract.
        unsafe { crate::free(p.cast()) };
        return ptr::null_mut();
    }
    // SAFETY: the caller's contract.
    unsafe { crate::realloc(p.cast(), size).cast() }
}

/// # Safety
/// As [`realloc`].
pub unsafe fn reallocarray(p: *mut c_void, count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        // SAFETY: the caller's contract.
        Some(total) => unsafe { realloc(p, total) },
        None => null_with(libc::ENOMEM),
    }
}

/// Allocates with `align` (a power of two), treating small alignments as
/// `malloc`'s.
fn aligned(align: usize, size: usize) -> *mut c_void {
    crate::malloc_aligned(size, align.max(crate::MIN_ALIGN)).cast()
}

/// POSIX: `align` must be a power of two and a multiple of `sizeof(void*)`;
/// errors are returned, not stored in errno (which is left unchanged).
///
/// # Safety
/// `out` is a valid pointer to write the result to.
pub unsafe fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(core::mem::size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    let saved = os::errno();
    let p = aligned(align, size);
    if p.is_null() {
        let err = os::errno();
        os::set_errno(saved);
        return if err == 0 { libc::ENOMEM } else { err };
    }
    // SAFETY: the caller passes a valid out-pointer.
    unsafe { *out = p };
    0
}

/// C11 `aligned_alloc`: `align` must be a power of two (any size, as glibc).
pub fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        return null_with(libc::EINVAL);
    }
    aligned(align, size)
}

/// glibc `memalign`: an alignment that is not a power of two is rounded up to
/// one; one too large to round is `EINVAL`.
pub fn memalign(align: usize, size: usize) -> *mut c_void {
    if align <= crate::MIN_ALIGN {
        return crate::malloc(size).cast();
    }
    match align.checked_next_power_of_two() {
        Some(a) => aligned(a, size),
        None => null_with(libc::EINVAL),
    }
}

pub fn valloc(size: usize) -> *mut c_void {
    aligned(PAGE_SIZE, size)
}

/// `valloc` with the size rounded up to whole pages (at least one).
pub fn pvalloc(size: usize) -> *mut c_void {
    match size.max(1).checked_next_multiple_of(PAGE_SIZE) {
        Some(rounded) => aligned(PAGE_SIZE, rounded),
        None => null_with(libc::ENOMEM),
    }
}
