//! Library arenas with no code change: what code inside a named shared
//! object allocates goes to an arena of that object's own, from every
//! thread, while everything else stays in the thread's preferred arena.
//!
//! How: the object's relocated words for `malloc` and its family (PLT and
//! GOT entries, data pointers such as `void *(*alloc)(size_t) = malloc`) and
//! for the C library's allocating functions (`strdup`, `getline`, `fopen`,
//! ...) are rewritten to stand-ins that switch the calling thread to the
//! object's arena around the call. Only routed objects pay: the `malloc`
//! everyone else calls is untouched. `docs/design.md` says why this and not
//! `LD_AUDIT` or a caller check in `malloc`.
//!
//! When: once at start-up (from the C ABI's constructor, which runs before
//! every other object's), after each `dlopen` the C ABI sees, on
//! [`route_library`], and from the housekeeper when the dynamic linker's
//! count of loaded objects has changed. Rewriting is idempotent, so a rescan
//! repairs what a concurrent lazy binding may have undone.
//!
//! This works only where this engine is the process's `malloc` (the C ABI
//! preloaded or linked in): the C library's functions, and `free` in a
//! routed object, must reach the same allocator as the stand-ins.

mod got_patch;
mod loaded_object;
mod pattern;
mod routed_calls;
mod stand_ins;

use core::ffi::{c_void, CStr};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::diag::Line;
use crate::os;
use crate::registry::ArenaHandle;
use crate::sync::Mutex;
use loaded_object::{for_each_loaded, LoadedObject, SlotKind};
use stand_ins::Globals;

/// Routed objects at most (the `malloc` stand-ins exist once per slot).
pub const MAX_ROUTED_OBJECTS: usize = 32;
const MAX_PATTERNS: usize = 16;
const PATTERN_BYTES: usize = 256;
const PATH_BYTES: usize = 256;

/// Each slot's arena (raw handle), read by the stand-ins without a lock.
static ARENAS: [AtomicU64; MAX_ROUTED_OBJECTS] = [const { AtomicU64::new(0) }; MAX_ROUTED_OBJECTS];
/// Whether any pattern is set (then loads are watched).
static ACTIVE: AtomicBool = AtomicBool::new(false);
static VERBOSE: AtomicBool = AtomicBool::new(false);
/// Set once the start-up routing is done: a pattern first matched after
/// it is reported as matching a library loaded later.
static START_UP_DONE: AtomicBool = AtomicBool::new(false);
/// The dynamic linker's load and unload counts at the last rescan.
static LAST_LOAD_COUNTS: AtomicU64 = AtomicU64::new(0);

/// Why a pattern was not taken.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RouteError {
    /// Empty, longer than 255 bytes, or containing a `,`.
    BadPattern,
    /// 16 patterns are set already.
    TooManyPatterns,
    /// The process's `malloc` is not this allocator, so the C library would
    /// free routed blocks with another one.
    NotProcessMalloc,
}

struct Pattern {
    text: [u8; PATTERN_BYTES],
    len: usize,
    /// Whether it has named a loaded object yet (a pattern that never has is
    /// reported once, and again when a later load matches it).
    matched: bool,
    from_environment: bool,
}

impl Pattern {
    fn text(&self) -> &[u8] {
        self.text.get(..self.len).unwrap_or(&[])
    }
}

struct RoutedObject {
    path: [u8; PATH_BYTES],
    len: usize,
    /// Seen loaded by the current rescan.
    loaded: bool,
}

impl RoutedObject {
    fn path(&self) -> &[u8] {
        self.path.get(..self.len).unwrap_or(&[])
    }
}

struct Routes {
    patterns: [Pattern; MAX_PATTERNS],
    pattern_count: usize,
    objects: [RoutedObject; MAX_ROUTED_OBJECTS],
    object_count: usize,
    /// A refusal (too many objects, the C library) already reported.
    refusals_reported: bool,
    hooks_installed: bool,
}

