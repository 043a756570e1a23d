//! Arenas: the owners of memory.
//!
//! An arena owns segments (and through them spans) and large blocks. Every
//! span belongs to one arena for its whole life, so blocks of two arenas
//! never share a span. Thread heaps take spans from their arena and give
//! them back when they become empty or when the thread exits; spans still
//! holding live blocks at thread exit wait in `abandoned` until a heap of the
//! same arena adopts them. Everything here runs under the arena's lock, on
//! slow paths only.
//!
//! The arena also keeps what per-arena control needs: the heaps of every
//! thread that uses it (to count the threads that prefer it and to detach
//! them when it is destroyed), its live large blocks (so destroy can unmap
//! them), and its accounts (bytes in use, peak, limit).

use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::housekeeping::Budget;
use crate::large_block::{BlockSet, LargeBlock, LargeCache, LargeList, CACHE_SLOTS};
use crate::roster::{HeapLinks, Roster};
use crate::segment::{Segment, SegmentHeader, SLICE_SIZE};
use crate::size_class::{class_size, span_slices, CLASS_COUNT};
use crate::span::{Span, SpanList, SpanState, DEAD_OWNER};
use crate::stats::{ArenaAccounts, ArenaStats};
use crate::sync::Mutex;

/// Fully empty segments an arena keeps mapped for reuse; more are unmapped.
const SPARE_SEGMENTS: usize = 1;
/// Abandoned spans one refill looks at before taking a fresh span.
const ADOPT_SCAN_LIMIT: usize = 8;

pub struct Arena {
    pub state: Mutex<ArenaState>,
    /// Bytes the purger gave back to the OS from this life of the arena
    /// (statistics; large blocks are unmapped outside the lock).
    purged: AtomicUsize,
}

pub struct ArenaState {
    /// All span segments of the arena.
    segments: *mut Segment,
    /// How many of them have no span in use.
    empty_segments: usize,
    /// Spans whose thread exited while they held live blocks, by class.
    abandoned: [SpanList; CLASS_COUNT],
    /// Freed large blocks kept for reuse.
    pub large_cache: LargeCache,
    /// Live large blocks.
    pub large_blocks: LargeList,
    /// Heaps of the threads that use the arena.
    heaps: Roster,
    pub accounts: ArenaAccounts,
    /// Destroyed (or not yet created): refuses new spans, blocks and heaps.
    closed: bool,
    /// The raw handle of the arena's current life (0: the default arena,
    /// or closed): a handle resolved before the lock was taken is checked
    /// against it (see `registry::lock_live`).
    life: u64,
    /// Bumped whenever a heap joins or leaves, or a segment is linked or
    /// unlinked: a purge that let go of the lock meanwhile cannot trust its
    /// place in those lists.
    changes: u64,
}

// SAFETY: the raw pointers in ArenaState are only followed under the lock.
unsafe impl Send for ArenaState {}

impl Arena {
    pub const fn new() -> Self {
        Self {
            state: Mutex::new(ArenaState {
                segments: ptr::null_mut(),
                empty_segments: 0,
                abandoned: [SpanList::EMPTY; CLASS_COUNT],
                large_cache: LargeCache::EMPTY,
                large_blocks: LargeList::EMPTY,
                heaps: Roster::EMPTY,
                accounts: ArenaAccounts::EMPTY,
                closed: false,
                life: 0,
                changes: 0,
            }),
            purged: AtomicUsize::new(0),
        }
    }

    pub fn as_ptr(&self) -> *const Arena {
        self as *const Arena
    }

    /// The arena as its regions name it (see `segment::SegmentHeader`).
    pub fn as_owner(&self) -> *const () {
        self.as_ptr().cast()
    }

    /// The arena that owns the region `header` starts.
    ///
    /// # Safety
    /// `header` is a live region of ours: its owner was set from
    /// [`Arena::as_owner`], and arenas are static.
    pub unsafe fn owning(header: &SegmentHeader) -> &'static Arena {
        // SAFETY: the caller's promise.
        unsafe { &*header.arena.cast::<Arena>() }
    }

    /// Counts `bytes` given back to the OS by a purge of this arena.
    pub fn purged_add(&self, bytes: usize) {
        self.purged.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes purges gave back since the arena was created in its slot.
    pub fn purged_bytes(&self) -> usize {
        self.purged.load(Ordering::Relaxed)
    }

    /// A new life in the slot starts counting from zero.
    pub fn reset_purged(&self) {
        self.purged.store(0, Ordering::Relaxed);
    }
}

