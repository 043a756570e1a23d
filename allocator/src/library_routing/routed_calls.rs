//! The `malloc` family's stand-ins for a routed object's GOT: one copy per
//! routing slot (a const generic), so each knows its arena without looking
//! anything up. Each switches the thread to the slot's arena, runs the C
//! contract's function and switches back.
//!
//! `free`, `malloc_usable_size` and friends are not routed: they follow the
//! block's owner wherever it was allocated.

use core::ffi::{c_int, c_void};

use super::{in_route_arena, MAX_ROUTED_OBJECTS};
use crate::c_contract;

// Each stand-in is a few bytes that pass their slot on to one shared body
// (with the slot last, so no argument moves): 32 copies of the whole
// `malloc` path per function made these stand-ins a third of the library's
// machine code, all of it mapped into every process.

#[link_section = "arenalloc_cold"]
extern "C" fn malloc_in<const SLOT: usize>(size: usize) -> *mut c_void {
    malloc_routed(size, SLOT)
}

#[inline(never)]
#[link_section = "arenalloc_cold"]
fn malloc_routed(size: usize, slot: usize) -> *mut c_void {
    in_route_arena(slot, || crate::malloc(size).cast())
}

#[link_section = "arenalloc_cold"]
extern "C" fn calloc_in<const SLOT: usize>(count: usize, size: usize) -> *mut c_void {
    calloc_routed(count, size, SLOT)
}

#[inline(never)]
#[link_section = "arenalloc_cold"]
fn calloc_routed(count: usize, size: usize, slot: usize) -> *mut c_void {
    in_route_arena(slot, || c_contract::calloc(count, size))
}

#[link_section = "arenalloc_cold"]
unsafe extern "C" fn realloc_in<const SLOT: usize>(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: forwarded: the caller's `realloc` contract.
    unsafe { realloc_routed(p, size, SLOT) }
}

/// # Safety
/// `realloc`'s contract for `p`.
#[inline(never)]
#[link_section = "arenalloc_cold"]
unsafe fn realloc_routed(p: *mut c_void, size: usize, slot: usize) -> *mut c_void {
    // SAFETY: forwarded.
    in_route_arena(slot, || unsafe { c_contract::realloc(p, size) })
}

#[link_section = "arenalloc_cold"]
unsafe extern "C" fn reallocarray_in<const SLOT: usize>(
    p: *mut c_void,
    count: usize,
    size: usize,
) -> *mut c_void {
    // SAFETY: forwarded: the caller's `reallocarray` contract.
    unsafe { reallocarray_routed(p, count, size, SLOT) }
}

/// # Safety
/// `reallocarray`'s contract for `p`.
#[inline(never)]
#[link_section = "arenalloc_cold"]
unsafe fn reallocarray_routed(
    p: *mut c_void,
    count: usize,
    size: usize,
    slot: usize,
) -> *mut c_void {
    // SAFETY: forwarded.
    in_route_arena(slot, || unsafe { c_contract::reallocarray(p, count, size) })
}

#[link_section = "arenalloc_cold"]
unsafe extern "C" fn posix_memalign_in<const SLOT: usize>(
    out: *mut *mut c_void,
    align: usize,
    size: usize,
) -> c_int {
    // SAFETY: forwarded: the caller's `posix_memalign` contract.
    unsafe { posix_memalign_routed(out, align, size, SLOT) }
}

/// # Safety
/// `posix_memalign`'s contract for `out`.
#[inline(never)]
#[link_section = "arenalloc_cold"]
unsafe fn posix_memalign_routed(
    out: *mut *mut c_void,
    align: usize,
    size: usize,
    slot: usize,
) -> c_int {
    // SAFETY: forwarded.
    in_route_arena(slot, || unsafe {
        c_contract::posix_memalign(out, align, size)
    })
}

#[link_section = "arenalloc_cold"]
extern "C" fn aligned_alloc_in<const SLOT: usize>(align: usize, size: usize) -> *mut c_void {
    aligned_alloc_routed(align, size, SLOT)
}

#[inline(never)]
#[link_section = "arenalloc_cold"]
fn aligned_alloc_routed(align: usize, size: usize, slot: usize) -> *mut c_void {
    in_route_arena(slot, || c_contract::aligned_alloc(align, size))
}

