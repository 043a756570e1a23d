//! Where each thread's allocator state lives: one thread-local
//! [`ThreadState`], reached by [`state`].
//!
//! `malloc` and `free` each read it, so how it is reached matters. Linked
//! into an executable, Rust's `thread_local!` is best: the compiler
//! addresses the state at a fixed offset from the thread pointer. In a
//! shared library (`libarenalloc.so`) it uses the general-dynamic model
//! instead: a call to `__tls_get_addr`, about 22 instructions, on every
//! `malloc` and every `free`. So with the `initial-exec-tls` feature (which
//! the C ABI crate turns on), on x86-64 Linux, the state is defined in
//! assembly and read with the initial-exec model, as C allocators do: the
//! thread pointer plus an offset the dynamic linker writes into the GOT
//! once, two instructions. An initial-exec object needs its TLS in the
//! static TLS block: always so when it is preloaded or linked in; a
//! `dlopen` after start-up works while glibc's surplus static TLS (hundreds
//! of bytes) has room for these 40 bytes (tests/c_dlopen.rs).

use crate::heap::ThreadState;

#[cfg(all(
    feature = "initial-exec-tls",
    target_arch = "x86_64",
    target_os = "linux"
))]
mod model {
    use super::ThreadState;

    // The state's initial image, copied into every new thread's TLS: the
    // claim is at rest with the owner key of a thread without heaps, the
    // current and previous heap point at the empty heap (relocated at load
    // like any pointer in data), the heap chain is empty. It must match
    // `ThreadState::initial()` (checked by a test).
    core::arch::global_asm!(
        ".pushsection .tdata.arenalloc_thread_state,\"awT\",@progbits",
        ".p2align 3",
        ".globl arenalloc_thread_state",
        ".hidden arenalloc_thread_state",
        ".type arenalloc_thread_state, @tls_object",
        ".size arenalloc_thread_state, 40",
        "arenalloc_thread_state:",
        ".quad 0",
        ".quad {no_heap_key}",
        ".quad {empty}",
        ".quad {empty}",
        ".quad 0",
        ".popsection",
        empty = sym crate::heap::EMPTY_HEAP,
        no_heap_key = const crate::claim::NO_HEAP_KEY,
    );

    const _: () = assert!(core::mem::size_of::<ThreadState>() == 40);

    #[inline(always)]
    pub fn state() -> *const ThreadState {
        let address: usize;
        // SAFETY: the thread pointer (fs:0 on x86-64 Linux, glibc and musl)
        // plus the GOT entry, which holds the symbol's offset from it and
        // which the dynamic linker wrote before any code of this object ran.
        // The result is the same for the life of the thread, so the asm may
        // be treated as pure; it reads no memory Rust code can see.
        unsafe {
            core::arch::asm!(
                "movq %fs:0, {address}",
                "addq arenalloc_thread_state@GOTTPOFF(%rip), {address}",
                address = out(reg) address,
                options(att_syntax, pure, nomem, nostack),
            );
        }
        address as *const ThreadState
    }
}

#[cfg(not(all(
    feature = "initial-exec-tls",
    target_arch = "x86_64",
    target_os = "linux"
)))]
mod model {
    extern crate std;

    use super::ThreadState;

    std::thread_local! {
        static STATE: ThreadState = const { ThreadState::initial() };
    }

    #[inline(always)]
    pub fn state() -> *const ThreadState {
        STATE.with(|s| s as *const ThreadState)
    }
}

/// The calling thread's state. Valid, and the same address, for as long as
/// the thread lives.
#[inline(always)]
pub fn state() -> *const ThreadState {
    model::state()
}

#[cfg(test)]
mod tests {
    extern crate std;

    use core::mem::offset_of;
    use core::sync::atomic::Ordering::Relaxed;

    use super::state;
    use crate::claim::{ThreadClaim, NO_HEAP_KEY};
    use crate::heap::empty_heap;
    use crate::heap::ThreadState;

    /// A new thread starts from the image `tls` defines, which must say what
    /// `ThreadState::initial()` says (the empty heap twice, a claim at rest, no
    /// heap chain); and each thread has a slot of its own.
    #[test]
    fn a_new_thread_starts_from_the_initial_state_in_a_slot_of_its_own() {
        assert_eq!(offset_of!(ThreadState, claim), 0);
        assert_eq!(offset_of!(ThreadClaim, owner_key), 8);
        assert_eq!(offset_of!(ThreadState, heap), 16);
        assert_eq!(offset_of!(ThreadState, previous_heap), 24);
        assert_eq!(offset_of!(ThreadState, heaps), 32);
        let initial = ThreadState::initial();
        assert_eq!(initial.heap.load(Relaxed), empty_heap());
        assert_eq!(initial.previous_heap.load(Relaxed), empty_heap());
        assert!(initial.heaps.load(Relaxed).is_null());
        let (there, at_start) = std::thread::spawn(|| {
            // SAFETY: this thread's own state, read before any allocator
            // call of this thread could change it.
            let s = unsafe { &*state() };
            let at_start = (
                s.heap.load(Relaxed) == empty_heap(),
                s.previous_heap.load(Relaxed) == empty_heap(),
                s.heaps.load(Relaxed).is_null(),
                s.claim.is_at_rest(),
                s.claim.owner_key() == NO_HEAP_KEY,
            );
            (state() as usize, at_start)
        })
        .join()
        .unwrap();
        assert_eq!(at_start, (true, true, true, true, true));
        assert_ne!(there, state() as usize, "two threads share one slot");
    }
}
