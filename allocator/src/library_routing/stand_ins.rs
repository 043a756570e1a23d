//! Which functions are routed, and their stand-ins: one numbering over the
//! `malloc` family (`routed_calls.rs`) and the C library functions and C++
//! operators of `routed_libc.c`; the addresses those names resolve to in
//! the global scope (what the dynamic linker put in a word that nobody
//! changed since); and each slot's C++ `operator new`.

use core::ffi::{c_char, c_void, CStr};

use super::{routed_calls, MAX_ROUTED_OBJECTS};

/// Room for every routed name (checked at start-up).
const MAX_NAMES: usize = 128;
const OPERATORS: usize = 8;

/// The C side's way back into the engine (`routed_libc.c`).
#[repr(C)]
struct RoutingHooks {
    enter: Option<extern "C" fn(u32) -> u64>,
    leave: Option<extern "C" fn(u64)>,
}

unsafe extern "C" {
    static mut arenalloc_routing_hooks: RoutingHooks;
    static arenalloc_routed_libc_count: usize;
    fn arenalloc_routed_libc_name(index: usize) -> *const c_char;
    fn arenalloc_routed_libc_stand_in(index: usize, slot: usize) -> *const c_void;
    static arenalloc_routed_slots: usize;
    static mut arenalloc_operator_new: [[*mut c_void; OPERATORS]; MAX_ROUTED_OBJECTS];
    static arenalloc_operator_new_names: [*const c_char; OPERATORS];
}

/// How many functions the C file routes.
fn libc_count() -> usize {
    // SAFETY: a constant of routed_libc.c.
    unsafe { arenalloc_routed_libc_count }
}

fn operator_names() -> &'static [*const c_char; OPERATORS] {
    // SAFETY: constant data of routed_libc.c.
    unsafe { &*core::ptr::addr_of!(arenalloc_operator_new_names) }
}

/// How many names are routed.
pub fn count() -> usize {
    (routed_calls::NAMES.len() + libc_count()).min(MAX_NAMES)
}

/// The routed name numbered `id`.
pub fn name(id: usize) -> Option<&'static CStr> {
    if let Some(&name) = routed_calls::NAMES.get(id) {
        return Some(name);
    }
    let index = id - routed_calls::NAMES.len();
    if index >= libc_count() {
        return None;
    }
    // SAFETY: for an index below the count, a string literal of the C file.
    Some(unsafe { CStr::from_ptr(arenalloc_routed_libc_name(index)) })
}

/// The number of the routed function called `name`.
pub fn id_of(wanted: &[u8]) -> Option<usize> {
    (0..count()).find(|&id| name(id).is_some_and(|n| n.to_bytes() == wanted))
}

/// Which C++ operator (index into the slot's table) `id` is, if one.
fn operator_of(id: usize) -> Option<usize> {
    let name = name(id)?;
    operator_names().iter().position(|&n| {
        // SAFETY: string literals of the C file.
        let operator = unsafe { CStr::from_ptr(n) };
        operator == name
    })
}

/// The stand-in for `id` in `slot`. None for an operator `new` the slot's
/// object does not reach (a word is only ever pointed at a stand-in that
/// has something to call).
pub fn stand_in(id: usize, slot: usize) -> Option<usize> {
    if id < routed_calls::NAMES.len() {
        return routed_calls::stand_in(id, slot);
    }
    if let Some(operator) = operator_of(id) {
        operator_new(slot, operator)?;
    }
    let index = id - routed_calls::NAMES.len();
    if index >= libc_count() || slot >= MAX_ROUTED_OBJECTS {
        return None;
    }
    // SAFETY: a look-up in code of the C file, for indexes it has.
    let address = unsafe { arenalloc_routed_libc_stand_in(index, slot) };
    (!address.is_null()).then_some(address as usize)
}

/// What `id` resolves to for `slot`'s object before anybody rewrote it:
/// the operator the slot found for an operator `new`, else the global
/// scope's definition.
pub fn original(id: usize, slot: usize, globals: &Globals) -> Option<usize> {
    match operator_of(id) {
        Some(operator) => operator_new(slot, operator),
        None => globals.address.get(id).copied().filter(|&a| a != 0),
    }
}

fn operator_new(slot: usize, operator: usize) -> Option<usize> {
    if slot >= MAX_ROUTED_OBJECTS || operator >= OPERATORS {
        return None;
    }
    // SAFETY: in bounds (checked above); entries are written only by
    // `find_operators` under the routing's rescan, before any stand-in of
    // the slot is in a GOT, and a found address never changes.
    let address = unsafe {
        core::ptr::addr_of!(arenalloc_operator_new)
            .cast::<*mut c_void>()
            .add(slot * OPERATORS + operator)
            .read()
    };
    (!address.is_null()).then_some(address as usize)
}

