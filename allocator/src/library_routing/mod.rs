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

use core::ffi::{c_char, c_void, CStr};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::diag::Line;
use crate::os;
use crate::registry::ArenaHandle;
use crate::sync::Mutex;
use loaded_object::{for_each_loaded, LoadedObject};

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
    // Start-up: one thread, every object relocated, none being loaded.
    rescan(LoadGuard::NotNeeded);
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

/// Calls `each(path, arena)` for every object routed so far (loaded now or
/// not).
pub fn for_each_routed(mut each: impl FnMut(&[u8], ArenaHandle)) {
    let routes = ROUTES.lock();
    for (object, arena) in routes.objects().zip(&ARENAS) {
        if let Some(handle) = ArenaHandle::from_raw(arena.load(Ordering::Relaxed)) {
            each(object.path(), handle);
        }
    }
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
    if name.contains(&b'/') {
        return true;
    }
    let mut independent = true;
    for_each_loaded(|object| {
        if object.contains(caller) && object.has_search_path() {
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
/// (0: nothing was switched). `errno` is left as it was.
#[inline]
fn switch_to(slot: usize) -> u64 {
    let raw = ARENAS.get(slot).map_or(0, |a| a.load(Ordering::Relaxed));
    let Some(arena) = ArenaHandle::from_raw(raw) else {
        return 0;
    };
    let errno = os::errno();
    let previous = crate::arena_set(arena).map_or(0, ArenaHandle::to_raw);
    os::set_errno(errno);
    previous
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

/// The C side (`routed_libc.c`).
#[repr(C)]
struct RoutingHooks {
    enter: Option<extern "C" fn(u32) -> u64>,
    leave: Option<extern "C" fn(u64)>,
}

#[repr(C)]
struct RoutedFunction {
    name: *const c_char,
    stand_in: [*const c_void; MAX_ROUTED_OBJECTS],
}

unsafe extern "C" {
    static mut arenalloc_routing_hooks: RoutingHooks;
    static arenalloc_routed_libc: [RoutedFunction; 0];
    static arenalloc_routed_libc_count: usize;
    static arenalloc_routed_slots: usize;
    static mut arenalloc_operator_new: [*mut c_void; 8];
    static arenalloc_operator_new_names: [*const c_char; 8];
}

/// The C library stand-ins, as a slice.
fn libc_stand_ins() -> &'static [RoutedFunction] {
    // SAFETY: routed_libc.c defines the array with this many entries; it is
    // constant data.
    unsafe {
        core::slice::from_raw_parts(
            core::ptr::addr_of!(arenalloc_routed_libc).cast::<RoutedFunction>(),
            arenalloc_routed_libc_count,
        )
    }
}

/// The stand-in for `name` in `slot`, if it is one we route.
fn stand_in_for(name: &[u8], slot: usize) -> Option<usize> {
    if let Some(address) = routed_calls::stand_in(name, slot) {
        return Some(address);
    }
    libc_stand_ins().iter().find_map(|f| {
        // SAFETY: each entry's name is a string literal of the C file.
        let stand_in_name = unsafe { CStr::from_ptr(f.name) }.to_bytes();
        if stand_in_name == name {
            f.stand_in.get(slot).map(|&address| address as usize)
        } else {
            None
        }
    })
}

/// Sets the C stand-ins' hooks and finds the C++ operators they call on.
/// Under the routes lock, before any stand-in is written into a GOT.
fn install_hooks(routes: &mut Routes) {
    if !routes.hooks_installed {
        // SAFETY: constant data of routed_libc.c.
        let c_slots = unsafe { arenalloc_routed_slots };
        if c_slots != MAX_ROUTED_OBJECTS {
            crate::diag::fatal("library routing: routed_libc.c has another slot count");
        }
        // SAFETY: written once under the routes lock, before any stand-in
        // that reads it can be reached (none is in a GOT yet).
        unsafe {
            core::ptr::addr_of_mut!(arenalloc_routing_hooks).write(RoutingHooks {
                enter: Some(enter),
                leave: Some(leave),
            });
        }
        routes.hooks_installed = true;
    }
    // SAFETY: constant data of routed_libc.c.
    let names = unsafe { &*core::ptr::addr_of!(arenalloc_operator_new_names) };
    let entries = core::ptr::addr_of_mut!(arenalloc_operator_new).cast::<*mut c_void>();
    for (i, &name) in names.iter().enumerate() {
        // SAFETY: `i` is below the array's length (both arrays have 8
        // entries); under the routes lock; a C++ stand-in reads its entry
        // only after it was put in a GOT, which happens after this write,
        // and a found address never changes.
        unsafe {
            let entry = entries.add(i);
            if entry.read().is_null() {
                entry.write(libc::dlsym(libc::RTLD_DEFAULT, name));
            }
        }
    }
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

fn load_counts() -> u64 {
    let (adds, subs) = for_each_loaded(|_| {});
    adds.wrapping_mul(0x1_0000_0001) ^ subs
}

/// Whether to wait for the dynamic linker before rewriting an object.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LoadGuard {
    /// Start-up: nothing is being loaded.
    NotNeeded,
    /// An object listed may still be under relocation by another thread's
    /// `dlopen` (the dynamic linker lists it before relocating it): take a
    /// reference with `dlopen(RTLD_NOLOAD)`, which waits for loads in
    /// progress, before touching it.
    WaitForLoads,
}

/// Finds the loaded objects the patterns name and rewrites their words.
fn rescan(guard: LoadGuard) {
    let own_code = rescan as *const () as usize;
    // 1. Under the lock: which loaded objects are named, and their slots.
    let mut wanted = [false; MAX_ROUTED_OBJECTS];
    {
        let mut routes = ROUTES.lock();
        install_hooks(&mut routes);
        routes.objects.iter_mut().for_each(|o| o.loaded = false);
        let counts = for_each_loaded(|object| routes.claim_slot(object, own_code, &mut wanted));
        LAST_LOAD_COUNTS.store(
            counts.0.wrapping_mul(0x1_0000_0001) ^ counts.1,
            Ordering::Relaxed,
        );
    }
    // 2. Without the lock (a load in progress may itself call into us): wait
    //    for loads in progress by taking a reference to each named object.
    let mut references = [core::ptr::null_mut::<c_void>(); MAX_ROUTED_OBJECTS];
    if guard == LoadGuard::WaitForLoads {
        for (slot, (wanted, reference)) in wanted.iter_mut().zip(&mut references).enumerate() {
            if *wanted {
                // One byte more than any path: always NUL-terminated.
                let mut path = [0u8; PATH_BYTES + 1];
                if let Some(object) = ROUTES.lock().objects.get(slot) {
                    copy_prefix(&mut path[..PATH_BYTES], object.path());
                }
                // SAFETY: `path` is NUL-terminated; RTLD_NOLOAD loads
                // nothing, it only takes a reference if the object is loaded.
                *reference = unsafe {
                    libc::dlopen(path.as_ptr().cast(), libc::RTLD_NOLOAD | libc::RTLD_LAZY)
                };
                *wanted = !reference.is_null();
            }
        }
    }
    // 3. Under the lock: rewrite the words of each named, fully loaded object.
    {
        let mut routes = ROUTES.lock();
        for_each_loaded(|object| {
            let slot = routes.slot_of(object.path);
            if let Some(wanted) = slot.and_then(|slot| wanted.get_mut(slot)) {
                if core::mem::take(wanted) {
                    routes.rewrite(object, slot.unwrap_or(0));
                }
            }
        });
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
    fn claim_slot(
        &mut self,
        object: &LoadedObject<'_>,
        own_code: usize,
        wanted: &mut [bool; MAX_ROUTED_OBJECTS],
    ) {
        let mut named_by = None;
        for (i, p) in self.patterns().enumerate() {
            if pattern::names_object(p.text(), object.path) {
                named_by = Some(i);
                break;
            }
        }
        let Some(pattern_index) = named_by else {
            return;
        };
        if object.contains(own_code) || is_system_runtime(object.file_name()) {
            self.report_refusal(
                object.path,
                "it is the C library, the dynamic linker or arenalloc",
            );
            return;
        }
        let slot = match self.slot_of(object.path) {
            Some(slot) => slot,
            None => match self.new_slot(object.path) {
                Some(slot) => slot,
                None => {
                    self.report_refusal(object.path, "32 objects are routed already");
                    return;
                }
            },
        };
        let Some(pattern) = self.patterns.get_mut(pattern_index) else {
            return;
        };
        if !pattern.matched {
            pattern.matched = true;
            if pattern.from_environment && LAST_LOAD_COUNTS.load(Ordering::Relaxed) != 0 {
                Line::new()
                    .text("arenalloc: ARENALLOC_LIBRARY_ARENAS: '")
                    .bytes(pattern.text())
                    .text("' now matches ")
                    .bytes(object.path)
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

    /// Rewrites every word of `object` that reaches a routed function.
    fn rewrite(&mut self, object: &LoadedObject<'_>, slot: usize) {
        let (mut rewritten, mut failed) = (0usize, 0usize);
        object.for_each_function_word(|name, word, _kind| {
            let Some(stand_in) = stand_in_for(name, slot) else {
                return;
            };
            match got_patch::write_word(object, word, stand_in) {
                Ok(true) => rewritten += 1,
                Ok(false) => {}
                Err(_) => failed += 1,
            }
        });
        if failed > 0 {
            Line::new()
                .text("arenalloc: could not route ")
                .num(failed)
                .text(" calls of ")
                .bytes(object.path)
                .text(" (memory protection refused)\n")
                .emit();
        }
        if rewritten > 0 && VERBOSE.load(Ordering::Relaxed) {
            Line::new()
                .text("arenalloc: routing ")
                .bytes(object.path)
                .text(" to arena ")
                .hex(ARENAS.get(slot).map_or(0, |a| a.load(Ordering::Relaxed)) as usize)
                .text(" (")
                .num(rewritten)
                .text(" calls rewritten)\n")
                .emit();
        }
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
