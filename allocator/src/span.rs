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
//!
//! Span metadata is only ever reached through shared references: the
//! owner's fields are `Cell`s, what other threads touch is atomic.

use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU8, AtomicUsize, Ordering};

use crate::heap::Heap;
use crate::os::PAGE_SIZE;
use crate::segment::SLICE_SIZE;
use crate::size_class::{MAX_BLOCKS_PER_SPAN, MAX_SPAN_SLICES};

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

/// Span metadata. Shared between threads through `&Span` only: fields that
/// only the owner (or the arena-lock holder) writes are `Cell`s, fields that
/// other threads read or write are atomics (relaxed loads and stores compile
/// to plain moves).
#[repr(C)]
pub struct Span {
    /// Owner's free list.
    free: Cell<*mut Block>,
    /// Blocks out (including remote frees not yet collected; plus one while
    /// the span is its heap's current span, so the owner's free path never
    /// sees zero for it).
    used: AtomicU32,
    /// Block size; set while the span has no live block, read by any thread
    /// holding one of its blocks.
    block_size: AtomicU32,
    /// Blocks carved from the bump region so far. Owner only.
    capacity: Cell<u32>,
    /// Blocks that fit in the span (fixed while the span is in use).
    reserved: AtomicU32,
    class: Cell<u8>,
    /// A `SpanState`.
    state: AtomicU8,
    /// Slices in this span (valid in the head slice). Arena lock.
    slice_count: Cell<u8>,
    /// Distance in slices from this slice to its span's head slice; read by
    /// `free` from any thread, written only while the slice holds no block.
    head_offset: AtomicU8,
    /// Thread that owns the span (0: none; `DEAD_OWNER`: a thread that did
    /// not survive a fork). Compared on every free to tell a local free from
    /// a remote one.
    owner_thread: AtomicUsize,
    /// Owning heap (null when free or abandoned). Owner and arena lock only.
    heap: Cell<*mut Heap>,
    /// Blocks freed by threads other than the owner.
    thread_free: AtomicPtr<Block>,
    /// First block (fixed while the span is in use).
    start: AtomicPtr<u8>,
    /// Links in a heap list or the arena's abandoned list.
    next: Cell<*mut Span>,
    prev: Cell<*mut Span>,
    /// Pages (from `start`) given back to the OS while the span is in use;
    /// the free blocks that start in them are off the free list ("parked")
    /// until [`Span::extend`] needs them. Owner (or claimer) only.
    purged_pages: [Cell<u64>; PURGE_WORDS],
    /// Blocks carved when the pages were purged (0: no page purged): parked
    /// blocks are those below this whose first byte is in a purged page.
    purged_capacity: Cell<u32>,
    /// How many blocks are parked. A purged page need not hold the start of
    /// any block (a 5 KiB block covers one whole page), so pages can be
    /// purged with nothing parked: room is judged by this count, never by
    /// `purged_capacity`.
    parked: Cell<u32>,
    /// For a free slice: when it became free (`os::now_ms`). Arena lock.
    freed_ms: Cell<u64>,
    /// `used` when the span was last looked at by a purge (`u32::MAX`:
    /// never): unchanged, there is nothing new to purge.
    used_at_purge: Cell<u32>,
}

/// Pages in the largest span.
const SPAN_MAX_PAGES: usize = MAX_SPAN_SLICES * SLICE_SIZE / PAGE_SIZE;
const PURGE_WORDS: usize = SPAN_MAX_PAGES / 64;
const FREE_MARK_WORDS: usize = MAX_BLOCKS_PER_SPAN.div_ceil(64);

// SAFETY: the `Cell` fields follow an ownership protocol: only the thread in
// `owner_thread` (or, for spans with no owner, the holder of the arena lock)
// reads or writes them, and ownership changes hands under the arena lock.
// Everything other threads touch is atomic.
unsafe impl Sync for Span {}

/// `owner_thread` of spans whose thread did not survive a `fork`: never equal
/// to a real thread pointer, so frees to them always take the remote path.
pub const DEAD_OWNER: usize = 1;