static ROUTES: Mutex<Routes> = Mutex::new(Routes {
    patterns: [const {
        Pattern {
            text: [0; PATTERN_BYTES],
            len: 0,
            matched: false,
            from_environment: false,
        }
    }; MAX_PATTERNS],
    pattern_count: 0,
    objects: [const {
        RoutedObject {
            path: [0; PATH_BYTES],
            len: 0,
            loaded: false,
        }
    }; MAX_ROUTED_OBJECTS],
    object_count: 0,
    refusals_reported: false,
    hooks_installed: false,
});

/// The patterns of `ARENALLOC_LIBRARY_ARENAS` (comma-separated), applied to
/// the objects loaded at start-up. Called once, by the C ABI's constructor,
/// before any other object's constructor runs; patterns that name nothing
/// yet are reported on stderr.
pub fn route_from_environment(list: &[u8], verbose: bool) {
    VERBOSE.store(verbose, Ordering::Relaxed);
    if !process_malloc_is_this_engine() {
        Line::new()
            .text(
                "arenalloc: ARENALLOC_LIBRARY_ARENAS ignored: arenalloc is not this process's \
                   malloc (another allocator is preloaded before it)\n",
            )
            .emit();
        return;
    }
    {
        let mut routes = ROUTES.lock();
        for pattern in list.split(|&b| b == b',') {
            let pattern = pattern.trim_ascii();
            if pattern.is_empty() {
                continue;
            }
            if let Err(error) = routes.add_pattern(pattern, true) {
                report_bad_pattern(pattern, error);
            }
        }
    }
    // From the C ABI's constructor: at start-up (all objects relocated, no
    // other thread), or inside the `dlopen` that loads this library (which
    // holds the dynamic linker's load lock, so nothing else is loading).
    // A reference with RTLD_NOLOAD would run constructors that have not run
    // yet, before their object is rewritten: not taken here.
    rescan(LoadGuard::NotNeeded);
    START_UP_DONE.store(true, Ordering::Relaxed);
    let routes = ROUTES.lock();
    for p in routes.patterns() {
        if !p.matched {
            Line::new()
                .text("arenalloc: ARENALLOC_LIBRARY_ARENAS: no loaded object matches '")
                .bytes(p.text())
                .text("' (a library loaded later that matches it will be routed)\n")
                .emit();
        }
    }
}

/// Routes the objects `pattern` names, now and when loaded later, each to
/// an arena of its own. Returns how many loaded objects it names now.
pub fn route_library(pattern: &[u8]) -> Result<usize, RouteError> {
    if !process_malloc_is_this_engine() {
        return Err(RouteError::NotProcessMalloc);
    }
    ROUTES.lock().add_pattern(pattern, false)?;
    rescan(LoadGuard::WaitForLoads);
    let routes = ROUTES.lock();
    let named = routes
        .objects()
        .filter(|o| o.loaded && pattern::names_object(pattern, o.path()))
        .count();
    Ok(named)
}

/// After a `dlopen` returned: route what it loaded.
pub fn after_dlopen() {
    if ACTIVE.load(Ordering::Acquire) {
        rescan(LoadGuard::WaitForLoads);
    }
}

/// For the housekeeper: rescan if objects were loaded or unloaded since the
/// last rescan (a `dlopen` the C ABI did not see, or this engine linked
/// into a program without the C ABI's `dlopen`).
pub fn poll() {
    if ACTIVE.load(Ordering::Acquire) && load_counts() != LAST_LOAD_COUNTS.load(Ordering::Relaxed) {
        rescan(LoadGuard::WaitForLoads);
    }
}

/// Fork: the routing lock is held across `fork` (taken before every
/// allocator lock: a rescan holds it while it creates arenas).
pub fn lock_for_fork() {
    ROUTES.raw_lock();
}

/// # Safety
/// After [`lock_for_fork`] on this thread, in the parent or the child.
pub unsafe fn unlock_after_fork() {
    // SAFETY: the caller's contract.
    unsafe { ROUTES.force_unlock() };
}

/// Whether any pattern is set.
pub fn active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

/// Whether `handle` is a routed object's arena (which must not be
/// destroyed: the object's stand-ins keep allocating in it).
pub fn is_routed_arena(handle: ArenaHandle) -> bool {
    let raw = handle.to_raw();
    ARENAS.iter().any(|a| a.load(Ordering::Relaxed) == raw)
}

