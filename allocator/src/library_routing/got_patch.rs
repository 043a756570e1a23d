//! Writes one function address into a relocated word of a loaded object,
//! opening its RELRO page for the write and closing it again.
//!
//! Callers hold the routing lock, so two writers never race on a page's
//! protection; readers (the object's code calling through the word) see
//! either the old or the new address, since an aligned word store is atomic.

use core::sync::atomic::{AtomicUsize, Ordering};

use super::loaded_object::LoadedObject;
use crate::os::PAGE_SIZE;

/// Why a word could not be written.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PatchError {
    /// The word is not 8-byte aligned or not in the object's data (its
    /// writable segments or RELRO): never write into code.
    BadWord,
    /// `mprotect` refused to open its RELRO page (e.g. a seccomp policy).
    Protected,
}

/// The address the word holds now.
pub fn read_word(object: &LoadedObject<'_>, word: usize) -> Result<usize, PatchError> {
    check(object, word)?;
    // SAFETY: `check` proved the word aligned and inside the object's data
    // segments, which stay mapped while the dynamic linker lists it.
    Ok(unsafe { AtomicUsize::from_ptr(word as *mut usize) }.load(Ordering::Relaxed))
}

/// Stores `target` into the word, unless it already holds it; whether it
/// changed.
pub fn write_word(
    object: &LoadedObject<'_>,
    word: usize,
    target: usize,
) -> Result<bool, PatchError> {
    if read_word(object, word)? == target {
        return Ok(false);
    }
    let in_relro = (object.relro_start..object.relro_end).contains(&word);
    let page = word & !(PAGE_SIZE - 1);
    if in_relro && !protect(page, libc::PROT_READ | libc::PROT_WRITE) {
        return Err(PatchError::Protected);
    }
    // SAFETY: as in `read_word`; the page is writable (a GOT or data page
    // outside RELRO, or RELRO opened just above).
    unsafe { AtomicUsize::from_ptr(word as *mut usize) }.store(target, Ordering::Release);
    if in_relro {
        // Closing it again cannot fail where opening it succeeded.
        protect(page, libc::PROT_READ);
    }
    Ok(true)
}

fn check(object: &LoadedObject<'_>, word: usize) -> Result<(), PatchError> {
    let in_data = object.is_writable_after_load(word)
        || (object.relro_start..object.relro_end).contains(&word);
    if in_data && word.is_multiple_of(core::mem::align_of::<usize>()) {
        Ok(())
    } else {
        Err(PatchError::BadWord)
    }
}

fn protect(page: usize, protection: libc::c_int) -> bool {
    // SAFETY: the page belongs to a loaded object's RELRO segment, which
    // holds only relocated pointers (no code); changing its protection does
    // not affect memory the allocator or anyone else depends on being RW.
    unsafe { libc::mprotect(page as *mut libc::c_void, PAGE_SIZE, protection) == 0 }
}
