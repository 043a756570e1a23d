//! Dedicated arenas: keep a library's allocations apart from the
//! application's, so the application's freed memory can go back to the OS
//! even while the library keeps a cache.

use core::fmt;
use core::marker::PhantomData;

use arenalloc_engine as engine;

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
