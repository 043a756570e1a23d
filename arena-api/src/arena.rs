//! Dedicated arenas: keep a library's allocations apart from the
//! application's, so the application's freed memory can go back to the OS
//! even while the library keeps a cache.

use core::alloc::Layout;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator};
use arenalloc_engine as engine;

pub use engine::ArenaStats;

/// A handle to an arena. Cheap to copy around (`Send + Sync`); the arena
/// itself lives as long as the process.
///
/// ```
/// use arenalloc::{Arena, ArenaAlloc};
///
/// #[global_allocator]
/// static GLOBAL: ArenaAlloc = ArenaAlloc;
///
/// let library = Arena::new().expect("an arena");
/// // Everything allocated inside `run` comes from `library`.
/// let cache: Vec<String> = library.run(|| (0..100).map(|i| i.to_string()).collect());
/// assert_eq!(Arena::of(cache.as_ptr().cast()), Some(library));
/// assert_eq!(Arena::current(), Arena::default_arena());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Arena {
    handle: engine::ArenaHandle,
}

/// Why an arena operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArenaError {
    /// No more arenas can exist (4096 besides the default one).
    TooManyArenas,
    /// The handle does not name a live arena.
    StaleHandle,
    /// The thread's heap for the arena could not be created.
    OutOfMemory,
}

impl fmt::Display for ArenaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArenaError::TooManyArenas => "no more arenas can be created",
            ArenaError::StaleHandle => "the arena handle is stale or foreign",
            ArenaError::OutOfMemory => "out of memory",
        })
    }
}

impl std::error::Error for ArenaError {}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Arena({:#x})", self.handle.to_raw())
    }
}

impl Arena {
    /// Creates an arena.
    ///
    /// ```
    /// let arena = arenalloc::Arena::new().unwrap();
    /// assert_ne!(arena, arenalloc::Arena::default_arena());
    /// ```
    pub fn new() -> Result<Arena, ArenaError> {
        engine::arena_new()
            .map(|handle| Arena { handle })
            .ok_or(ArenaError::TooManyArenas)
    }

    /// The default arena, where threads allocate unless told otherwise.
    pub fn default_arena() -> Arena {
        Arena {
            handle: engine::arena_default(),
        }
    }

    /// The calling thread's preferred arena.
    pub fn current() -> Arena {
        Arena {
            handle: engine::arena_current(),
        }
    }

    /// The arena that owns a block of arenalloc's (`None` for memory that is
    /// not arenalloc's).
    pub fn of(ptr: *const u8) -> Option<Arena> {
        engine::arena_of(ptr).map(|handle| Arena { handle })
    }

    /// Makes this arena the calling thread's preferred arena until the
    /// returned guard is dropped; the guard then restores the previous one.
    /// The guard belongs to this thread (it is not `Send`).
    ///
    /// ```
    /// use arenalloc::Arena;
    /// let arena = Arena::new().unwrap();
    /// {
    ///     let _guard = arena.enter().unwrap();
    ///     assert_eq!(Arena::current(), arena);
    /// }
    /// assert_eq!(Arena::current(), Arena::default_arena());
    /// ```
    pub fn enter(&self) -> Result<ArenaGuard, ArenaError> {
        match engine::arena_set(self.handle) {
            Some(previous) => Ok(ArenaGuard {
                previous,
                _not_send: PhantomData,
            }),
            None if engine::os::errno() == libc::EINVAL => Err(ArenaError::StaleHandle),
            None => Err(ArenaError::OutOfMemory),
        }
    }