impl Default for Arena {
    fn default() -> Self {
        Self::new()
    }
}

/// The raw handle of the default arena, which has one life.
pub const DEFAULT_LIFE: u64 = 1;

/// What one arena purge did.
#[derive(Clone, Copy)]
pub struct PurgeOutcome {
    /// Bytes given back to the OS.
    pub purged: usize,
    /// Something is not old enough yet, or a heap was busy: look again.
    pub more: bool,
    /// Heaps of other threads that could not be claimed (their thread was
    /// inside the allocator, or another purge held them).
    pub busy_heaps: usize,
    /// Cached large blocks to unmap once the arena lock is released.
    pub evicted: [Option<*mut LargeBlock>; CACHE_SLOTS],
    /// Retained large blocks to unmap too, chained (see `large::unmap_chain`).
    pub evicted_chain: *mut LargeBlock,
}

impl Default for PurgeOutcome {
    fn default() -> Self {
        PurgeOutcome {
            purged: 0,
            more: false,
            busy_heaps: 0,
            evicted: [None; CACHE_SLOTS],
            evicted_chain: ptr::null_mut(),
        }
    }
}

/// What a purge gives back.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PurgeKind {
    /// The housekeeper's pass: idle heaps' free pages and emptied spans,
    /// free slices and cached large blocks free since `freed_by_ms` or
    /// earlier.
    Decay { freed_by_ms: u64 },
    /// `malloc_trim`: everything free now, busy-looking heaps included,
    /// and empty segments, spares included.
    Trim,
    /// Before an allocation is refused for the arena's limit: blocks other
    /// threads freed are collected and the spans that emptied leave the
    /// heaps (their bytes stop counting against the limit). No page is
    /// discarded, nothing is unmapped.
    Reclaim,
}

impl PurgeKind {
    /// Free slices and cached blocks free since this time or earlier go.
    pub fn freed_by_ms(self) -> u64 {
        match self {
            PurgeKind::Decay { freed_by_ms } => freed_by_ms,
            PurgeKind::Trim => u64::MAX,
            PurgeKind::Reclaim => 0,
        }
    }

    /// Heaps that had a slow path since the last pass are claimed too.
    pub fn claims_busy_heaps(self) -> bool {
        !matches!(self, PurgeKind::Decay { .. })
    }

    /// Free pages of spans in use go back to the OS.
    pub fn gives_back_pages(self) -> bool {
        self != PurgeKind::Reclaim
    }
}

impl PurgeOutcome {
    /// Unmaps the evicted blocks (outside the lock); returns every byte the
    /// purge released.
    pub fn finish(self) -> usize {
        self.purged
            + crate::large_block::unmap_all(self.evicted)
            + crate::large_block::unmap_chain(self.evicted_chain)
    }
}

