//! Where each thread's allocator state lives: one thread-local
//! [`ThreadState`], reached by [`state`] (its address) and, on the fast
//! paths, by `Current`.
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
//! once, two instructions; the fast paths go further (`Current`): they
//! load the offset and give every access an `%fs:` operand, without the
//! load of the thread pointer that making an address takes. An
//! initial-exec object needs its TLS in the static TLS block: always so
//! when it is preloaded or linked in; a
//! `dlopen` after start-up works while glibc's surplus static TLS (hundreds
//! of bytes) has room for these 40 bytes (tests/c_dlopen.rs).

use crate::heap::ThreadState;

#[cfg(all(
    feature = "initial-exec-tls",
    target_arch = "x86_64",
    target_os = "linux",
    not(arenalloc_tsan)
))]
mod model {
    use core::marker::PhantomData;

    use super::ThreadState;
    use crate::claim::{self, FastClaim};
    use crate::heap::Heap;

    /// Where the claim and the current heap lie in the state.
    const CLAIM_AT: usize = core::mem::offset_of!(ThreadState, claim);
    const STATE_HEAP_AT: usize = core::mem::offset_of!(ThreadState, heap);

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

    /// The calling thread's state: the thread pointer plus the state's
    /// offset from it (slow paths; the fast paths use [`Current`]).
    #[inline(always)]
    pub fn state() -> *const ThreadState {
        let thread_pointer: usize;
        // SAFETY: reads the thread pointer's own copy at `%fs:0` (x86-64
        // Linux, glibc and musl), the same for the life of the thread: pure,
        // and no memory Rust code can see.
        unsafe {
            core::arch::asm!(
                "movq %fs:0, {thread_pointer}",
                thread_pointer = out(reg) thread_pointer,
                options(att_syntax, pure, nomem, nostack, preserves_flags),
            );
        }
        thread_pointer.wrapping_add(offset()) as *const ThreadState
    }

    /// The state's offset from the thread pointer (see [`Current`]).
    #[inline(always)]
    fn offset() -> usize {
        let offset: usize;
        // SAFETY: reads the GOT entry the dynamic linker wrote before any
        // code of this object ran and never changes: pure, and no memory
        // Rust code can see.
        unsafe {
            core::arch::asm!(
                "movq arenalloc_thread_state@GOTTPOFF(%rip), {offset}",
                offset = out(reg) offset,
                options(att_syntax, pure, nomem, nostack, preserves_flags),
            );
        }
        offset
    }

    /// The calling thread's state, as an offset from the thread pointer:
    /// each access below is one instruction with an `%fs:` operand, so a
    /// fast path never loads the thread pointer (`%fs:0`) to make an
    /// address first (one dependent load fewer at the head of `malloc`).
    /// The claim's accesses are compiler barriers (no `nomem` or
    /// `readonly`), as the atomics they stand for; on x86 a load is an
    /// acquire and a store a release. The heap's load is relaxed.
    /// Not `Send`: it means the state of the thread that holds it.
    #[derive(Clone, Copy)]
    pub struct Current(usize, PhantomData<*const ()>);

    impl Current {
        #[inline(always)]
        pub fn get() -> Current {
            Current(offset(), PhantomData)
        }

        /// The thread's current heap (a relaxed load).
        #[inline(always)]
        pub fn heap(self) -> *mut Heap {
            let heap: *mut Heap;
            // SAFETY: `%fs:offset` is the calling thread's state (the
            // dynamic linker's offset for this object's TLS symbol); `heap`
            // is an aligned word of it, read whole.
            unsafe {
                core::arch::asm!(
                    "movq %fs:{at}({offset}), {heap}",
                    offset = in(reg) self.0,
                    at = const STATE_HEAP_AT,
                    heap = out(reg) heap,
                    options(att_syntax, nostack, readonly, preserves_flags),
                );
            }
            heap
        }

        /// `fast = VALUE`: one byte store of a constant.
        #[inline(always)]
        fn store_fast<const VALUE: u8>(self) {
            // SAFETY: as in `heap`; `fast` is a byte of the state that only
            // its thread stores.
            unsafe {
                core::arch::asm!(
                    "movb ${value}, %fs:{at}({offset})",
                    offset = in(reg) self.0,
                    value = const VALUE,
                    at = const CLAIM_AT + claim::FAST_AT,
                    options(att_syntax, nostack, preserves_flags),
                );
            }
        }
    }

    impl FastClaim for Current {
        #[inline(always)]
        fn set_fast(self) {
            self.store_fast::<1>();
        }

        #[inline(always)]
        fn clear_fast(self) {
            self.store_fast::<0>();
        }

        #[inline(always)]
        fn is_claimed(self) -> bool {
            // One compare of the flag in memory, as `ThreadClaim::is_claimed`.
            // SAFETY: as in `heap`; `claimed` is a byte of the state, read
            // whole.
            unsafe {
                core::arch::asm!(
                    "cmpb $0, %fs:{at}({offset})",
                    "jne {taken}",
                    offset = in(reg) self.0,
                    at = const CLAIM_AT + claim::CLAIMED_AT,
                    taken = label {
                        return true;
                    },
                    options(att_syntax, nostack),
                );
            }
            false
        }