    /// Runs `f` with this arena preferred, restoring the previous arena
    /// afterwards, also when `f` panics.
    ///
    /// ```
    /// use arenalloc::Arena;
    /// let arena = Arena::new().unwrap();
    /// let result = std::panic::catch_unwind(|| arena.run(|| panic!("inside")));
    /// assert!(result.is_err());
    /// assert_eq!(Arena::current(), Arena::default_arena());
    /// ```
    ///
    /// # Panics
    /// If the arena cannot be entered (see [`Arena::enter`]).
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        let _guard = match self.enter() {
            Ok(guard) => guard,
            Err(e) => panic!("cannot enter {self:?}: {e}"),
        };
        f()
    }

    /// The raw handle, as C code sees it (`arena_hd *`).
    pub fn as_raw(&self) -> u64 {
        self.handle.to_raw()
    }

    /// The arena's figures now: live bytes and blocks, resident and mapped
    /// bytes, bytes in use (what the limit counts) and their peak, the limit,
    /// and how many threads prefer the arena.
    ///
    /// ```
    /// use arenalloc::{Arena, ArenaAlloc};
    /// #[global_allocator]
    /// static GLOBAL: ArenaAlloc = ArenaAlloc;
    ///
    /// let arena = Arena::new().unwrap();
    /// let v: Vec<u8> = arena.run(|| vec![7; 1000]);
    /// let s = arena.stats().unwrap();
    /// assert_eq!(s.live_blocks, 1);
    /// assert!(s.live_bytes >= 1000);
    /// drop(v);
    /// assert_eq!(arena.stats().unwrap().live_blocks, 0);
    /// ```
    pub fn stats(&self) -> Result<ArenaStats, ArenaError> {
        engine::arena_stats(self.handle).ok_or(ArenaError::StaleHandle)
    }

    /// Returns the arena's free memory to the OS now; the bytes released.
    pub fn trim(&self) -> Result<usize, ArenaError> {
        engine::arena_trim(self.handle).ok_or(ArenaError::StaleHandle)
    }

    /// Caps the bytes the arena may hold in use (`None`: no limit). Past the
    /// limit, allocations in the arena fail: `malloc` returns NULL with
    /// `ENOMEM`, a `Vec` in the arena reports an allocation error. The
    /// limit counts whole spans (64 KiB to 1 MiB) and large mappings, so the
    /// last span may take the arena up to one span short of it.
    ///
    /// ```
    /// use allocator_api2::vec::Vec;
    /// use arenalloc::Arena;
    ///
    /// let arena = Arena::new().unwrap();
    /// arena.set_limit(Some(1 << 20)).unwrap();
    /// let mut v: Vec<u8, Arena> = Vec::new_in(arena);
    /// assert!(v.try_reserve(512 << 10).is_ok());
    /// assert!(v.try_reserve(4 << 20).is_err());
    /// ```
    pub fn set_limit(&self, bytes: Option<usize>) -> Result<(), ArenaError> {
        if engine::arena_set_limit(self.handle, bytes.unwrap_or(0)) {
            Ok(())
        } else {
            Err(ArenaError::StaleHandle)
        }
    }

    /// Destroys the arena: every block in it is freed at once and its memory
    /// goes back to the OS. Threads that prefer it fall back to the default
    /// arena; this handle and every copy of it are refused from now on
    /// ([`ArenaError::StaleHandle`]). The default arena cannot be destroyed.
    ///
    /// ```
    /// use allocator_api2::boxed::Box;
    /// use arenalloc::{Arena, ArenaError};
    ///
    /// let arena = Arena::new().unwrap();
    /// let block = Box::new_in([7u8; 100], arena);
    /// assert_eq!(arena.stats().unwrap().live_blocks, 1);
    /// std::mem::forget(block); // freed by destroy
    /// // SAFETY: nothing of the arena is used again, no thread is in it.
    /// unsafe { arena.destroy() }.unwrap();
    /// assert_eq!(arena.stats(), Err(ArenaError::StaleHandle));
    /// ```
    ///
    /// # Safety
    /// No block of the arena may be used (or freed) afterwards, and no other
    /// thread may allocate in, free to or enter the arena while this runs.
    pub unsafe fn destroy(self) -> Result<(), ArenaError> {
        // SAFETY: forwarded from the caller.
        if unsafe { engine::arena_destroy(self.handle) } {
            Ok(())
        } else {
            Err(ArenaError::StaleHandle)
        }
    }
}

/// Allocates directly in the arena, without changing the thread's preferred
/// arena (`&Arena` gets this through `allocator_api2`'s impl for references).
///
/// ```
/// use allocator_api2::vec::Vec;
/// use arenalloc::Arena;
///
/// let arena = Arena::new().unwrap();
/// let mut v = Vec::new_in(&arena);
/// v.extend_from_slice(b"kept apart");
/// assert_eq!(Arena::of(v.as_ptr()), Some(arena));
/// ```
// SAFETY: blocks come from the engine with the requested size and alignment,
// stay valid until freed, and any thread may free them; grow and shrink keep
// a block in the arena that owns it.
unsafe impl Allocator for Arena {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let p = engine::arena_alloc(self.handle, layout.size(), layout.align(), false);
        block(p, layout.size())
    }

    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let p = engine::arena_alloc(self.handle, layout.size(), layout.align(), true);
        block(p, layout.size())
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, _layout: Layout) {
        // SAFETY: the Allocator contract: `ptr` is a live block of ours.
        unsafe { engine::free(ptr.as_ptr()) }
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: the Allocator contract: `ptr` is live with `old_layout`.
        unsafe { self.resize(ptr, old_layout, new_layout) }
    }

    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: as for `grow`.
        unsafe { self.resize(ptr, old_layout, new_layout) }
    }
}

impl Arena {
    /// `realloc` for the `Allocator` impl: in place when the block has room,
    /// else a new block in the same arena.
    ///
    /// # Safety
    /// `ptr` is a live block of this arena with `old_layout`.
    unsafe fn resize(
        &self,
        ptr: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if new_layout.align() > old_layout.align() {
            let new = self.allocate(new_layout)?;
            let keep = old_layout.size().min(new_layout.size());
            // SAFETY: both blocks are live and distinct, `keep` fits both.
            unsafe {
                core::ptr::copy_nonoverlapping(ptr.as_ptr(), new.as_ptr().cast::<u8>(), keep);
                engine::free(ptr.as_ptr());
            }
            return Ok(new);
        }
        // SAFETY: forwarded; realloc keeps the block in the arena that owns it.
        let p =
            unsafe { engine::realloc_aligned(ptr.as_ptr(), new_layout.size(), old_layout.align()) };
        block(p, new_layout.size())
    }
}

fn block(p: *mut u8, size: usize) -> Result<NonNull<[u8]>, AllocError> {
    NonNull::new(p)
        .map(|p| NonNull::slice_from_raw_parts(p, size))
        .ok_or(AllocError)
}

/// Restores the previous preferred arena when dropped.
#[must_use = "the previous arena is restored when the guard is dropped"]
pub struct ArenaGuard {
    previous: engine::ArenaHandle,
    _not_send: PhantomData<*const ()>,
}

impl Drop for ArenaGuard {
    fn drop(&mut self) {
        // The previous arena was live when entered; if it has been destroyed
        // since, the engine refuses it and the thread stays where it is.
        let _ = engine::arena_set(self.previous);
    }
}