/// Calls `each(path)` with the object routed to `arena`, if any. Skips (and
/// says nothing) while a rescan holds the routing lock: for reports that
/// must not wait, such as the exit summary.
pub fn routed_object_of(arena: ArenaHandle, each: impl FnOnce(&[u8])) {
    let raw = arena.to_raw();
    let Some(slot) = ARENAS.iter().position(|a| a.load(Ordering::Relaxed) == raw) else {
        return;
    };
    if let Some(routes) = ROUTES.try_lock() {
        if let Some(object) = routes.objects().nth(slot) {
            each(object.path());
        }
    }
}

/// Whether a `dlopen(name)` called from `caller` opens the same object when
/// called from this allocator instead (so the C ABI may call it itself and
/// route what it loads): true unless the name is searched for (no `/`) and
/// the caller's object has its own search path, or names `$ORIGIN`-style
/// tokens, which depend on who calls.
pub fn dlopen_is_caller_independent(name: Option<&CStr>, caller: usize) -> bool {
    let Some(name) = name else {
        return true;
    };
    let name = name.to_bytes();
    if name.contains(&b'$') {
        return false;
    }
    let searched = !name.contains(&b'/');
    let mut independent = true;
    for_each_loaded(|object| {
        // A DT_RPATH anywhere may be on the caller's loader chain (and the
        // new object's dependencies are searched through its loader's).
        if object.has_rpath() || (searched && object.contains(caller) && object.has_runpath()) {
            independent = false;
        }
    });
    independent
}

/// Runs `call` with the calling thread switched to `slot`'s arena.
#[inline(always)]
fn in_route_arena<R>(slot: usize, call: impl FnOnce() -> R) -> R {
    let previous = switch_to(slot);
    let result = call();
    switch_back(previous);
    result
}

/// Switches to `slot`'s arena; returns the raw handle to switch back to
/// (0: nothing was switched). It may change `errno` only if the switch
/// fails (no memory for the thread's heap in the arena), before the routed
/// function runs: C lets a successful call change `errno`, and the call's
/// own `errno` is what `switch_back` keeps.
#[inline]
fn switch_to(slot: usize) -> u64 {
    let raw = ARENAS.get(slot).map_or(0, |a| a.load(Ordering::Relaxed));
    let Some(arena) = ArenaHandle::from_raw(raw) else {
        return 0;
    };
    crate::arena_set(arena).map_or(0, ArenaHandle::to_raw)
}

#[inline]
fn switch_back(previous: u64) {
    if let Some(arena) = ArenaHandle::from_raw(previous) {
        let errno = os::errno();
        crate::arena_set(arena);
        os::set_errno(errno);
    }
}

/// The C stand-ins' way in.
extern "C" fn enter(slot: u32) -> u64 {
    match usize::try_from(slot) {
        Ok(slot) if slot < MAX_ROUTED_OBJECTS => switch_to(slot),
        _ => 0,
    }
}

extern "C" fn leave(previous: u64) {
    switch_back(previous);
}

/// Whether `malloc` as the C library and every other object call it is this
/// engine's.
fn process_malloc_is_this_engine() -> bool {
    // SAFETY: dlsym with NUL-terminated names; RTLD_DEFAULT is the global
    // scope.
    let (malloc, free) = unsafe {
        (
            libc::dlsym(libc::RTLD_DEFAULT, c"malloc".as_ptr()),
            libc::dlsym(libc::RTLD_DEFAULT, c"free".as_ptr()),
        )
    };
    if malloc.is_null() || free.is_null() {
        return false;
    }
    type Malloc = extern "C" fn(usize) -> *mut c_void;
    type Free = unsafe extern "C" fn(*mut c_void);
    // SAFETY: the global `malloc` and `free` have the C signatures.
    let (malloc, free) = unsafe {
        (
            core::mem::transmute::<*mut c_void, Malloc>(malloc),
            core::mem::transmute::<*mut c_void, Free>(free),
        )
    };
    let probe = malloc(16);
    let ours = crate::owns(probe.cast());
    // SAFETY: `probe` came from the matching malloc.
    unsafe { free(probe) };
    ours
}

