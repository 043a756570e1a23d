//! The arena registry: every arena lives in a fixed slot of a static table,
//! and programs name arenas by handles that can be checked.
//!
//! A handle is `(tag << 13) | (slot + 1)`: never zero. The 51-bit tag names
//! one life of the slot: a keyed permutation of a process-wide count of
//! arenas created, so tags never repeat (no wrap-around brings a stale
//! handle back to life) and cannot be guessed without the per-process secret
//! (a program cannot name an arena it was never given). A slot keeps its
//! live handle; a handle is accepted only if it equals that, one load and
//! one compare. Slot 0 is the default arena, handle 1, live from the start.
//! Slots are never unmapped (the table is in `.bss`: an unused slot costs
//! no memory), so `&'static Arena` references stay valid.
//!
//! A handle checked without the arena's lock may go stale before the lock
//! is taken; the arena state keeps the handle of its current life, and
//! [`lock_live`] checks it again under the lock.

use core::num::NonZeroU64;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::arena::{Arena, ArenaState};
use crate::stats::{ArenaStats, Stats};
use crate::sync::{Mutex, MutexGuard};

/// Arenas that can exist at once, besides the default one.
pub const MAX_EXTRA_ARENAS: usize = 4096;
const SLOTS: usize = MAX_EXTRA_ARENAS + 1;
/// Low bits of a handle: the slot plus one.
const SLOT_BITS: u32 = 13;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
const TAG_BITS: u32 = 64 - SLOT_BITS;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
const _: () = assert!(SLOTS as u64 <= SLOT_MASK);

/// The default arena's handle.
const DEFAULT_RAW: u64 = crate::arena::DEFAULT_LIFE;

struct Slot {
    arena: Arena,
    /// The handle of the live arena in this slot; 0: free.
    handle: AtomicU64,
}

static SLOTS_TABLE: [Slot; SLOTS] = [const {
    Slot {
        arena: Arena::new(),
        handle: AtomicU64::new(0),
    }
}; SLOTS];

/// Slots ever handed out (iteration stops there).
static USED_SLOTS: AtomicUsize = AtomicUsize::new(1);
/// Serialises creation and destruction, so two threads never take the same
/// slot; guards the two statics below.
static CREATE_LOCK: Mutex<TagSource> = Mutex::new(TagSource {
    created: 0,
    key: [0; 2],
});

/// Where arena tags come from: the count of arenas created, permuted with
/// a per-process key.
struct TagSource {
    created: u64,
    /// Random, drawn at the first creation (0: not yet).
    key: [u64; 2],
}

impl TagSource {
    /// The next tag: distinct from every earlier one (a bijection of a
    /// counter that cannot wrap in 2^51 creations) and never zero.
    fn next(&mut self) -> u64 {
        if self.key == [0; 2] {
            self.key = [crate::os::random_u64() | 1, crate::os::random_u64()];
        }
        loop {
            self.created += 1;
            let tag = permute(self.created, self.key);
            if tag != 0 {
                return tag;
            }
        }
    }
}

/// A keyed permutation of the 51-bit numbers: each step (xor with a
/// constant, multiply by an odd number, xor with a right shift) is
/// invertible modulo 2^51, so distinct inputs give distinct tags.
fn permute(x: u64, key: [u64; 2]) -> u64 {
    let mut x = (x ^ key[1]) & TAG_MASK;
    x = x.wrapping_mul(key[0] | 1) & TAG_MASK;
    x ^= x >> 23;
    x = x.wrapping_mul(0x5851_f42d_4c95_7f2d) & TAG_MASK;
    x ^= x >> 29;
    x = x.wrapping_mul(0x2545_f491_4f6c_dd1d) & TAG_MASK;
    x ^ (key[1] >> SLOT_BITS)
}

/// A checked name for an arena.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ArenaHandle(NonZeroU64);

impl ArenaHandle {
    fn new(slot: usize, tag: u64) -> Self {
        let raw = ((tag & TAG_MASK) << SLOT_BITS) | (slot as u64 + 1);
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

    /// The slot the handle claims (`usize::MAX` for none).
    fn slot(self) -> usize {
        ((self.0.get() & SLOT_MASK) as usize).wrapping_sub(1)
    }
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
    let mut tags = CREATE_LOCK.lock();
    let used = USED_SLOTS.load(Ordering::Relaxed);
    // Reuse a free slot, else take a new one.
    let free_slot = SLOTS_TABLE
        .iter()
        .enumerate()
        .take(used)
        .skip(1)
        .find(|(_, slot)| slot.handle.load(Ordering::Relaxed) == 0)
        .map(|(i, _)| i);
    let slot = free_slot.or_else(|| (used < SLOTS).then_some(used))?;
    let entry = SLOTS_TABLE.get(slot)?;
    let handle = ArenaHandle::new(slot, tags.next());
    {
        let mut state = entry.arena.state.lock();
        state.open(handle.to_raw());
        entry.arena.reset_purged();
        entry.handle.store(handle.to_raw(), Ordering::Release);
    }
    if slot == used {
        USED_SLOTS.store(used + 1, Ordering::Release);
    }
    Some(handle)
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
    // Free. The slot cannot be reused before we are done (creation takes
    // the lock we hold).
    entry.handle.store(0, Ordering::Release);
    let mut state = arena.state.lock();
    // SAFETY: forwarded from the caller; the heaps go first, under the same
    // lock hold, as `destroy_contents` requires.
    unsafe {
        crate::heap::detach_all(&mut state);
        state.destroy_contents();
    }
    drop(state);
    // The heaps of other threads were reset with plain stores; make every
    // thread see that before its next allocation.
    let _ = crate::os::membarrier();
    true
}

/// The arena a handle names, if the handle is current.
#[inline]
pub fn resolve(handle: ArenaHandle) -> Option<&'static Arena> {
    let slot = SLOTS_TABLE.get(handle.slot())?;
    let raw = handle.to_raw();
    (raw == DEFAULT_RAW || slot.handle.load(Ordering::Acquire) == raw).then_some(&slot.arena)
}