impl ArenaState {
    pub fn is_open(&self) -> bool {
        !self.closed
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether allocations in the arena are capped.
    pub fn has_limit(&self) -> bool {
        self.accounts.limit_bytes != 0
    }

    /// The raw handle of the arena's current life: 0 when closed, 1 for the
    /// default arena. A purge that lets go of the lock stops if it changed.
    pub fn life(&self) -> u64 {
        match (self.closed, self.life) {
            (true, _) => 0,
            (false, 0) => DEFAULT_LIFE,
            (false, life) => life,
        }
    }

    /// Whether the arena is open in the life the raw `handle` names.
    pub fn is_life(&self, handle: u64) -> bool {
        handle != 0 && self.life() == handle
    }

    /// Registers a heap of a thread that uses the arena, by its roster
    /// links. False if closed.
    ///
    /// # Safety
    /// As for [`Roster::push`].
    pub unsafe fn add_heap(&mut self, links: *const HeapLinks) -> bool {
        if self.closed {
            return false;
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.heaps.push(links) };
        self.changes += 1;
        true
    }

    /// # Safety
    /// `links` are in this arena's roster.
    pub unsafe fn remove_heap(&mut self, links: *const HeapLinks) {
        // SAFETY: forwarded from the caller.
        unsafe { self.heaps.remove(links) };
        self.changes += 1;
    }

    /// The arena's heaps.
    pub fn heaps(&self) -> &Roster {
        &self.heaps
    }

    /// Counts every change to the arena's lists: a purge that let go of the
    /// lock starts its stage again if it moved.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The large-cache stage of a purge: cached blocks free since
    /// `freed_by_ms` or earlier leave the cache, into `outcome`, for the
    /// caller to unmap once the lock is released.
    pub fn evict_cached(&mut self, freed_by_ms: u64, outcome: &mut PurgeOutcome) {
        outcome.evicted = self.large_cache.take_freed_by(freed_by_ms);
        outcome.evicted_chain = self.large_cache.take_retained_freed_by(freed_by_ms);
        outcome.more |= !self.large_cache.is_empty();
    }

    /// The arena's figures (walks its spans; `mincore` on its mappings);
    /// `threads`, which only the heaps know, is the caller's to fill in.
    #[link_section = "arenalloc_cold"]
    pub fn stats(&self) -> ArenaStats {
        let mut s = ArenaStats {
            live_bytes: self.accounts.large_live_bytes,
            live_blocks: self.accounts.large_live_blocks,
            resident_bytes: self.large_blocks.resident_bytes() + self.large_cache.resident_bytes(),
            mapped_bytes: self.large_blocks.mapped_bytes() + self.large_cache.mapped_bytes(),
            in_use_bytes: self.accounts.in_use_bytes,
            peak_in_use_bytes: self.accounts.peak_in_use_bytes,
            limit_bytes: self.accounts.limit_bytes,
            threads: 0,
            pending_remote_spans: 0,
        };
        self.for_each_segment(|segment| {
            s.resident_bytes += segment.resident_bytes();
            s.mapped_bytes += segment.mapped_bytes();
            segment.for_each_span(|span| {
                let (blocks, bytes) = span.live();
                s.live_blocks += blocks;
                s.live_bytes += bytes;
                s.pending_remote_spans += usize::from(span.has_remote_frees());
            });
        });
        s
    }

    /// Whether blocks other threads freed wait in some span of the arena for
    /// its owner to collect them (walks every span).
    pub fn has_pending_remote_frees(&self) -> bool {
        let mut pending = false;
        self.for_each_segment(|segment| {
            segment.for_each_span(|span| pending |= span.has_remote_frees());
        });
        pending
    }

    /// Reopens a destroyed (or never used) arena for a new life in its
    /// slot, named by the raw `handle`.
    pub fn open(&mut self, handle: u64) {
        self.closed = false;
        self.life = handle;
        self.changes += 1;
        self.accounts = ArenaAccounts::EMPTY;
    }

    /// Destroys the arena's contents: every heap of it dies (its thread falls
    /// back to the default arena), every segment and large block is unmapped,
    /// and the arena is closed to new memory until [`ArenaState::open`].
    ///
    /// # Safety
    /// No thread is inside the allocator for this arena, and no block of it
    /// is used again; its heaps were detached (`heap::detach_all`) under
    /// this lock hold.
    pub unsafe fn destroy_contents(&mut self) {
        if !self.heaps.first().is_null() {
            crate::diag::fatal("arena destroyed with heaps still in its roster");
        }
        self.closed = true;
        self.life = 0;
        self.changes += 1;
        let mut segment = self.segments;
        while !segment.is_null() {
            // SAFETY: list members are live under the lock.
            let next = unsafe { (*segment).next.get() };
            // SAFETY: no block of the arena is used again (the caller's
            // guarantee) and no heap refers to the segment any more.
            unsafe { Segment::destroy(segment) };
            segment = next;
        }
        self.segments = ptr::null_mut();
        self.empty_segments = 0;
        self.abandoned = [SpanList::EMPTY; CLASS_COUNT];
        self.large_blocks.unmap_all();
        self.large_cache.release_all();
        self.accounts = ArenaAccounts::EMPTY;
    }

    /// In the child after `fork`: forgets the heaps of threads that did not
    /// survive (their memory is left alone, see
    /// [`ArenaState::orphan_spans_of_other_threads`]).
    pub fn forget_heaps_of_other_threads(&mut self, survivor: usize) {
        // A thread's id is the address of its state.
        self.heaps
            .retain(|links| links.thread() as usize == survivor);
    }

    /// A fresh span of `class` from this arena's segments, mapping a new
    /// segment if none has room.
    /// `None` when out of memory, past the arena's limit, or the arena is
    /// closed.
    pub fn alloc_span(&mut self, arena: &'static Arena, class: usize) -> Option<*mut Span> {
        let slices = span_slices(class);
        let block_size = class_size(class);
        if self.closed || !self.accounts.reserve(slices * SLICE_SIZE) {
            return None;
        }
        let span = self.take_or_map_span(arena, slices, class, block_size);
        if span.is_none() {
            self.accounts.release(slices * SLICE_SIZE);
        }
        span
    }

    fn take_or_map_span(
        &mut self,
        arena: &'static Arena,
        slices: usize,
        class: usize,
        block_size: usize,
    ) -> Option<*mut Span> {
        let mut segment = self.segments;
        while !segment.is_null() {
            // SAFETY: segments in the list are live and ours under the lock.
            let seg = unsafe { &*segment };
            let was_empty = seg.is_empty();
            if let Some(span) = seg.take_span(slices, class as u8, block_size) {
                if was_empty {
                    self.empty_segments -= 1;
                }
                return Some(span);
            }
            segment = seg.next.get();
        }
        let segment = Segment::create(arena.as_owner())?;
        // SAFETY: a freshly created segment, not yet shared.
        let seg = unsafe { &*segment };
        seg.next.set(self.segments);
        if !self.segments.is_null() {
            // SAFETY: the list head is live.
            unsafe { (*self.segments).prev.set(segment) };
        }
        self.segments = segment;
        self.changes += 1;
        seg.take_span(slices, class as u8, block_size)
    }

    /// Gives an empty span's slices back to its segment; unmaps the segment
    /// if it is empty and the arena already keeps enough spare ones. Returns
    /// the bytes unmapped (0 or a segment).
    ///
    /// # Safety
    /// `span` is a head span of a segment of this arena, in no list, with no
    /// live block.
    pub unsafe fn retire_span(&mut self, span: *mut Span) -> usize {
        // SAFETY: forwarded from the caller: a span of this arena with no
        // block out, whose owner-only fields the caller may use.
        unsafe { (*span).check_before_retire() };
        // SAFETY: forwarded; checked just now.
        unsafe { self.retire_checked_span(span) }
    }

    /// [`ArenaState::retire_span`] of a span whose free blocks were counted
    /// (`Span::check_before_retire`) before the lock was taken, so the walk
    /// does not lengthen the lock hold.
    ///
    /// # Safety
    /// As for [`ArenaState::retire_span`], and the span was checked since
    /// it last changed.
    pub unsafe fn retire_checked_span(&mut self, span: *mut Span) -> usize {
        let segment = crate::segment::segment_base(span as usize) as *mut Segment;
        // SAFETY: spans live inside their segment's header.
        let seg = unsafe { &*segment };
        // SAFETY: forwarded from the caller.
        self.accounts
            .release(unsafe { (*span).slice_count() } * SLICE_SIZE);
        // SAFETY: forwarded from the caller.
        unsafe { seg.release_span(span) };
        if seg.is_empty() {
            // A segment that lost slices to someone else's mapping is not
            // kept as the spare.
            if self.empty_segments >= SPARE_SEGMENTS || seg.has_lost_slices() {
                self.unlink_segment(segment);
                // SAFETY: the segment is empty and unlinked.
                return unsafe { Segment::destroy(segment) };
            }
            self.empty_segments += 1;
        }
        0
    }

    fn unlink_segment(&mut self, segment: *mut Segment) {
        self.changes += 1;
        // SAFETY: `segment` and its neighbours are live list members.
        unsafe {
            let (prev, next) = ((*segment).prev.get(), (*segment).next.get());
            if prev.is_null() {
                self.segments = next;
            } else {
                (*prev).next.set(next);
            }
            if !next.is_null() {
                (*next).prev.set(prev);
            }
        }
    }

    /// Parks a span that still holds live blocks until a heap adopts it.
    ///
    /// # Safety
    /// `span` is a live span of this arena in no list, with no owner.
    pub unsafe fn abandon_span(&mut self, span: *mut Span) {
        // SAFETY: forwarded from the caller.
        let class = unsafe { (*span).class() };
        let Some(list) = self.abandoned.get_mut(class) else {
            crate::diag::fatal("span with an impossible size class");
        };
        // SAFETY: forwarded from the caller.
        unsafe {
            (*span).set_state(SpanState::Abandoned);
            list.push_back(span);
        }
    }

    /// An abandoned span of `class` worth adopting (it has free blocks or
    /// blocks freed by other threads), removed from the list. Looks at a
    /// bounded number of spans and rotates the others, so a pile of full
    /// abandoned spans costs no thread more than a few looks.
    pub fn take_abandoned(&mut self, class: usize) -> Option<*mut Span> {
        for _ in 0..ADOPT_SCAN_LIMIT {
            let span = self.abandoned[class].pop_front()?;
            // SAFETY: abandoned spans are live and have no owner; the lock
            // holder may read their owner-only fields.
            let s = unsafe { &*span };
            if s.has_room() || s.has_remote_frees() {
                return Some(span);
            }
            // SAFETY: just unlinked.
            unsafe { self.abandoned[class].push_back(span) };
        }
        None
    }

    /// Calls `f` for every span segment of the arena.
    pub fn for_each_segment(&self, mut f: impl FnMut(&Segment)) {
        let mut segment = self.segments;
        while !segment.is_null() {
            // SAFETY: list members are live under the lock.
            let seg = unsafe { &*segment };
            let next = seg.next.get();
            f(seg);
            segment = next;
        }
    }

    /// The segment stage of a purge (see `purger`): discards old free
    /// slices; with `force`, unmaps empty segments. `position` counts the
    /// segments already done. False if the budget ran out first.
    pub fn purge_segments(
        &mut self,
        freed_by_ms: u64,
        force: bool,
        outcome: &mut PurgeOutcome,
        position: &mut usize,
        budget: &Budget,
    ) -> bool {
        let mut segment = self.segments;
        let mut index = 0;
        while !segment.is_null() {
            // SAFETY: list members are live under the lock.
            let seg = unsafe { &*segment };
            let next = seg.next.get();
            if index < *position {
                index += 1;
            } else if budget.spent() {
                *position = index;
                return false;
            } else if force && seg.is_empty() {
                self.unlink_segment(segment);
                self.empty_segments -= 1;
                // SAFETY: empty and unlinked.
                outcome.purged += unsafe { Segment::destroy(segment) };
                budget.progress();
            } else {
                // Runs between live spans give back their address space
                // too; the rest of the old free slices only their pages.
                let (unmapped, young) = seg.unmap_free_runs(freed_by_ms);
                outcome.purged += unmapped;
                outcome.more |= young;
                let (dirty, old) = seg.dirty_free_slices(freed_by_ms);
                outcome.more |= dirty != old;
                if old != 0 {
                    outcome.purged += seg.discard_free_slices_freed_by(freed_by_ms);
                }
                index += 1;
                *position = index;
                budget.progress();
            }
            segment = next;
        }
        true
    }

    /// The abandoned stage of a purge (see `purger`): emptied spans become
    /// free slices, the others give back their free pages. `position` is
    /// the class to go on with. False if the budget ran out first.
    pub fn purge_abandoned(
        &mut self,
        kind: PurgeKind,
        outcome: &mut PurgeOutcome,
        position: &mut usize,
        budget: &Budget,
    ) -> bool {
        for class in *position..CLASS_COUNT {
            let mut span = self.abandoned[class].head;
            while !span.is_null() {
                if budget.spent() {
                    // Spans done in this class are skipped in O(1) next time.
                    *position = class;
                    return false;
                }
                // SAFETY: list members are live; abandoned spans have no
                // owner, so the lock holder may use their owner-only fields.
                let next = unsafe { SpanList::next_of(span) };
                // SAFETY: as above.
                let s = unsafe { &*span };
                s.collect_remote();
                if s.used() == 0 {
                    // SAFETY: a member; then empty and unlinked.
                    unsafe {
                        self.abandoned[class].remove(span);
                        outcome.purged += self.retire_span(span);
                    }
                    budget.progress();
                } else if kind.gives_back_pages() {
                    outcome.purged += budget.released(s.purge_free_pages());
                }
                span = next;
            }
        }
        true
    }

    /// In the child after `fork`: marks every span owned by a thread other
    /// than `survivor` as owned by no live thread. Those threads' heaps may
    /// have been caught mid-update, so they are never walked; their spans'
    /// blocks can still be freed (remotely), and a new thread that reuses a
    /// dead thread's id cannot take them for its own.
    pub fn orphan_spans_of_other_threads(&self, survivor: usize) {
        self.for_each_segment(|segment| {
            segment.for_each_span(|span| {
                let owner = crate::secure::owner_id(span.owner_thread());
                if owner != 0 && owner != survivor {
                    span.set_owner(span.heap(), DEAD_OWNER);
                }
            })
        });
    }
}