impl Span {
    /// A span that has no blocks: every heap's `current` entry points at one
    /// of these until it has a real span, so the fast path needs no null test.
    pub const fn empty() -> Span {
        Span {
            free: Cell::new(ptr::null_mut()),
            used: AtomicU32::new(0),
            block_size: AtomicU32::new(0),
            capacity: Cell::new(0),
            reserved: AtomicU32::new(0),
            class: Cell::new(0),
            state: AtomicU8::new(SpanState::Free as u8),
            slice_count: Cell::new(0),
            head_offset: AtomicU8::new(0),
            owner_thread: AtomicUsize::new(0),
            heap: Cell::new(ptr::null_mut()),
            thread_free: AtomicPtr::new(ptr::null_mut()),
            start: AtomicPtr::new(ptr::null_mut()),
            next: Cell::new(ptr::null_mut()),
            prev: Cell::new(ptr::null_mut()),
            purged_pages: [const { Cell::new(0) }; PURGE_WORDS],
            purged_capacity: Cell::new(0),
            parked: Cell::new(0),
            freed_ms: Cell::new(0),
            used_at_purge: Cell::new(u32::MAX),
        }
    }

    /// Sets up a span of `slice_count` slices at `start` for blocks of
    /// `block_size` bytes. Arena lock; the slices hold no live block.
    pub fn init(
        &self,
        start: *mut u8,
        slice_count: usize,
        slice_bytes: usize,
        class: u8,
        block_size: usize,
    ) {
        self.free.set(ptr::null_mut());
        self.used.store(0, Ordering::Relaxed);
        self.block_size.store(block_size as u32, Ordering::Relaxed);
        self.capacity.set(0);
        self.reserved.store(
            slice_bytes.checked_div(block_size).unwrap_or(0) as u32,
            Ordering::Relaxed,
        );
        self.class.set(class);
        self.set_state(SpanState::Free);
        self.slice_count.set(slice_count as u8);
        self.head_offset.store(0, Ordering::Relaxed);
        self.owner_thread.store(0, Ordering::Relaxed);
        self.heap.set(ptr::null_mut());
        self.thread_free.store(ptr::null_mut(), Ordering::Relaxed);
        self.start.store(start, Ordering::Relaxed);
        self.next.set(ptr::null_mut());
        self.prev.set(ptr::null_mut());
        self.forget_purged();
    }

    /// Marks a slice as the `offset`-th tail slice of a span. Arena lock.
    pub fn init_tail(&self, offset: usize) {
        self.head_offset.store(offset as u8, Ordering::Relaxed);
        self.set_state(SpanState::Free);
    }

    /// Live blocks and their bytes, as statistics (`used` is read racily;
    /// the current span's pin is not a block).
    pub fn live(&self) -> (usize, usize) {
        let state = self.state();
        if state == SpanState::Free {
            return (0, 0);
        }
        let pin = u32::from(state == SpanState::Current);
        let blocks = self.used().saturating_sub(pin) as usize;
        (blocks, blocks * self.block_size())
    }