/// The arena a handle names, locked, if the handle is current once the
/// lock is held (a destroy between the look-up and the lock makes it stale;
/// a creation after it gives the slot another handle).
pub fn lock_live(handle: ArenaHandle) -> Option<(&'static Arena, MutexGuard<'static, ArenaState>)> {
    let arena = resolve(handle)?;
    crate::race_hooks::pause(crate::race_hooks::Point::ControlBeforeLock);
    let state = arena.state.lock();
    state.is_life(handle.to_raw()).then_some((arena, state))
}

/// The handle of an arena, if it is live.
pub fn handle_of(arena: &'static Arena) -> Option<ArenaHandle> {
    let base = SLOTS_TABLE.as_ptr() as usize;
    let index = (arena as *const Arena as usize).wrapping_sub(base) / core::mem::size_of::<Slot>();
    if index == 0 {
        return Some(default_handle());
    }
    let raw = SLOTS_TABLE.get(index)?.handle.load(Ordering::Acquire);
    ArenaHandle::from_raw(raw)
}

/// Calls `f` for every live arena.
pub fn for_each_arena(mut f: impl FnMut(&'static Arena)) {
    let used = USED_SLOTS.load(Ordering::Acquire).min(SLOTS);
    for (i, slot) in SLOTS_TABLE.iter().enumerate().take(used) {
        if i == 0 || slot.handle.load(Ordering::Acquire) != 0 {
            f(&slot.arena);
        }
    }
}

/// Calls `f` for every arena slot ever used, live or not: a purge may still
/// hold the lock of an arena destroyed meanwhile, so `fork` must take those
/// locks too.
pub fn for_each_slot(mut f: impl FnMut(&'static Arena)) {
    let used = USED_SLOTS.load(Ordering::Acquire).min(SLOTS);
    for slot in SLOTS_TABLE.iter().take(used) {
        f(&slot.arena);
    }
}

/// Test support: makes the next creation's tag come as if `n` more arenas
/// had been created (a test cannot create 2^32 arenas to show that a stale
/// handle never comes back).
#[cfg(feature = "race-hooks")]
pub fn skip_lives(n: u64) {
    let mut tags = CREATE_LOCK.lock();
    tags.created = tags.created.wrapping_add(n);
}

/// Fork support: creation must not be under way across `fork`.
pub fn create_lock() -> &'static Mutex<impl Sized> {
    &CREATE_LOCK
}

/// One arena's figures, with the threads that prefer it (which only their
/// heaps know). Arena lock.
pub fn arena_stats(state: &ArenaState) -> ArenaStats {
    ArenaStats {
        threads: crate::heap::count_preferring(state.heaps()),
        ..state.stats()
    }
}

/// The allocator's figures now. Takes each arena's lock in turn.
pub fn gather_stats() -> Stats {
    let mut stats = Stats::from_counters();
    for_each_arena(|arena| {
        arena.state.lock().for_each_segment(|segment| {
            stats.segments += 1;
            segment.for_each_span(|span| {
                let (blocks, bytes) = span.live();
                stats.add_small_live(blocks, bytes);
            });
        });
    });
    stats
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    #[test]
    fn handles_round_trip_and_never_zero() {
        let h = ArenaHandle::new(0, 0);
        assert_eq!(h.to_raw(), 1);
        let h = ArenaHandle::new(4096, 7);
        assert_eq!(ArenaHandle::from_raw(h.to_raw()), Some(h));
        assert_eq!(h.slot(), 4096);
        assert_eq!(ArenaHandle::from_raw(0), None);
        // No slot: refused, not slot "-1".
        assert!(resolve(ArenaHandle::from_raw(1 << SLOT_BITS).unwrap()).is_none());
    }

    #[test]
    fn tags_never_repeat_and_depend_on_the_key() {
        let key = [0x1234_5678_9abc_def1, 0x0fed_cba9_8765_4321];
        let mut seen = std::collections::HashSet::new();
        for x in 0..200_000u64 {
            let tag = permute(x, key);
            assert!(tag <= TAG_MASK);
            assert!(seen.insert(tag), "tag {tag:#x} repeated at {x}");
        }
        let other = [0x1111_2222_3333_4445, 0x5555_6666_7777_8888];
        let same = (1..1000u64)
            .filter(|&x| permute(x, key) == permute(x, other))
            .count();
        assert_eq!(same, 0);
    }

    #[test]
    fn default_arena_is_live_and_foreign_handles_are_refused() {
        assert!(core::ptr::eq(
            resolve(default_handle()).unwrap(),
            default_arena()
        ));
        assert_eq!(handle_of(default_arena()), Some(default_handle()));
        assert_eq!(default_handle().to_raw(), crate::arena::DEFAULT_LIFE);
        // Out of range, and a free slot.
        assert!(resolve(ArenaHandle::new(SLOTS + 5, 1)).is_none());
        assert!(resolve(ArenaHandle::new(SLOTS - 1, 2)).is_none());
    }

    #[test]
    fn created_arenas_resolve_with_their_generation_only() {
        let h = create().expect("a free slot");
        let arena = resolve(h).expect("live");
        assert_eq!(handle_of(arena), Some(h));
        let wrong = ArenaHandle::new(h.slot(), (h.to_raw() >> SLOT_BITS) + 2);
        assert!(resolve(wrong).is_none());
        let mut seen = false;
        for_each_arena(|a| seen |= core::ptr::eq(a, arena));
        assert!(seen);
    }
}