/// The global scope's address of every routed name (0: not defined).
pub struct Globals {
    address: [usize; MAX_NAMES],
}

/// Looks every routed name up in the global scope. `dlsym` takes the
/// dynamic linker's lock: never call this holding the routing lock.
pub fn resolve_globals() -> Globals {
    let mut globals = Globals {
        address: [0; MAX_NAMES],
    };
    let mut missed = false;
    for (id, address) in globals.address.iter_mut().enumerate().take(count()) {
        if let Some(name) = name(id) {
            // SAFETY: a NUL-terminated name; RTLD_DEFAULT is the global scope.
            *address = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) } as usize;
            missed |= *address == 0;
        }
    }
    if missed {
        // A name nobody defines (C++'s operators in a C program) must not
        // leave an error for the program's next `dlerror`.
        // SAFETY: dlerror only reads and clears the thread's error state.
        unsafe { libc::dlerror() };
    }
    globals
}

/// Finds `slot`'s C++ operators: in the global scope, else in the scope of
/// the object `handle` (a `dlopen` reference to it; null at start-up).
/// Takes the dynamic linker's lock: never under the routing lock.
pub fn find_operators(slot: usize, handle: *mut c_void, globals: &Globals) {
    let mut missed = false;
    for (operator, &name) in operator_names().iter().enumerate() {
        if operator_new(slot, operator).is_some() || slot >= MAX_ROUTED_OBJECTS {
            continue;
        }
        // SAFETY: a string literal of the C file.
        let global = id_of(unsafe { CStr::from_ptr(name) }.to_bytes())
            .and_then(|id| globals.address.get(id).copied())
            .unwrap_or(0);
        let address = if global != 0 || handle.is_null() {
            global
        } else {
            // SAFETY: `handle` is a live dlopen reference; the name is
            // NUL-terminated.
            unsafe { libc::dlsym(handle, name) as usize }
        };
        missed |= address == 0;
        // SAFETY: in bounds; written before any stand-in of the slot reads
        // it (see `operator_new`).
        unsafe {
            core::ptr::addr_of_mut!(arenalloc_operator_new)
                .cast::<*mut c_void>()
                .add(slot * OPERATORS + operator)
                .write(address as *mut c_void);
        }
    }
    if missed {
        // SAFETY: as in `resolve_globals`.
        unsafe { libc::dlerror() };
    }
}

/// Sets the C stand-ins' way back into the engine. Before any stand-in is
/// put in a GOT; idempotent.
pub fn install_hooks(enter: extern "C" fn(u32) -> u64, leave: extern "C" fn(u64)) {
    // SAFETY: constant data of routed_libc.c.
    let c_slots = unsafe { arenalloc_routed_slots };
    if c_slots != MAX_ROUTED_OBJECTS || routed_calls::NAMES.len() + libc_count() > MAX_NAMES {
        crate::diag::fatal("library routing: routed_libc.c and the engine disagree on sizes");
    }
    // SAFETY: written under the routing lock; the same values every time,
    // and no stand-in that reads them runs before the first write (none is
    // in a GOT yet).
    unsafe {
        core::ptr::addr_of_mut!(arenalloc_routing_hooks).write(RoutingHooks {
            enter: Some(enter),
            leave: Some(leave),
        });
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::collections::HashSet;

    use super::*;

    /// Every routed name is listed once and has a stand-in of its own in
    /// every slot (the C file's look-up functions, which replaced its table
    /// of addresses); past the ends there is none.
    #[test]
    fn every_routed_name_has_a_distinct_stand_in_in_every_slot() {
        let first_libc = routed_calls::NAMES.len();
        assert!(
            libc_count() > 60,
            "the C file routes {} functions",
            libc_count()
        );
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        for id in 0..count() {
            let name = name(id).expect("a name for every id");
            assert!(names.insert(name.to_bytes()), "{name:?} listed twice");
            if id < first_libc || operator_of(id).is_some() {
                continue; // the Rust table, and operators only where found
            }
            for slot in 0..MAX_ROUTED_OBJECTS {
                let address = stand_in(id, slot).expect("a stand-in in every slot");
                assert!(
                    addresses.insert(address),
                    "{name:?} slot {slot}: address repeated"
                );
            }
            assert_eq!(stand_in(id, MAX_ROUTED_OBJECTS), None);
        }
        assert_eq!(name(count()), None);
        assert_eq!(id_of(b"getline").and_then(name), Some(c"getline"));
    }
}