    /// Returns the span to the free state. Arena lock; no live block.
    pub fn clear(&self) {
        self.forget_purged();
        self.set_state(SpanState::Free);
        self.block_size.store(0, Ordering::Relaxed);
        self.owner_thread.store(0, Ordering::Relaxed);
        self.heap.set(ptr::null_mut());
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

    #[inline(always)]
    pub fn free_head(&self) -> *mut Block {
        self.free.get()
    }

    #[inline(always)]
    pub fn set_free_head(&self, block: *mut Block) {
        self.free.set(block)
    }

    #[inline(always)]
    pub fn block_size(&self) -> usize {
        self.block_size.load(Ordering::Relaxed) as usize
    }

    pub fn class(&self) -> usize {
        self.class.get() as usize
    }

    pub fn slice_count(&self) -> usize {
        self.slice_count.get() as usize
    }

    #[inline(always)]
    pub fn head_offset(&self) -> usize {
        self.head_offset.load(Ordering::Relaxed) as usize
    }

    #[inline(always)]
    pub fn owner_thread(&self) -> usize {
        self.owner_thread.load(Ordering::Relaxed)
    }

    /// Hands the span to a heap of thread `thread_id` (arena lock or owner).
    pub fn set_owner(&self, heap: *mut Heap, thread_id: usize) {
        self.heap.set(heap);
        self.owner_thread.store(thread_id, Ordering::Relaxed);
    }

    pub fn heap(&self) -> *mut Heap {
        self.heap.get()
    }

    pub fn has_remote_frees(&self) -> bool {
        !self.thread_free.load(Ordering::Relaxed).is_null()
    }

    /// Whether `p` is the start of a block of this span (not an interior or
    /// out-of-range pointer). Reads only fields that are fixed while the span
    /// is in use, so any thread may ask.
    pub fn is_block_start(&self, p: *mut u8) -> bool {
        let size = self.block_size();
        let offset = (p as usize).wrapping_sub(self.start.load(Ordering::Relaxed) as usize);
        size != 0
            && offset < self.reserved.load(Ordering::Relaxed) as usize * size
            && offset.is_multiple_of(size)
    }

    /// When this free slice became free. Arena lock.
    pub fn freed_ms(&self) -> u64 {
        self.freed_ms.get()
    }

    pub fn set_freed_ms(&self, ms: u64) {
        self.freed_ms.set(ms)
    }

    fn forget_purged(&self) {
        for word in &self.purged_pages {
            word.set(0);
        }
        self.purged_capacity.set(0);
        self.parked.set(0);
        self.used_at_purge.set(u32::MAX);
    }

    fn page_is_purged(&self, page: usize) -> bool {
        self.purged_pages
            .get(page / 64)
            .is_some_and(|w| w.get() & (1 << (page % 64)) != 0)
    }

    /// Gives the OS back every page of the span that no live block touches,
    /// even while other blocks of the span are live: free blocks that start
    /// in such a page leave the free list (their link would be lost with the
    /// page) until [`Span::extend`] brings them back. Returns the bytes
    /// purged. Owner, claimer or arena-lock holder of an abandoned span;
    /// remote frees must have been collected first. A span whose block count
    /// has not moved since its last purge is skipped in O(1).
    pub fn purge_free_pages(&self) -> usize {
        let used = self.used();
        if self.free.get().is_null() || used == self.used_at_purge.get() {
            return 0;
        }
        self.used_at_purge.set(used);
        let size = self.block_size();
        let capacity = self.capacity.get() as usize;
        let start = self.start.load(Ordering::Relaxed) as usize;
        if size == 0 || capacity == 0 || capacity > MAX_BLOCKS_PER_SPAN {
            return 0;
        }
        // Which carved blocks are free: on the free list, or parked by an
        // earlier purge (capacity does not grow while blocks are parked).
        let mut free_marks = [0u64; FREE_MARK_WORDS];
        let mut block = self.free.get();
        while !block.is_null() {
            let index = (block as usize).wrapping_sub(start) / size;
            if index >= capacity || !set_bit(&mut free_marks, index) {
                crate::diag::fatal_pointer("free", "free list corrupted", block.cast());
            }
            // SAFETY: a free block of this span: its first word is its link.
            block = unsafe { (*block).next };
        }
        for index in 0..self.purged_capacity.get() as usize {
            if self.page_is_purged(index * size / PAGE_SIZE) {
                set_bit(&mut free_marks, index);
            }
        }
        // Pages a live block touches stay.
        let carved_pages = (capacity * size).div_ceil(PAGE_SIZE).min(SPAN_MAX_PAGES);
        let mut keep = [0u64; PURGE_WORDS];
        for index in (0..capacity).filter(|&i| !bit(&free_marks, i)) {
            let first = index * size / PAGE_SIZE;
            let last = ((index + 1) * size - 1) / PAGE_SIZE;
            for page in first..=last.min(SPAN_MAX_PAGES - 1) {
                set_bit(&mut keep, page);
            }
        }
        // Pages that go now: touched by no live block, not purged before.
        let mut goes = [0u64; PURGE_WORDS];
        let mut any = false;
        for page in (0..carved_pages).filter(|&p| !bit(&keep, p) && !self.page_is_purged(p)) {
            set_bit(&mut goes, page);
            any = true;
        }
        if !any {
            return 0;
        }
        for (word, new) in self.purged_pages.iter().zip(goes) {
            word.set(word.get() | new);
        }
        // Park the listed free blocks that now start in a purged page.
        let mut kept_head: *mut Block = ptr::null_mut();
        let mut kept_tail: *mut Block = ptr::null_mut();
        let mut block = self.free.get();
        while !block.is_null() {
            // SAFETY: as above.
            let next = unsafe { (*block).next };
            if !bit(&goes, ((block as usize) - start) / PAGE_SIZE) {
                // SAFETY: relinking free blocks of this span.
                unsafe { (*block).next = ptr::null_mut() };
                if kept_tail.is_null() {
                    kept_head = block;
                } else {
                    // SAFETY: as above.
                    unsafe { (*kept_tail).next = block };
                }
                kept_tail = block;
            }
            block = next;
        }
        self.free.set(kept_head);
        self.purged_capacity.set(capacity as u32);
        // Free blocks that start in a purged page: parked now (by this purge
        // or an earlier one).
        let parked = (0..capacity)
            .filter(|&i| bit(&free_marks, i) && self.page_is_purged(i * size / PAGE_SIZE))
            .count();
        self.parked.set(parked as u32);
        // Discard the runs of pages that go.
        let mut purged = 0;
        let mut page = 0;
        while page < carved_pages {
            if !bit(&goes, page) {
                page += 1;
                continue;
            }
            let first = page;
            while page < carved_pages && bit(&goes, page) {
                page += 1;
            }
            let bytes = (page - first) * PAGE_SIZE;
            crate::os::discard((start + first * PAGE_SIZE) as *mut u8, bytes);
            purged += bytes;
        }
        purged
    }

    /// Puts the parked blocks of the last purge back on the free list (their
    /// pages fault back in, zeroed, as they are used). Owner only.
    fn restore_parked(&self) -> bool {
        let parked_below = self.purged_capacity.get() as usize;
        if parked_below == 0 {
            return false;
        }
        let size = self.block_size();
        let start = self.start.load(Ordering::Relaxed) as usize;
        let mut head = self.free.get();
        // Link in reverse so the list runs in address order.
        let mut index = parked_below;
        while index > 0 {
            index -= 1;
            if self.page_is_purged(index * size / PAGE_SIZE) {
                let block = (start + index * size) as *mut Block;
                // SAFETY: a parked block: free, of this span, in mapped
                // (purged, so zero-filled on touch) memory.
                unsafe { (*block).next = head };
                head = block;
            }
        }
        self.free.set(head);
        self.forget_purged();
        !head.is_null()
    }

    /// Makes free blocks available: first the blocks parked by a purge,
    /// then never-used blocks from the bump region (about a page worth, at
    /// least one). Owner only. Returns false if there are none.
    pub fn extend(&self) -> bool {
        if self.restore_parked() {
            return true;
        }
        let capacity = self.capacity.get();
        let left = self.reserved.load(Ordering::Relaxed) - capacity;
        if left == 0 {
            return false;
        }
        let size = self.block_size();
        let per_page = PAGE_SIZE.checked_div(size).unwrap_or(0).max(1) as u32;
        let count = left.min(per_page);
        let first = self.start.load(Ordering::Relaxed) as usize + capacity as usize * size;
        // Link in address order so consecutive mallocs are adjacent.
        let mut next = self.free.get();
        let mut i = count as usize;
        while i > 0 {
            i -= 1;
            let block = (first + i * size) as *mut Block;
            // SAFETY: `block` lies in the span's never-used bump region, which
            // belongs to this span and is mapped read-write.
            unsafe { (*block).next = next };
            next = block;
        }
        self.free.set(next);
        self.capacity.set(capacity + count);
        true
    }

    /// Moves blocks freed by other threads onto the owner's free list and
    /// returns how many there were. Owner only.
    pub fn collect_remote(&self) -> u32 {
        if !self.has_remote_frees() {
            return 0;
        }
        let mut list = self.thread_free.swap(ptr::null_mut(), Ordering::Acquire);
        let mut free = self.free.get();
        let mut count = 0u32;
        while !list.is_null() {
            // SAFETY: every block on thread_free was pushed by `free_remote`
            // and is not live; the Acquire swap made its link visible.
            let next = unsafe { (*list).next };
            // SAFETY: as above; the block is ours again, relink it.
            unsafe { (*list).next = free };
            free = list;
            list = next;
            count += 1;
        }
        self.free.set(free);
        match self.used().checked_sub(count) {
            Some(used) => self.set_used(used),
            None => crate::diag::fatal("more blocks freed than allocated in a span (double free)"),
        }
        count
    }

    /// Whether the owner can hand out a block from this span without more
    /// work than `extend`.
    pub fn has_room(&self) -> bool {
        !self.free.get().is_null()
            || self.parked.get() != 0
            || self.capacity.get() < self.reserved.load(Ordering::Relaxed)
    }
}

/// Bit `i` of a bitmap (false past its end).
fn bit(words: &[u64], i: usize) -> bool {
    words.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

/// Sets bit `i`; false if `i` is past the bitmap's end.
fn set_bit(words: &mut [u64], i: usize) -> bool {
    match words.get_mut(i / 64) {
        Some(w) => {
            *w |= 1 << (i % 64);
            true
        }
        None => false,
    }
}

/// Pushes `block` on `span`'s remote list: one atomic operation (a CAS,
/// retried only if another thread pushed at the same moment). Aborts on a
/// block pushed twice in a row (a double free).
///
/// # Safety
/// `span` is the live span that holds `block`, a live block that the caller
/// gives up. After the push the owner may recycle the span at any time, so
/// nothing of it is touched once the CAS succeeds.
#[inline]
pub unsafe fn free_remote(span: *const Span, block: *mut Block) {
    // SAFETY: the span is live until our push lands (it holds `block`).
    let list = unsafe { ptr::addr_of!((*span).thread_free) };
    // SAFETY: as above.
    let mut head = unsafe { (*list).load(Ordering::Relaxed) };
    loop {
        if head == block {
            crate::diag::fatal_pointer("free", "double free", block.cast());
        }
        // SAFETY: the caller gave up `block`; its first word is ours to use.
        unsafe { (*block).next = head };
        // SAFETY: as above; the reference lives only for the CAS.
        let result = unsafe {
            (*list).compare_exchange_weak(head, block, Ordering::Release, Ordering::Relaxed)
        };
        match result {
            Ok(_) => {
                if head.is_null() {
                    // The owner may be idle: tell the purger.
                    crate::purger::note_pending();
                }
                return;
            }
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
            (*span).next.set(ptr::null_mut());
            (*span).prev.set(self.tail);
            if self.tail.is_null() {
                self.head = span;
            } else {
                (*self.tail).next.set(span);
            }
        }
        self.tail = span;
    }

    /// # Safety
    /// `span` is valid and a member of this list.
    pub unsafe fn remove(&mut self, span: *mut Span) {
        // SAFETY: members of the list and their neighbours are valid.
        unsafe {
            let (prev, next) = ((*span).prev.get(), (*span).next.get());
            if prev.is_null() {
                self.head = next;
            } else {
                (*prev).next.set(next);
            }
            if next.is_null() {
                self.tail = prev;
            } else {
                (*next).prev.set(prev);
            }
            (*span).next.set(ptr::null_mut());
            (*span).prev.set(ptr::null_mut());
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

    /// The member after `span`.
    ///
    /// # Safety
    /// `span` is a member of this list.
    pub unsafe fn next_of(span: *mut Span) -> *mut Span {
        // SAFETY: members are valid.
        unsafe { (*span).next.get() }
    }
}
