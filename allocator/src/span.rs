//! Spans: runs of slices that hold blocks of one size class for one owner.
//!
//! A span's metadata lives in its segment's header (never next to the
//! blocks), so blocks carry no header and a freed block's first word is free
//! to link it into a list. Three lists per span:
//! - `free`: blocks the owner hands out; owner-only, no atomics.
//! - bump region (`capacity..reserved`): never-touched blocks, carved into
//!   `free` a page at a time so memory is faulted in only when used.
//! - `thread_free`: blocks freed by other threads, pushed with one CAS and
//!   taken all at once by the owner (`collect_remote`).
//!
//! `used` counts blocks handed out and not yet back on `free`. It is written
//! only by the owner (plain load/store, never a read-modify-write) and read
//! racily by statistics.

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU8, AtomicUsize, Ordering};

use crate::heap::Heap;
use crate::os::PAGE_SIZE;

/// A free block: its first word links to the next free block.
#[repr(C)]
pub struct Block {
    pub next: *mut Block,
}

/// Where a span is, which says who may touch its owner-only fields.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum SpanState {
    /// Slices not in use (or the tail slices of a multi-slice span).
    Free = 0,
    /// The current span of its class in its heap: blocks come from here.
    Current = 1,
    /// In its heap's `avail` list: has free blocks.
    Available = 2,
    /// In its heap's `full` list: no free blocks when last looked at.
    Full = 3,
    /// Its thread exited; it sits in its arena's abandoned list.
    Abandoned = 4,
}

#[repr(C)]
pub struct Span {
    /// Owner's free list.
    pub free: *mut Block,
    /// Blocks out (including remote frees not yet collected; plus one while
    /// the span is its heap's current span, so the owner's free path never
    /// sees zero for it).
    pub used: AtomicU32,
    pub block_size: u32,
    /// Blocks carved from the bump region so far.
    pub capacity: u32,
    /// Blocks that fit in the span.
    pub reserved: u32,
    pub class: u8,
    /// A `SpanState`; atomic only so statistics may read it while the owner
    /// changes it (plain loads and stores, no read-modify-write).
    state: AtomicU8,
    /// Slices in this span (valid in the head slice).
    pub slice_count: u8,
    /// Distance in slices from this slice to its span's head slice.
    pub head_offset: u8,
    /// Thread that owns the span (0: none). Compared on every free to tell a
    /// local free from a remote one.
    pub owner_thread: AtomicUsize,
    /// Owning heap (null when free or abandoned). Owner and arena lock only.
    pub heap: *mut Heap,
    /// Blocks freed by threads other than the owner.
    pub thread_free: AtomicPtr<Block>,
    /// First block.
    pub start: *mut u8,
    /// Links in a heap list or the arena's abandoned list.
    pub next: *mut Span,
    pub prev: *mut Span,
}

impl Span {
    /// A span that has no blocks: every heap's `current` entry points at one
    /// of these until it has a real span, so the fast path needs no null test.
    pub const fn empty() -> Span {
        Span {
            free: ptr::null_mut(),
            used: AtomicU32::new(0),
            block_size: 0,
            capacity: 0,
            reserved: 0,
            class: 0,
            state: AtomicU8::new(SpanState::Free as u8),
            slice_count: 0,
            head_offset: 0,
            owner_thread: AtomicUsize::new(0),
            heap: ptr::null_mut(),
            thread_free: AtomicPtr::new(ptr::null_mut()),
            start: ptr::null_mut(),
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
        }
    }

    /// Sets up a span of `slice_count` slices at `start` for blocks of
    /// `block_size` bytes. Slices are fresh or retired, so no block is live.
    pub fn init(&mut self, start: *mut u8, slice_bytes: usize, class: u8, block_size: usize) {
        self.free = ptr::null_mut();
        self.used.store(0, Ordering::Relaxed);
        self.block_size = block_size as u32;
        self.capacity = 0;
        self.reserved = (slice_bytes / block_size) as u32;
        self.class = class;
        self.set_state(SpanState::Free);
        self.owner_thread.store(0, Ordering::Relaxed);
        self.heap = ptr::null_mut();
        self.thread_free.store(ptr::null_mut(), Ordering::Relaxed);
        self.start = start;
        self.next = ptr::null_mut();
        self.prev = ptr::null_mut();
    }

    #[inline(always)]
    pub fn state(&self) -> SpanState {
        match self.state.load(Ordering::Relaxed) {
            1 => SpanState::Current,
            2 => SpanState::Available,
            3 => SpanState::Full,
            4 => SpanState::Abandoned,
            _ => SpanState::Free,
        }
    }

    #[inline(always)]
    pub fn is_full(&self) -> bool {
        self.state.load(Ordering::Relaxed) == SpanState::Full as u8
    }

    #[inline(always)]
    pub fn set_state(&self, state: SpanState) {
        self.state.store(state as u8, Ordering::Relaxed)
    }