#[link_section = "arenalloc_cold"]
extern "C" fn memalign_in<const SLOT: usize>(align: usize, size: usize) -> *mut c_void {
    memalign_routed(align, size, SLOT)
}

#[inline(never)]
#[link_section = "arenalloc_cold"]
fn memalign_routed(align: usize, size: usize, slot: usize) -> *mut c_void {
    in_route_arena(slot, || c_contract::memalign(align, size))
}

#[link_section = "arenalloc_cold"]
extern "C" fn valloc_in<const SLOT: usize>(size: usize) -> *mut c_void {
    valloc_routed(size, SLOT)
}

#[inline(never)]
#[link_section = "arenalloc_cold"]
fn valloc_routed(size: usize, slot: usize) -> *mut c_void {
    in_route_arena(slot, || c_contract::valloc(size))
}

#[link_section = "arenalloc_cold"]
extern "C" fn pvalloc_in<const SLOT: usize>(size: usize) -> *mut c_void {
    pvalloc_routed(size, SLOT)
}

#[inline(never)]
#[link_section = "arenalloc_cold"]
fn pvalloc_routed(size: usize, slot: usize) -> *mut c_void {
    in_route_arena(slot, || c_contract::pvalloc(size))
}

macro_rules! per_slot {
    ($f:ident) => {
        [
            $f::<0>, $f::<1>, $f::<2>, $f::<3>, $f::<4>, $f::<5>, $f::<6>, $f::<7>, $f::<8>,
            $f::<9>, $f::<10>, $f::<11>, $f::<12>, $f::<13>, $f::<14>, $f::<15>, $f::<16>,
            $f::<17>, $f::<18>, $f::<19>, $f::<20>, $f::<21>, $f::<22>, $f::<23>, $f::<24>,
            $f::<25>, $f::<26>, $f::<27>, $f::<28>, $f::<29>, $f::<30>, $f::<31>,
        ]
    };
}

type Slots<F> = [F; MAX_ROUTED_OBJECTS];

static MALLOC: Slots<extern "C" fn(usize) -> *mut c_void> = per_slot!(malloc_in);
static CALLOC: Slots<extern "C" fn(usize, usize) -> *mut c_void> = per_slot!(calloc_in);
static REALLOC: Slots<unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void> =
    per_slot!(realloc_in);
static REALLOCARRAY: Slots<unsafe extern "C" fn(*mut c_void, usize, usize) -> *mut c_void> =
    per_slot!(reallocarray_in);
static POSIX_MEMALIGN: Slots<unsafe extern "C" fn(*mut *mut c_void, usize, usize) -> c_int> =
    per_slot!(posix_memalign_in);
static ALIGNED_ALLOC: Slots<extern "C" fn(usize, usize) -> *mut c_void> =
    per_slot!(aligned_alloc_in);
static MEMALIGN: Slots<extern "C" fn(usize, usize) -> *mut c_void> = per_slot!(memalign_in);
static VALLOC: Slots<extern "C" fn(usize) -> *mut c_void> = per_slot!(valloc_in);
static PVALLOC: Slots<extern "C" fn(usize) -> *mut c_void> = per_slot!(pvalloc_in);

/// The `malloc` family's names, in the order of [`stand_in`]'s index.
pub const NAMES: [&core::ffi::CStr; 9] = [
    c"malloc",
    c"calloc",
    c"realloc",
    c"reallocarray",
    c"posix_memalign",
    c"aligned_alloc",
    c"memalign",
    c"valloc",
    c"pvalloc",
];

/// The stand-in for `NAMES[index]` in `slot`.
pub fn stand_in(index: usize, slot: usize) -> Option<usize> {
    match index {
        0 => MALLOC.get(slot).map(|&f| f as usize),
        1 => CALLOC.get(slot).map(|&f| f as usize),
        2 => REALLOC.get(slot).map(|&f| f as usize),
        3 => REALLOCARRAY.get(slot).map(|&f| f as usize),
        4 => POSIX_MEMALIGN.get(slot).map(|&f| f as usize),
        5 => ALIGNED_ALLOC.get(slot).map(|&f| f as usize),
        6 => MEMALIGN.get(slot).map(|&f| f as usize),
        7 => VALLOC.get(slot).map(|&f| f as usize),
        8 => PVALLOC.get(slot).map(|&f| f as usize),
        _ => None,
    }
}
