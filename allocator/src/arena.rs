//! Arenas: the owners of memory.
//!
//! An arena owns segments (and through them spans) and large blocks. Every
//! span belongs to one arena for its whole life, so blocks of two arenas
//! never share a span. Thread heaps take spans from their arena and give
//! them back when they become empty or when the thread exits; spans still
//! holding live blocks at thread exit wait in `abandoned` until a heap of the
//! same arena adopts them. Everything here runs under the arena's lock, on
//! slow paths only.

use core::ptr;

use crate::large::LargeCache;
use crate::segment::Segment;
use crate::size_class::{class_size, span_slices, CLASS_COUNT};
use crate::span::{Span, SpanList, SpanState, DEAD_OWNER};
use crate::sync::Mutex;

/// Fully empty segments an arena keeps mapped for reuse; more are unmapped.
const SPARE_SEGMENTS: usize = 1;
/// Abandoned spans one refill looks at before taking a fresh span.
const ADOPT_SCAN_LIMIT: usize = 8;

pub struct Arena {
    pub state: Mutex<ArenaState>,
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
            }),
        }
    }

    pub fn as_ptr(&self) -> *const Arena {
        self as *const Arena
    }
}

impl Default for Arena {
    fn default() -> Self {
        Self::new()
    }
}

pub use crate::registry::{default_arena, for_each_arena};

impl ArenaState {
    /// A fresh span of `class` from this arena's segments, mapping a new
    /// segment if none has room.
    pub fn alloc_span(&mut self, arena: *const Arena, class: usize) -> Option<*mut Span> {
        let slices = span_slices(class);
        let block_size = class_size(class);
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
        let segment = Segment::create(arena)?;
        // SAFETY: a freshly created segment, not yet shared.
        let seg = unsafe { &*segment };
        seg.next.set(self.segments);
        if !self.segments.is_null() {
            // SAFETY: the list head is live.
            unsafe { (*self.segments).prev.set(segment) };
        }
        self.segments = segment;
        seg.take_span(slices, class as u8, block_size)
    }

    /// Gives an empty span's slices back to its segment; unmaps the segment
    /// if it is empty and the arena already keeps enough spare ones.
    ///
    /// # Safety
    /// `span` is a head span of a segment of this arena, in no list, with no
    /// live block.
    pub unsafe fn retire_span(&mut self, span: *mut Span) {
        let segment = crate::segment::segment_base(span as usize) as *mut Segment;
        // SAFETY: spans live inside their segment's header.
        let seg = unsafe { &*segment };
        // SAFETY: forwarded from the caller.
        unsafe { seg.release_span(span) };
        if seg.is_empty() {
            if self.empty_segments >= SPARE_SEGMENTS {
                self.unlink_segment(segment);
                // SAFETY: the segment is empty and unlinked.
                unsafe { Segment::destroy(segment) };
            } else {
                self.empty_segments += 1;
            }
        }
    }

    fn unlink_segment(&mut self, segment: *mut Segment) {
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
        unsafe {
            (*span).set_state(SpanState::Abandoned);
            self.abandoned[(*span).class()].push_back(span);
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

    /// Returns what this arena holds but does not use to the OS: abandoned
    /// spans that became empty, spare segments, free slices' pages and cached
    /// large blocks. Returns the bytes released.
    pub fn trim(&mut self) -> usize {
        let mut released = 0;
        for class in 0..CLASS_COUNT {
            let mut span = self.abandoned[class].head;
            while !span.is_null() {
                // SAFETY: list members are live; abandoned spans have no
                // owner, so the lock holder may collect their remote frees.
                let next = unsafe { SpanList::next_of(span) };
                // SAFETY: as above.
                let s = unsafe { &*span };
                s.collect_remote();
                if s.used() == 0 {
                    // SAFETY: `span` is a member of this list.
                    unsafe { self.abandoned[class].remove(span) };
                    // SAFETY: no live block, unlinked.
                    unsafe { self.retire_span(span) };
                }
                span = next;
            }
        }
        let mut segment = self.segments;
        while !segment.is_null() {
            // SAFETY: list members are live under the lock.
            let seg = unsafe { &*segment };
            let next = seg.next.get();
            if seg.is_empty() {
                self.unlink_segment(segment);
                self.empty_segments -= 1;
                released += crate::segment::SEGMENT_SIZE;
                // SAFETY: empty and unlinked.
                unsafe { Segment::destroy(segment) };
            } else {
                released += seg.discard_free_slices();
            }
            segment = next;
        }
        released += self.large_cache.release_all();
        released
    }

    /// In the child after `fork`: marks every span owned by a thread other
    /// than `survivor` as owned by no live thread. Those threads' heaps may
    /// have been caught mid-update, so they are never walked; their spans'
    /// blocks can still be freed (remotely), and a new thread that reuses a
    /// dead thread's id cannot take them for its own.
    pub fn orphan_spans_of_other_threads(&self, survivor: usize) {
        self.for_each_segment(|segment| {
            segment.for_each_span(|span| {
                let owner = span.owner_thread();
                if owner != 0 && owner != survivor {
                    span.set_owner(span.heap(), DEAD_OWNER);
                }
            })
        });
    }
}