    #[inline(always)]
    pub fn used(&self) -> u32 {
        self.used.load(Ordering::Relaxed)
    }

    /// Owner-only: a plain store, no read-modify-write.
    #[inline(always)]
    pub fn set_used(&self, value: u32) {
        self.used.store(value, Ordering::Relaxed)
    }

    /// Whether `p` is the start of a block of this span (not an interior or
    /// out-of-range pointer).
    pub fn is_block_start(&self, p: *mut u8) -> bool {
        let offset = (p as usize).wrapping_sub(self.start as usize);
        self.block_size != 0
            && offset < self.capacity as usize * self.block_size as usize
            && offset.is_multiple_of(self.block_size as usize)
    }

    /// Carves more never-used blocks onto the free list: about a page worth,
    /// at least one. Owner only. Returns false if the span is fully carved.
    pub fn extend(&mut self) -> bool {
        let left = self.reserved - self.capacity;
        if left == 0 {
            return false;
        }
        let per_page = (PAGE_SIZE / self.block_size as usize).max(1) as u32;
        let count = left.min(per_page);
        let size = self.block_size as usize;
        let first = self.start as usize + self.capacity as usize * size;
        // Link in address order so consecutive mallocs are adjacent.
        let mut next = self.free;
        let mut i = count as usize;
        while i > 0 {
            i -= 1;
            let block = (first + i * size) as *mut Block;
            // SAFETY: `block` lies in the span's never-used bump region, which
            // belongs to this span and is mapped read-write.
            unsafe { (*block).next = next };
            next = block;
        }
        self.free = next;
        self.capacity += count;
        true
    }

    /// Moves blocks freed by other threads onto the owner's free list and
    /// returns how many there were. Owner only.
    pub fn collect_remote(&mut self) -> u32 {
        if self.thread_free.load(Ordering::Relaxed).is_null() {
            return 0;
        }
        let mut list = self.thread_free.swap(ptr::null_mut(), Ordering::Acquire);
        let mut count = 0u32;
        while !list.is_null() {
            // SAFETY: every block on thread_free was pushed by `free_remote`
            // and is not live; the Acquire swap made its link visible.
            let next = unsafe { (*list).next };
            // SAFETY: as above; the block is ours again, relink it.
            unsafe { (*list).next = self.free };
            self.free = list;
            list = next;
            count += 1;
        }
        self.set_used(self.used() - count);
        count
    }

    /// Whether the owner can hand out a block from this span without more
    /// work than `extend`.
    pub fn has_room(&self) -> bool {
        !self.free.is_null() || self.capacity < self.reserved
    }
}

/// Pushes `block` on `span`'s remote list: one atomic operation (a CAS,
/// retried only if another thread pushed at the same moment).
///
/// # Safety
/// `block` is a live block of `span` that the caller gives up.
#[inline]
pub unsafe fn free_remote(span: &Span, block: *mut Block) {
    let mut head = span.thread_free.load(Ordering::Relaxed);
    loop {
        // SAFETY: the caller gave up `block`; its first word is ours to use.
        unsafe { (*block).next = head };
        match span.thread_free.compare_exchange_weak(
            head,
            block,
            Ordering::Release,
            Ordering::Relaxed,
        ) {
            Ok(_) => return,
            Err(actual) => head = actual,
        }
    }
}

/// An intrusive doubly linked list of spans (owner or arena-lock protected).
#[derive(Clone, Copy)]
pub struct SpanList {
    pub head: *mut Span,
    pub tail: *mut Span,
}

impl SpanList {
    pub const EMPTY: SpanList = SpanList {
        head: ptr::null_mut(),
        tail: ptr::null_mut(),
    };

    pub fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// # Safety
    /// `span` is valid and in no list.
    pub unsafe fn push_back(&mut self, span: *mut Span) {
        // SAFETY: caller guarantees `span` is valid and unlinked; list
        // members are valid while linked.
        unsafe {
            (*span).next = ptr::null_mut();
            (*span).prev = self.tail;
            if self.tail.is_null() {
                self.head = span;
            } else {
                (*self.tail).next = span;
            }
        }
        self.tail = span;
    }

    /// # Safety
    /// `span` is valid and a member of this list.
    pub unsafe fn remove(&mut self, span: *mut Span) {
        // SAFETY: members of the list and their neighbours are valid.
        unsafe {
            let (prev, next) = ((*span).prev, (*span).next);
            if prev.is_null() {
                self.head = next;
            } else {
                (*prev).next = next;
            }
            if next.is_null() {
                self.tail = prev;
            } else {
                (*next).prev = prev;
            }
            (*span).next = ptr::null_mut();
            (*span).prev = ptr::null_mut();
        }
    }

    pub fn pop_front(&mut self) -> Option<*mut Span> {
        let span = self.head;
        if span.is_null() {
            return None;
        }
        // SAFETY: the head is a member of this list.
        unsafe { self.remove(span) };
        Some(span)
    }
}
