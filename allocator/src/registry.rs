//! The arena registry: every arena lives in a fixed slot of a static table,
//! and programs name arenas by handles that can be checked.
//!
//! A handle is `(generation << 32) | (slot + 1)`: never zero, and a handle
//! whose slot is out of range, free, or of another generation is refused,
//! so a stale or made-up handle gets an error instead of undefined
//! behaviour. Slot 0 is the default arena, live from the start. Slots are
//! never unmapped (the table is in `.bss`: an unused slot costs no memory),
//! so `&'static Arena` references stay valid.

use core::num::NonZeroU64;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::arena::Arena;
use crate::sync::Mutex;

/// Arenas that can exist at once, besides the default one.
pub const MAX_EXTRA_ARENAS: usize = 4096;
const SLOTS: usize = MAX_EXTRA_ARENAS + 1;

struct Slot {
    arena: Arena,
    /// Odd: the slot holds a live arena. Bumped when an arena is created in
    /// it and when it is destroyed, so old handles stop matching.
    generation: AtomicU32,
}

static SLOTS_TABLE: [Slot; SLOTS] = [const {
    Slot {
        arena: Arena::new(),
        generation: AtomicU32::new(0),
    }
}; SLOTS];

/// Slots ever handed out (iteration stops there).
static USED_SLOTS: AtomicUsize = AtomicUsize::new(1);
/// Serialises creation so two threads never take the same slot.
static CREATE_LOCK: Mutex<()> = Mutex::new(());

/// A checked name for an arena.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ArenaHandle(NonZeroU64);

impl ArenaHandle {
    fn new(slot: usize, generation: u32) -> Self {
        let raw = (u64::from(generation) << 32) | (slot as u64 + 1);
        match NonZeroU64::new(raw) {
            Some(v) => ArenaHandle(v),
            None => crate::diag::fatal("arena handle encoding"),
        }
    }

    /// The handle as an integer (for C, where it travels as a pointer).
    pub fn to_raw(self) -> u64 {
        self.0.get()
    }

    /// A handle from an integer; `None` for zero. Validity is checked when
    /// the handle is used.
    pub fn from_raw(raw: u64) -> Option<Self> {
        NonZeroU64::new(raw).map(ArenaHandle)
    }

    fn slot(self) -> usize {
        (self.0.get() & 0xffff_ffff) as usize - 1
    }

    fn generation(self) -> u32 {
        (self.0.get() >> 32) as u32
    }
}

fn is_live(slot: usize, generation: u32) -> bool {
    slot == 0 || generation & 1 == 1
}

/// The default arena.
pub fn default_arena() -> &'static Arena {
    let [default, ..] = &SLOTS_TABLE;
    &default.arena
}

/// The handle of the default arena.
pub fn default_handle() -> ArenaHandle {
    ArenaHandle::new(0, 0)
}

/// Creates an arena; `None` when all slots are taken.
pub fn create() -> Option<ArenaHandle> {
    let _guard = CREATE_LOCK.lock();
    let used = USED_SLOTS.load(Ordering::Relaxed);
    // Reuse a free slot, else take a new one.
    let free_slot = SLOTS_TABLE
        .iter()
        .enumerate()
        .take(used)
        .skip(1)
        .find(|(_, slot)| slot.generation.load(Ordering::Relaxed) & 1 == 0)
        .map(|(i, _)| i);
    let slot = free_slot.or_else(|| (used < SLOTS).then_some(used))?;
    let entry = SLOTS_TABLE.get(slot)?;
    entry.arena.state.lock().open();
    let generation = entry.generation.load(Ordering::Relaxed).wrapping_add(1);
    entry.generation.store(generation, Ordering::Release);
    if slot == used {
        USED_SLOTS.store(used + 1, Ordering::Release);
    }
    Some(ArenaHandle::new(slot, generation))
}

/// Destroys the arena `handle` names (see `arena_destroy`): its handle stops
/// resolving first, then its contents go. False for the default arena or a
/// handle that is not current.
///
/// # Safety
/// No block of the arena is used afterwards, and no thread is inside the
/// allocator for this arena meanwhile.
pub unsafe fn destroy(handle: ArenaHandle) -> bool {
    let _guard = CREATE_LOCK.lock();
    if handle.slot() == 0 {
        return false;
    }
    let (Some(arena), Some(entry)) = (resolve(handle), SLOTS_TABLE.get(handle.slot())) else {
        return false;
    };
    // Even: dead. The slot cannot be reused before we are done (creation
    // takes the lock we hold).
    entry
        .generation
        .store(handle.generation().wrapping_add(1), Ordering::Release);
    // SAFETY: forwarded from the caller.
    unsafe { arena.state.lock().destroy_contents() };
    // The heaps of other threads were reset with plain stores; make every
    // thread see that before its next allocation.
    let _ = crate::os::membarrier();
    true
}

/// The arena a handle names, if the handle is current.
#[inline]
pub fn resolve(handle: ArenaHandle) -> Option<&'static Arena> {
    let slot = SLOTS_TABLE.get(handle.slot())?;
    let generation = slot.generation.load(Ordering::Acquire);
    (generation == handle.generation() && is_live(handle.slot(), generation)).then_some(&slot.arena)
}

/// The handle of a live arena.
pub fn handle_of(arena: &'static Arena) -> ArenaHandle {
    let base = SLOTS_TABLE.as_ptr() as usize;
    let index = (arena as *const Arena as usize - base) / core::mem::size_of::<Slot>();
    match SLOTS_TABLE.get(index) {
        Some(slot) => ArenaHandle::new(index, slot.generation.load(Ordering::Acquire)),
        None => crate::diag::fatal("arena outside the registry"),
    }
}

/// Calls `f` for every live arena.
pub fn for_each_arena(mut f: impl FnMut(&'static Arena)) {
    let used = USED_SLOTS.load(Ordering::Acquire).min(SLOTS);
    for (i, slot) in SLOTS_TABLE.iter().enumerate().take(used) {
        if is_live(i, slot.generation.load(Ordering::Acquire)) {
            f(&slot.arena);
        }
    }
}

/// Fork support: creation must not be under way across `fork`.
pub fn create_lock() -> &'static Mutex<()> {
    &CREATE_LOCK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_never_zero() {
        let h = ArenaHandle::new(0, 0);
        assert_eq!(h.to_raw(), 1);
        let h = ArenaHandle::new(4096, 7);
        assert_eq!(ArenaHandle::from_raw(h.to_raw()), Some(h));
        assert_eq!(h.slot(), 4096);
        assert_eq!(h.generation(), 7);
        assert_eq!(ArenaHandle::from_raw(0), None);
    }

    #[test]
    fn default_arena_is_live_and_foreign_handles_are_refused() {
        assert!(core::ptr::eq(
            resolve(default_handle()).unwrap(),
            default_arena()
        ));
        assert_eq!(handle_of(default_arena()), default_handle());
        // Out of range, and a free slot.
        assert!(resolve(ArenaHandle::new(SLOTS + 5, 1)).is_none());
        assert!(resolve(ArenaHandle::new(SLOTS - 1, 2)).is_none());
    }

    #[test]
    fn created_arenas_resolve_with_their_generation_only() {
        let h = create().expect("a free slot");
        let arena = resolve(h).expect("live");
        assert_eq!(handle_of(arena), h);
        let wrong = ArenaHandle::new(h.slot(), h.generation() + 2);
        assert!(resolve(wrong).is_none());
        let mut seen = false;
        for_each_arena(|a| seen |= core::ptr::eq(a, arena));
        assert!(seen);
    }
}