        #[inline(always)]
        fn owner_key(self) -> usize {
            let key: usize;
            // SAFETY: as in `heap`; `owner_key` is an aligned word of the
            // state, read whole.
            unsafe {
                core::arch::asm!(
                    "movq %fs:{at}({offset}), {key}",
                    offset = in(reg) self.0,
                    at = const CLAIM_AT + claim::OWNER_KEY_AT,
                    key = out(reg) key,
                    options(att_syntax, nostack, preserves_flags),
                );
            }
            key
        }
    }
}

#[cfg(not(all(
    feature = "initial-exec-tls",
    target_arch = "x86_64",
    target_os = "linux",
    not(arenalloc_tsan)
)))]
mod model {
    extern crate std;

    use core::marker::PhantomData;
    use core::sync::atomic::Ordering;

    use super::ThreadState;
    use crate::claim::FastClaim;
    use crate::heap::Heap;

    std::thread_local! {
        static STATE: ThreadState = const { ThreadState::initial() };
    }

    #[inline(always)]
    pub fn state() -> *const ThreadState {
        STATE.with(|s| s as *const ThreadState)
    }

    /// The calling thread's state, by reference: the compiler addresses
    /// `thread_local!` at a fixed offset from the thread pointer already.
    /// Not `Send`: the reference lives as long as the thread that holds it.
    #[derive(Clone, Copy)]
    pub struct Current(&'static ThreadState, PhantomData<*const ()>);

    impl Current {
        #[inline(always)]
        pub fn get() -> Current {
            // SAFETY: the calling thread's own TLS, alive as long as the
            // thread; `Current` cannot leave the thread (not `Send`).
            Current(unsafe { &*state() }, PhantomData)
        }

        /// The thread's current heap (a relaxed load).
        #[inline(always)]
        pub fn heap(self) -> *mut Heap {
            self.0.heap.load(Ordering::Relaxed)
        }
    }

    impl FastClaim for Current {
        #[inline(always)]
        fn set_fast(self) {
            self.0.claim.set_fast();
        }
        #[inline(always)]
        fn clear_fast(self) {
            self.0.claim.clear_fast();
        }
        #[inline(always)]
        fn is_claimed(self) -> bool {
            self.0.claim.is_claimed()
        }
        #[inline(always)]
        fn owner_key(self) -> usize {
            self.0.claim.owner_key()
        }
    }
}

/// The calling thread's state. Valid, and the same address, for as long as
/// the thread lives.
#[inline(always)]
pub fn state() -> *const ThreadState {
    model::state()
}

/// The calling thread's state as `malloc`'s and `free`'s fast paths reach
/// it: its side of the claim handshake ([`FastClaim`]) and its current heap.
///
/// [`FastClaim`]: crate::claim::FastClaim
pub(crate) use model::Current;

#[cfg(test)]
mod tests {
    extern crate std;

    use core::mem::offset_of;
    use core::sync::atomic::Ordering::Relaxed;

    use super::{state, Current};
    use crate::claim::{FastClaim, ThreadClaim, NO_HEAP_KEY};
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

    /// The fast paths' handle reaches the very fields of the thread's state
    /// (in the preloaded library's model, through offsets from the thread
    /// pointer that nothing else checks): each of its accesses is seen
    /// through the state's address, and each change made through the
    /// address is seen by it.
    #[test]
    fn the_fast_paths_handle_reads_and_writes_the_threads_own_state() {
        std::thread::spawn(|| {
            // SAFETY: this thread's own state; no allocator call of this
            // thread runs while the test holds it.
            let s = unsafe { &*state() };
            let me = Current::get();
            assert_eq!(me.heap(), s.heap.load(Relaxed));
            // The current and the previous heap start equal: tell them apart
            // for a moment (this thread's heap is never used meanwhile).
            let at_start = s.heap.load(Relaxed);
            let marker = core::ptr::NonNull::<crate::heap::Heap>::dangling().as_ptr();
            s.heap.store(marker, Relaxed);
            let seen = me.heap();
            s.heap.store(at_start, Relaxed);
            assert_eq!(seen, marker);
            assert_eq!(me.owner_key(), NO_HEAP_KEY);
            // As the thread's first heap would (its id: its state's address).
            let id = state() as usize;
            s.claim.set_owner_key(id);
            assert_eq!(me.owner_key(), id);
            assert!(me.try_enter(), "no claim is marked");
            assert!(!s.claim.is_at_rest(), "the fast flag is not seen set");
            me.leave_fast();
            assert!(s.claim.is_at_rest(), "the fast flag is not seen cleared");
            me.enter_unchecked();
            assert!(!s.claim.is_at_rest());
            me.leave_fast();
            assert!(s.claim.try_claim());
            assert!(me.is_claimed(), "a marked claim is not seen");
            assert_ne!(me.owner_key(), id, "the claimed key is not seen");
            assert!(!me.try_enter(), "entered past a marked claim");
            assert!(s.claim.confirm(), "a refused entry left the flag set");
            s.claim.release();
            assert!(!me.is_claimed());
            assert_eq!(me.owner_key(), id);
            assert!(s.claim.is_at_rest());
        })
        .join()
        .unwrap();
    }
}