/// The dynamic linker's load and unload counts, as one number that
/// changes with either.
fn load_counts() -> u64 {
    combined_counts(for_each_loaded(|_| {}))
}

fn combined_counts((adds, subs): (u64, u64)) -> u64 {
    adds.wrapping_mul(0x1_0000_0001) ^ subs
}

/// Whether to wait for the dynamic linker before rewriting an object.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LoadGuard {
    /// Nothing is being loaded by another thread (see
    /// `route_from_environment`).
    NotNeeded,
    /// An object listed may still be under relocation by another thread's
    /// `dlopen` (the dynamic linker lists it before relocating it): take a
    /// reference with `dlopen(RTLD_NOLOAD)`, which waits for loads in
    /// progress, before touching it.
    WaitForLoads,
}

/// An object a pattern named in this rescan, copied out of the dynamic
/// linker's callback (nothing that can block is done inside it).
struct Named {
    path: [u8; PATH_BYTES],
    len: usize,
    pattern: usize,
    refused: Option<&'static str>,
}

impl Named {
    fn path(&self) -> &[u8] {
        self.path.get(..self.len).unwrap_or(&[])
    }
}

/// Finds the loaded objects the patterns name and rewrites their words.
///
/// The order of locks: the dynamic linker's load lock (taken by `dlsym`
/// and `dlopen`) is never taken while the routing lock is held, since a
/// constructor running under the load lock may call into the routing
/// (`dlopen`, `malloc_route_library`).
#[link_section = "arenalloc_cold"]
fn rescan(guard: LoadGuard) {
    let own_code = rescan as *const () as usize;
    // 0. No lock: what each routed name resolves to in the global scope.
    let globals = stand_ins::resolve_globals();
    // 1. Which loaded objects the patterns name: copied out of the dynamic
    //    linker's callback, then given slots under the routing lock.
    let mut named = [const {
        Named {
            path: [0; PATH_BYTES],
            len: 0,
            pattern: 0,
            refused: None,
        }
    }; MAX_ROUTED_OBJECTS];
    let mut named_count = 0;
    let mut overflow = false;
    {
        let routes = ROUTES.lock();
        let counts = for_each_loaded(|object| {
            let Some(pattern) = routes
                .patterns()
                .position(|p| pattern::names_object(p.text(), object.path))
            else {
                return;
            };
            let Some(entry) = named.get_mut(named_count) else {
                overflow = true;
                return;
            };
            entry.len = copy_prefix(&mut entry.path, object.path);
            entry.pattern = pattern;
            entry.refused = if object.contains(own_code) || is_system_runtime(object.file_name()) {
                Some("it is the C library, the dynamic linker or arenalloc")
            } else if object.path.len() > PATH_BYTES {
                Some("its path is longer than 256 bytes")
            } else {
                None
            };
            named_count += 1;
        });
        LAST_LOAD_COUNTS.store(combined_counts(counts), Ordering::Relaxed);
    }
    let mut wanted = [false; MAX_ROUTED_OBJECTS];
    {
        let mut routes = ROUTES.lock();
        if !routes.hooks_installed {
            stand_ins::install_hooks(enter, leave);
            routes.hooks_installed = true;
        }
        routes.objects.iter_mut().for_each(|o| o.loaded = false);
        for entry in named.iter().take(named_count) {
            routes.claim_slot(entry, &mut wanted);
        }
        if overflow {
            routes.report_refusal(b"more objects", "32 objects are routed already");
        }
    }
    // 2. No lock: unless at start-up, take a reference to each named object
    //    with RTLD_NOLOAD, which waits for loads in progress (the dynamic
    //    linker lists an object before it relocates it) and keeps it loaded
    //    until step 3; find its C++ operators (in its own scope too).
    let mut references = [core::ptr::null_mut::<c_void>(); MAX_ROUTED_OBJECTS];
    for (slot, (wanted, reference)) in wanted.iter_mut().zip(&mut references).enumerate() {
        if !*wanted {
            continue;
        }
        // One byte more than any path: always NUL-terminated.
        let mut path = [0u8; PATH_BYTES + 1];
        if let Some(object) = ROUTES.lock().objects.get(slot) {
            copy_prefix(&mut path[..PATH_BYTES], object.path());
        }
        if guard == LoadGuard::WaitForLoads {
            // SAFETY: `path` is NUL-terminated; RTLD_NOLOAD loads nothing,
            // it only takes a reference if the object is loaded.
            *reference =
                unsafe { libc::dlopen(path.as_ptr().cast(), libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
            *wanted = !reference.is_null();
        }
        if *wanted {
            stand_ins::find_operators(slot, *reference, &globals);
        }
    }
    // 3. Under the routing lock: rewrite the words of each named, fully
    //    loaded object.
    let mut done = [Rewrites::default(); MAX_ROUTED_OBJECTS];
    {
        let routes = ROUTES.lock();
        for_each_loaded(|object| {
            let Some(slot) = routes.slot_of(object.path) else {
                return;
            };
            if let (Some(wanted), Some(done)) = (wanted.get_mut(slot), done.get_mut(slot)) {
                if core::mem::take(wanted) {
                    *done = routes.rewrite(object, slot, &globals);
                }
            }
        });
        // Reported outside the dynamic linker's callback.
        for ((object, done), arena) in routes.objects().zip(&done).zip(&ARENAS) {
            done.report(object.path(), arena.load(Ordering::Relaxed));
        }
    }
    for reference in references.into_iter().filter(|r| !r.is_null()) {
        // SAFETY: a reference taken above and not dropped yet.
        unsafe { libc::dlclose(reference) };
    }
}

impl Routes {
    fn add_pattern(&mut self, pattern: &[u8], from_environment: bool) -> Result<(), RouteError> {
        if pattern.is_empty() || pattern.len() >= PATTERN_BYTES || pattern.contains(&b',') {
            return Err(RouteError::BadPattern);
        }
        if self.patterns().any(|p| p.text() == pattern) {
            return Ok(());
        }
        let Some(free) = self.patterns.get_mut(self.pattern_count) else {
            return Err(RouteError::TooManyPatterns);
        };
        free.len = copy_prefix(&mut free.text, pattern);
        free.matched = false;
        free.from_environment = from_environment;
        self.pattern_count += 1;
        ACTIVE.store(true, Ordering::Release);
        crate::housekeeping::set_after_pass(poll);
        Ok(())
    }

    fn patterns(&self) -> impl Iterator<Item = &Pattern> {
        self.patterns.iter().take(self.pattern_count)
    }

    fn objects(&self) -> impl Iterator<Item = &RoutedObject> {
        self.objects.iter().take(self.object_count)
    }

    fn slot_of(&self, path: &[u8]) -> Option<usize> {
        self.objects().position(|o| o.path() == path)
    }

    /// If a pattern names `object`, marks its slot (made, with its arena,
    /// the first time) as loaded and wanted.
    /// Gives a named object its slot (made, with its arena, the first
    /// time) and marks it loaded and wanted; reports a refusal.
    fn claim_slot(&mut self, named: &Named, wanted: &mut [bool; MAX_ROUTED_OBJECTS]) {
        if let Some(why) = named.refused {
            self.report_refusal(named.path(), why);
            return;
        }
        let slot = match self.slot_of(named.path()) {
            Some(slot) => slot,
            None => match self.new_slot(named.path()) {
                Some(slot) => slot,
                None => {
                    self.report_refusal(named.path(), "32 objects are routed already");
                    return;
                }
            },
        };
        let Some(pattern) = self.patterns.get_mut(named.pattern) else {
            return;
        };
        if !pattern.matched {
            pattern.matched = true;
            if pattern.from_environment && START_UP_DONE.load(Ordering::Relaxed) {
                Line::new()
                    .text("arenalloc: ARENALLOC_LIBRARY_ARENAS: '")
                    .bytes(pattern.text())
                    .text("' now matches ")
                    .bytes(named.path())
                    .text(" (loaded after start-up)\n")
                    .emit();
            }
        }
        if let (Some(routed), Some(wanted)) = (self.objects.get_mut(slot), wanted.get_mut(slot)) {
            routed.loaded = true;
            *wanted = true;
        }
    }

    fn new_slot(&mut self, path: &[u8]) -> Option<usize> {
        let slot = self.object_count;
        let (Some(object), Some(arena_of_slot)) = (self.objects.get_mut(slot), ARENAS.get(slot))
        else {
            return None;
        };
        if path.len() > PATH_BYTES {
            return None;
        }
        let arena = crate::arena_new()?;
        object.len = copy_prefix(&mut object.path, path);
        arena_of_slot.store(arena.to_raw(), Ordering::Release);
        self.object_count += 1;
        Some(slot)
    }

    /// Rewrites every word of `object` that still holds what the dynamic
    /// linker put there for a routed function: the global definition, or,
    /// for a PLT entry not bound yet, the object's own PLT stub. A word
    /// holding anything else (a hook the program installed, another
    /// version of the function, another tool's rewrite) is left alone.
    fn rewrite(&self, object: &LoadedObject<'_>, slot: usize, globals: &Globals) -> Rewrites {
        let mut counts = Rewrites::default();
        object.for_each_function_word(|name, word, kind| {
            let Some(id) = stand_ins::id_of(name) else {
                return;
            };
            let Some(stand_in) = stand_ins::stand_in(id, slot) else {
                return;
            };
            let Ok(current) = got_patch::read_word(object, word) else {
                counts.failed += 1;
                return;
            };
            if current == stand_in {
                return;
            }
            let untouched = stand_ins::original(id, slot, globals) == Some(current)
                || (kind == SlotKind::PltCall && object.contains(current));
            if !untouched {
                counts.left += 1;
                return;
            }
            match got_patch::write_word(object, word, stand_in) {
                Ok(true) => counts.rewritten += 1,
                Ok(false) => {}
                Err(_) => counts.failed += 1,
            }
        });
        counts
    }

    fn report_refusal(&mut self, path: &[u8], why: &str) {
        if !self.refusals_reported {
            Line::new()
                .text("arenalloc: not routing ")
                .bytes(path)
                .text(": ")
                .text(why)
                .text("\n")
                .emit();
        }
        self.refusals_reported = true;
    }
}

/// What one rewrite of an object did.
#[derive(Clone, Copy, Default)]
struct Rewrites {
    rewritten: usize,
    /// Words holding something other than what the dynamic linker put
    /// there.
    left: usize,
    /// Words `mprotect` would not let us write.
    failed: usize,
}

impl Rewrites {
    fn report(&self, path: &[u8], arena: u64) {
        if self.failed > 0 {
            Line::new()
                .text("arenalloc: could not route ")
                .num(self.failed)
                .text(" calls of ")
                .bytes(path)
                .text(" (memory protection refused)\n")
                .emit();
        }
        if self.rewritten > 0 && VERBOSE.load(Ordering::Relaxed) {
            Line::new()
                .text("arenalloc: routing ")
                .bytes(path)
                .text(" to arena ")
                .hex(arena as usize)
                .text(" (")
                .num(self.rewritten)
                .text(" calls rewritten, ")
                .num(self.left)
                .text(" left: they reach another definition)\n")
                .emit();
        }
    }
}

/// Copies as much of `from` as fits to the start of `to`; how much.
fn copy_prefix(to: &mut [u8], from: &[u8]) -> usize {
    let mut copied = 0;
    for (to, &from) in to.iter_mut().zip(from) {
        *to = from;
        copied += 1;
    }
    copied
}

/// Objects whose allocations are everyone's: routing them would route the
/// whole process.
fn is_system_runtime(file_name: &[u8]) -> bool {
    file_name.starts_with(b"libc.so")
        || file_name.starts_with(b"ld-linux")
        || file_name.starts_with(b"linux-vdso")
        || file_name.starts_with(b"libarenalloc")
}

fn report_bad_pattern(pattern: &[u8], error: RouteError) {
    let why = match error {
        RouteError::BadPattern => "empty or longer than 255 bytes",
        RouteError::TooManyPatterns => "more than 16 patterns",
        RouteError::NotProcessMalloc => "arenalloc is not this process's malloc",
    };
    Line::new()
        .text("arenalloc: ARENALLOC_LIBRARY_ARENAS: ignoring '")
        .bytes(pattern)
        .text("': ")
        .text(why)
        .text("\n")
        .emit();
}
