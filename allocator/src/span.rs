//! Spans: runs of slices that hold blocks of one size class for one owner.
//!
//! A span's metadata lives in its segment's header (never next to the
//! blocks), so blocks carry no header and a freed block's link word is free
//! (its second word: see `LinkWord`) to link it into a list. Three lists
//! per span:
//! - `free`: blocks the owner hands out; owner-only, no read-modify-write
//!   (its head shares an atomic word with the count, for statistics).
//! - bump region (`capacity..reserved`): never-touched blocks, carved into
//!   `free` a page at a time so memory is faulted in only when used.
//! - `thread_free`: blocks freed by other threads, pushed with one CAS and
//!   taken all at once by the owner (`collect_remote`). The list's word
//!   holds its first block, its last block and its length, so the owner
//!   splices it in front of its own list without walking it: a walk reads
//!   every block, each last written by another core, one cache miss after
//!   another; `pop` reads them one at a time, with the next one prefetched,
//!   and checks each link before it hands the block out.
//!
//! Links are hardened against heap overflows and writes after free: a list
//! names blocks by index, not address, and the word stored in a free block
//! is `rotate_left(next index, 51) ^ key`, with a random key per span life.
//! The index sits in the word's top 13 bits, under the key. Decoding a word
//! that the list did not write (an attacker's, a live block's data) gives a
//! number far above the span's block count unless its low 51 bits match the
//! key's; an overflow from the block below writes the low bytes first, so
//! it is caught unless it guesses 48 bits of the key. A corrupted link is
//! reported before it is followed, and it can only ever lead to a block
//! start of the same span. The list end is
//! the index `reserved` (the block count), so one compare tells "a block",
//! "the end" and "corrupt" apart. Blocks handed out have their link word
//! cleared, so a live block never looks free; a block being freed whose
//! link word decodes to a link is probably freed already (a double free),
//! which the owner confirms by walking its lists.
//!
//! `used` counts blocks handed out and not yet back on `free`. It shares a
//! word with the index of `free`'s first block, so `malloc` and `free` move
//! both with the one store they make to the head anyway. It is written only
//! by the owner (plain load/store, never a read-modify-write) and read
//! racily by statistics.
//!
//! Span metadata is only ever reached through shared references: the
//! owner's fields are `Cell`s, what other threads touch is atomic.

use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use crate::os::PAGE_SIZE;
use crate::size_class::SLICE_SIZE;
use crate::size_class::{MAX_BLOCKS_PER_SPAN, MAX_SPAN_SLICES};

/// The link word of a block, its second 8 bytes: in a free block, the
/// encoded index of the next free block; in a block handed out, 0 until the
/// program writes it. Not the first word: programs write a block's first
/// bytes most, often just before they free it, and an 8-byte load that
/// overlaps a recent smaller store stalls (no store forwarding).
type LinkWord = u64;

/// Where the link word of the block at `block` is (every block has at
/// least 16 bytes).
#[inline(always)]
fn link_slot(block: *mut u8) -> *mut LinkWord {
    block.wrapping_add(8).cast::<LinkWord>()
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
/// to plain moves). Three cache lines by who writes them: the owner's (line
/// 0, written on every operation; no other thread's `free` touches it, only
/// statistics read `used` racily, and a claimer or the arena-lock holder
/// uses it while the span is theirs), the fixed
/// fields every freeing thread reads (line 1: remote frees never pull the
/// owner's line away from it, and the owner's stores never invalidate the
/// readers' copies), and `thread_free`, which other threads write.
#[repr(C, align(64))]
pub struct Span {
    // Line 0: what the owner writes on every operation, and its other
    // fields. No other thread's `free` touches this line, so the owner's
    // stores stay in its own cache.
    /// The owner's free list and its count, in one word that the fast
    /// paths load and store once: the bits in `HEAD_INDEX` hold the index
    /// of the list's first block (`reserved`: none; more: the list was
    /// corrupted, kept saturated at `HEAD_INDEX` rather than cut to a valid
    /// index), the bits above hold `used`: blocks out (including remote
    /// frees not yet collected; plus one while the span is its heap's
    /// current span, so the owner's free path never sees zero for it). A
    /// separate count cost each `malloc` and `free` a read-modify-write of
    /// memory on top of the store of the head. Written by the owner (or a
    /// claimer, or the arena-lock holder, while the span is theirs);
    /// statistics read the count racily (atomic, relaxed: plain moves).
    head: AtomicU64,
    /// The address of the list's first block when there is one (meaningless
    /// otherwise): `malloc` hands it out without turning the index into an
    /// address first, and `free` sets it to the pointer it has, so a block
    /// freed and allocated again costs no multiply on that path.
    free_block: Cell<*mut u8>,
    /// Blocks below this index take the owner's fast free path: `capacity`,
    /// or 0 while blocks are parked (so that every free checks whether its
    /// block is a parked, free one) or while the span is in the `full` list
    /// (whose first free moves it). One compare on the fast path for all
    /// three; 64 bits and a `Cell`, so that the compare reads it from
    /// memory. Owner (or arena-lock holder) only.
    fast_free_below: Cell<u64>,
    /// Owning heap (null when free or abandoned), type-erased: the span
    /// never looks at it; the `heap` module turns it back into its `Heap`
    /// (so spans sit below heaps). Owner and arena lock only.
    heap: Cell<*mut ()>,
    /// Links in a heap list or the arena's abandoned list.
    next: Cell<*mut Span>,
    prev: Cell<*mut Span>,
    class: Cell<u8>,
    /// Slices in this span (valid in the head slice). Arena lock.
    slice_count: Cell<u8>,
    _owner_line_end: [u8; OWNER_LINE_PAD],
    // Line 1: fixed while the span is in use (or written rarely: on a
    // state change, when blocks are carved), read by every thread that
    // frees one of its blocks: it stays shared in every reader's cache.
    /// Key of this span life's links (bit 0 set, so a zero word never
    /// decodes to a link).
    key: AtomicU64,
    /// First block (fixed while the span is in use).
    start: AtomicPtr<u8>,
    /// `block_size >> shift`'s inverse modulo 2^64: turns a block's offset
    /// into its index with one multiply (see [`Span::index_of`]).
    inverse: AtomicU64,
    /// `start` times `inverse` (wrapping): [`Span::index_of`] multiplies the
    /// block's address and subtracts this, one multiply and one subtraction
    /// from memory, without computing the offset first.
    start_scaled: AtomicU64,
    /// Block size; set while the span has no live block, read by any thread
    /// holding one of its blocks.
    /// 64 bits, so that the owner's multiply reads it from memory.
    block_size: AtomicU64,
    /// Thread that owns the span (0: none; `DEAD_OWNER`: a thread that did
    /// not survive a fork). Compared on every free to tell a local free from
    /// a remote one.
    owner_thread: AtomicUsize,
    /// Blocks that fit in the span (fixed while the span is in use); also
    /// the index that ends a list.
    reserved: AtomicU32,
    /// Blocks carved from the bump region so far (only these were ever
    /// handed out). Written by the owner; read by any thread that frees a
    /// block (it got the block after it was carved).
    capacity: AtomicU32,
    /// Trailing zero bits of `block_size`.
    shift: AtomicU8,
    /// A `SpanState`.
    state: AtomicU8,
    /// Blocks freed by threads other than the owner: the indexes of the
    /// list's first block (`reserved`: none) and last block, and how many
    /// blocks it holds, in one word (see [`remote_word`]; an empty list's
    /// word is `reserved`). In its own cache line: other threads write it.
    thread_free: Aligned64<AtomicU64>,
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
    /// The owner's frees into the span, while it was its heap's current
    /// span, since blocks were last parked (each took the checked path).
    /// Owner; reset by a purge (claimer or arena-lock holder).
    frees_while_parked: Cell<u32>,
}

/// The low 16 bits of `Span::head`: the free list's first index (above
/// every span's block count, so a saturated corrupt index stays corrupt).
/// 16 bits, so that the fast paths' masks and count steps are immediates.
const HEAD_INDEX: u64 = 0xffff;
/// One block out, in `Span::head` above the index.
const ONE_OUT: u64 = HEAD_INDEX + 1;
const _: () = assert!(ONE_OUT == 1 << 16);
const _: () = assert!((MAX_BLOCKS_PER_SPAN as u64) < HEAD_INDEX);

/// Padding that ends the owner's line (see `Span`).
const OWNER_LINE_PAD: usize = 14;
const _: () = {
    assert!(core::mem::offset_of!(Span, key) == 64);
    assert!(core::mem::offset_of!(Span, thread_free) == 128);
};

/// A value alone in its cache line.
#[repr(C, align(64))]
struct Aligned64<T>(T);

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
/// to a real thread id (see `thread::current_thread_id`), so frees to them
/// always take the remote path.
pub const DEAD_OWNER: usize = 1;

impl Span {
    /// A span that has no blocks: every heap's `current` entry points at one
    /// of these until it has a real span, so the fast path needs no null test.
    pub const fn empty() -> Span {
        Span {
            head: AtomicU64::new(0),
            free_block: Cell::new(ptr::null_mut()),
            key: AtomicU64::new(1),
            start: AtomicPtr::new(ptr::null_mut()),
            inverse: AtomicU64::new(0),
            block_size: AtomicU64::new(0),
            reserved: AtomicU32::new(0),
            capacity: AtomicU32::new(0),
            fast_free_below: Cell::new(0),
            start_scaled: AtomicU64::new(0),
            shift: AtomicU8::new(0),
            state: AtomicU8::new(SpanState::Free as u8),
            class: Cell::new(0),
            slice_count: Cell::new(0),
            _owner_line_end: [0; OWNER_LINE_PAD],
            owner_thread: AtomicUsize::new(0),
            heap: Cell::new(ptr::null_mut()),
            thread_free: Aligned64(AtomicU64::new(0)),
            next: Cell::new(ptr::null_mut()),
            prev: Cell::new(ptr::null_mut()),
            purged_pages: [const { Cell::new(0) }; PURGE_WORDS],
            purged_capacity: Cell::new(0),
            parked: Cell::new(0),
            freed_ms: Cell::new(0),
            used_at_purge: Cell::new(u32::MAX),
            frees_while_parked: Cell::new(0),
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
        let reserved = slice_bytes.checked_div(block_size).unwrap_or(0) as u64;
        let shift = block_size.trailing_zeros() % usize::BITS;
        self.set_used(0);
        self.set_free(reserved);
        self.key.store(new_span_key(start), Ordering::Relaxed);
        self.block_size.store(block_size as u64, Ordering::Relaxed);
        self.shift.store(shift as u8, Ordering::Relaxed);
        let inverse = odd_inverse(((block_size >> shift) as u64) | 1);
        self.inverse.store(inverse, Ordering::Relaxed);
        self.start_scaled
            .store((start as u64).wrapping_mul(inverse), Ordering::Relaxed);
        self.capacity.store(0, Ordering::Relaxed);
        self.reserved.store(reserved as u32, Ordering::Relaxed);
        self.class.set(class);
        self.set_state(SpanState::Free);
        self.slice_count.set(slice_count as u8);
        self.owner_thread.store(0, Ordering::Relaxed);
        self.heap.set(ptr::null_mut());
        self.thread_free.0.store(reserved, Ordering::Relaxed);
        self.start.store(start, Ordering::Relaxed);
        self.next.set(ptr::null_mut());
        self.prev.set(ptr::null_mut());
        self.forget_purged();
    }

    /// Marks a slice's entry as not a span of its own (a tail slice, or a
    /// free one). Arena lock.
    pub fn init_tail(&self) {
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
        self.reserved.store(0, Ordering::Relaxed);
        self.set_free(0);
        self.thread_free.0.store(0, Ordering::Relaxed);
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
        self.state.store(state as u8, Ordering::Relaxed);
        self.update_fast_free();
    }

    /// Recomputes `fast_free_below` after `state`, `capacity` or the parked
    /// count changed.
    #[inline(always)]
    fn update_fast_free(&self) {
        let below = if self.parked.get() != 0 || self.is_full() {
            0
        } else {
            u64::from(self.capacity.load(Ordering::Relaxed))
        };
        self.fast_free_below.set(below);
    }

    /// Blocks out (see `head`).
    #[inline(always)]
    pub fn used(&self) -> u32 {
        (self.head.load(Ordering::Relaxed) / ONE_OUT) as u32
    }

    /// Owner-only: sets the count of blocks out, keeping the list. The
    /// count's 48 bits hold `value` sign-extended, so that they wrap as a
    /// `u32` does: a count taken below zero by an undetected double free
    /// (`u32::MAX` from `used`) and stored back reaches zero again, in the
    /// fast paths' arithmetic, exactly when `used` does.
    #[inline(always)]
    pub fn set_used(&self, value: u32) {
        let head = self.head.load(Ordering::Relaxed);
        let count = value as i32 as i64 as u64;
        self.head
            .store((count << 16) | (head & HEAD_INDEX), Ordering::Relaxed);
    }

    /// Index of the first block of the owner's free list (see `head`).
    #[inline(always)]
    fn free_index(&self) -> u64 {
        self.head.load(Ordering::Relaxed) & HEAD_INDEX
    }

    /// Blocks that fit in the span; the index that ends its lists.
    #[inline(always)]
    pub fn reserved(&self) -> u64 {
        u64::from(self.reserved.load(Ordering::Relaxed))
    }

    /// How this span life encodes its links.
    #[inline(always)]
    pub fn link_code(&self) -> LinkCode {
        LinkCode {
            key: self.key.load(Ordering::Relaxed),
        }
    }

    /// The address of block `index` (wrapping: meaningless for an index
    /// past the span, which is never dereferenced).
    #[inline(always)]
    fn block_at(&self, index: u64) -> *mut u8 {
        let start = self.start.load(Ordering::Relaxed);
        start.wrapping_add((index as usize).wrapping_mul(self.block_size()))
    }

    /// Makes block `index` the head of the owner's free list. Owner (or
    /// arena-lock holder) only: the address comes from plain reads of the
    /// fields fixed while the span is in use (only the arena-lock holder
    /// writes them, while the span has no owner), which the multiply and
    /// the addition take straight from memory.
    #[inline(always)]
    fn set_free(&self, index: u64) {
        let head = self.head.load(Ordering::Relaxed);
        self.head.store(
            (head & !HEAD_INDEX) | index.min(HEAD_INDEX),
            Ordering::Relaxed,
        );
        self.set_free_block(index);
    }

    /// Sets `free_block` to block `index`'s address and returns it (see
    /// [`Span::set_free`]).
    #[inline(always)]
    fn set_free_block(&self, index: u64) -> *mut u8 {
        // SAFETY: both are live, aligned fields, and nobody writes them
        // while the caller owns the span (see above).
        let (start, block_size) =
            unsafe { (self.start.as_ptr().read(), self.block_size.as_ptr().read()) };
        let block = start.wrapping_add(index.wrapping_mul(block_size) as usize);
        self.free_block.set(block);
        block
    }

    /// Takes the first block of the owner's free list and clears its link
    /// word. Null if the list is empty, or corrupt: it leads outside the
    /// span (see [`Span::free_list_is_corrupt`]) or its first block's link
    /// does not decode (then `has_free` is still true: the caller reports
    /// it). Owner only.
    #[inline(always)]
    pub fn pop(&self) -> *mut u8 {
        self.take_first(0)
    }

    /// [`Span::pop`], counting the block out in the same store: `malloc`'s
    /// fast path.
    #[inline(always)]
    pub fn pop_counted(&self) -> *mut u8 {
        self.take_first(ONE_OUT)
    }

    /// [`Span::pop`], adding `out` (0 or [`ONE_OUT`]) to the head word.
    #[inline(always)]
    fn take_first(&self, out: u64) -> *mut u8 {
        // Read once: the compiler cannot tell the block's link word from
        // the span's fields, and would read it again after the link.
        let reserved = self.reserved();
        let head = self.head.load(Ordering::Relaxed);
        let index = head & HEAD_INDEX;
        if index >= reserved {
            return ptr::null_mut();
        }
        let block = self.free_block.get();
        let word = link_slot(block);
        // SAFETY: `index` is below `reserved` (checked above), so `block` is
        // block `index`, a block start of this span on its free list: its
        // link word is its encoded link, and it is ours to hand out.
        let next = self.link_code().decode(unsafe { word.read() });
        if next > reserved {
            // The link was overwritten, or the block is live (it came round
            // a second time: freed twice by two threads at once). Caught
            // before the block is handed out: null, and the slow path's
            // `pop` returns null again and reports it (no call here, so the
            // fast path needs no stack frame).
            return ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { word.write(0) };
        // `next` <= `reserved` fits the index bits.
        self.head.store(
            head.wrapping_sub(index)
                .wrapping_add(next)
                .wrapping_add(out),
            Ordering::Relaxed,
        );
        let next_block = self.set_free_block(next);
        prefetch(next_block);
        block
    }

    /// Blocks carved so far: a block start at or above this index was never
    /// handed out.
    #[inline(always)]
    pub fn capacity(&self) -> u64 {
        u64::from(self.capacity.load(Ordering::Relaxed))
    }

    /// Blocks below this index may take the owner's fast free path (see
    /// `fast_free_below`).
    #[inline(always)]
    pub fn fast_free_below(&self) -> u64 {
        self.fast_free_below.get()
    }

    /// Whether block `index` is parked (free, off the list, its page given
    /// back). Owner only.
    pub fn is_parked(&self, index: u64) -> bool {
        index < u64::from(self.purged_capacity.get())
            && self.page_is_purged(index as usize * self.block_size() / PAGE_SIZE)
    }

    /// Whether the owner's free list has a block.
    #[inline(always)]
    pub fn has_free(&self) -> bool {
        self.free_index() < self.reserved()
    }

    /// Whether the owner's free list leads to something that is not a
    /// block of this span: a link word was overwritten.
    pub fn free_list_is_corrupt(&self) -> bool {
        self.free_index() > self.reserved()
    }

    /// The index of the block that starts at `p`, or a number of at least
    /// `reserved` if `p` is not a block start of this span: for a valid
    /// offset `i * size`, multiplying by the inverse of the size's odd part
    /// leaves `i << shift`, and the rotation gives `i`; any other offset
    /// leaves low bits that the rotation moves to the top. Reads only fields
    /// fixed while the span is in use, so any thread may ask.
    #[inline(always)]
    pub fn index_of(&self, p: *mut u8) -> u64 {
        // (p - start) * inverse, as p * inverse - start * inverse.
        (p as u64)
            .wrapping_mul(self.inverse.load(Ordering::Relaxed))
            .wrapping_sub(self.start_scaled.load(Ordering::Relaxed))
            .rotate_right(u32::from(self.shift.load(Ordering::Relaxed)))
    }

    /// [`Span::index_of`] for the span's owner, whose reads of the fixed
    /// fields are plain loads, so that the multiply and the subtraction
    /// take them straight from memory (atomic loads are never merged into
    /// other instructions).
    ///
    /// # Safety
    /// The caller owns the span (which is in use): nothing writes these
    /// fields until it is given back, so plain reads race with no write.
    #[inline(always)]
    pub unsafe fn index_of_owned(&self, p: *mut u8) -> u64 {
        // SAFETY: the caller's promise; both are live, aligned `u64`s.
        let (inverse, start_scaled) = unsafe {
            (
                self.inverse.as_ptr().read(),
                self.start_scaled.as_ptr().read(),
            )
        };
        (p as u64)
            .wrapping_mul(inverse)
            .wrapping_sub(start_scaled)
            .rotate_right(u32::from(self.shift.load(Ordering::Relaxed)))
    }

    /// Whether `p` is the start of a block of this span (not an interior or
    /// out-of-range pointer).
    #[inline(always)]
    pub fn is_block_start(&self, p: *mut u8) -> bool {
        self.index_of(p) < self.reserved()
    }

    /// Whether the block at `p` (a block start of this span) looks free:
    /// its link word decodes to a link. A block handed out has that word
    /// cleared, and a program's own data decodes to a link with a chance of
    /// one in 2^50 or less; so this is almost surely a block freed already.
    ///
    /// # Safety
    /// `p` lies in this span's mapped memory.
    #[inline(always)]
    pub unsafe fn looks_free(&self, p: *mut u8) -> bool {
        // SAFETY: the caller's guarantee.
        unsafe { looks_like_link(p, self.link_code(), self.reserved()) }
    }

    /// Puts the block `p`, of index `index`, on the owner's free list and
    /// counts it back in, with one store of the head word; true if no
    /// block is out now. `code` is the span's link code. Owner only.
    ///
    /// # Safety
    /// `p` is the block of index `index` of this span, given up by the
    /// caller.
    #[inline(always)]
    pub unsafe fn push_local(&self, p: *mut u8, index: u64, code: LinkCode) -> bool {
        debug_assert!(index < self.reserved());
        let head = self.head.load(Ordering::Relaxed);
        let first = head & HEAD_INDEX;
        // SAFETY: the caller gives the block up; its link word is ours.
        unsafe { link_slot(p).write(code.encode(first)) };
        // `index` < `reserved` fits the index bits.
        let head = head
            .wrapping_sub(first)
            .wrapping_add(index)
            .wrapping_sub(ONE_OUT);
        self.head.store(head, Ordering::Relaxed);
        self.free_block.set(p);
        head < ONE_OUT
    }

    /// Whether the block of index `index` is on the owner's free list or
    /// on the list of blocks other threads freed: the owner's check of a
    /// suspected double free. Aborts on a corrupt list. Owner only.
    pub fn is_listed_free(&self, index: u64) -> bool {
        let (head, _, _) = remote_parts(self.thread_free.0.load(Ordering::Acquire));
        self.list_contains(self.free_index(), index) || self.list_contains(head, index)
    }

    /// Whether the list starting at `first` holds `index`. Pushes only
    /// prepend, so a list that another thread extends meanwhile is walked
    /// safely from a snapshot of its head.
    fn list_contains(&self, first: u64, index: u64) -> bool {
        let reserved = self.reserved();
        let code = self.link_code();
        let mut at = first;
        let mut steps = 0;
        while at < reserved {
            if at == index {
                return true;
            }
            steps += 1;
            if steps > reserved {
                crate::diag::fatal_pointer(
                    "free",
                    "free list has a cycle (double free)",
                    self.block_at(at),
                );
            }
            // SAFETY: `at` < reserved: a free block of this span.
            at = code.decode(unsafe { link_slot(self.block_at(at)).read() });
        }
        if at != reserved {
            self.report_corrupt_list();
        }
        false
    }

    /// Aborts: a list of this span leads outside it.
    #[cold]
    pub fn report_corrupt_list(&self) -> ! {
        crate::diag::fatal_pointer(
            "malloc",
            "free list corrupted (a freed block was overwritten, or freed twice by two threads at once) in the span at",
            self.start.load(Ordering::Relaxed),
        )
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
    pub fn owner_thread(&self) -> usize {
        self.owner_thread.load(Ordering::Relaxed)
    }

    /// Hands the span to a heap of thread `thread_id` (arena lock or owner).
    pub fn set_owner(&self, heap: *mut (), thread_id: usize) {
        self.heap.set(heap);
        self.owner_thread.store(thread_id, Ordering::Relaxed);
    }

    /// The owning heap, as given to [`Span::set_owner`].
    pub fn heap(&self) -> *mut () {
        self.heap.get()
    }

    pub fn has_remote_frees(&self) -> bool {
        self.thread_free.0.load(Ordering::Relaxed) != self.reserved()
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
        self.frees_while_parked.set(0);
        self.update_fast_free();
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
    #[link_section = "arenalloc_cold"]
    pub fn purge_free_pages(&self) -> usize {
        let used = self.used();
        if !self.has_free() || used == self.used_at_purge.get() {
            return 0;
        }
        self.used_at_purge.set(used);
        let size = self.block_size();
        let capacity = self.capacity.load(Ordering::Relaxed) as usize;
        let start = self.start.load(Ordering::Relaxed) as usize;
        if size == 0 || capacity == 0 || capacity > MAX_BLOCKS_PER_SPAN {
            return 0;
        }
        // Which carved blocks are free: on the free list, or parked by an
        // earlier purge (capacity does not grow while blocks are parked).
        let mut free_marks = [0u64; FREE_MARK_WORDS];
        self.mark_free_list(&mut free_marks, capacity);
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
        // Park the listed free blocks that now start in a purged page: the
        // others are linked again, in their list order.
        let (reserved, code) = (self.reserved(), self.link_code());
        let mut kept_head = reserved;
        let mut kept_tail: *mut u8 = ptr::null_mut();
        let mut index = self.free_index();
        while index < reserved {
            let block = self.block_at(index);
            // SAFETY: a free block of this span: its link word is its link.
            let next = code.decode(unsafe { link_slot(block).read() });
            if !bit(&goes, (block as usize - start) / PAGE_SIZE) {
                if kept_tail.is_null() {
                    kept_head = index;
                } else {
                    // SAFETY: relinking free blocks of this span.
                    unsafe { link_slot(kept_tail).write(code.encode(index)) };
                }
                kept_tail = block;
            }
            index = next;
        }
        if !kept_tail.is_null() {
            // SAFETY: as above.
            unsafe { link_slot(kept_tail).write(code.encode(reserved)) };
        }
        self.set_free(kept_head);
        self.purged_capacity.set(capacity as u32);
        // Free blocks that start in a purged page: parked now (by this purge
        // or an earlier one).
        let parked = (0..capacity)
            .filter(|&i| bit(&free_marks, i) && self.page_is_purged(i * size / PAGE_SIZE))
            .count();
        self.parked.set(parked as u32);
        self.frees_while_parked.set(0);
        // Frees must now check for parked blocks.
        self.update_fast_free();
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

    /// Marks the blocks of the owner's free list in `marks`, aborting if
    /// the list leads past the `capacity` carved blocks (corrupt) or to a
    /// block twice (a double free made it a cycle or a duplicate).
    fn mark_free_list(&self, marks: &mut [u64], capacity: usize) {
        let (reserved, code) = (self.reserved(), self.link_code());
        let mut index = self.free_index();
        while index < reserved {
            if index as usize >= capacity {
                self.report_corrupt_list();
            }
            if bit(marks, index as usize) {
                crate::diag::fatal_pointer("free", "double free", self.block_at(index));
            }
            set_bit(marks, index as usize);
            // SAFETY: a free block of this span: its link word is its link.
            index = code.decode(unsafe { link_slot(self.block_at(index)).read() });
        }
        if index != reserved {
            self.report_corrupt_list();
        }
    }

    /// Whether a purge parked free blocks of this span (then every free
    /// into it takes the checked path).
    pub fn has_parked(&self) -> bool {
        self.parked.get() != 0
    }

    /// Owner, on a checked free into the span while blocks are parked:
    /// counts it, and returns how many there have been since the blocks
    /// were parked.
    pub fn count_free_while_parked(&self) -> u32 {
        let n = self.frees_while_parked.get().saturating_add(1);
        self.frees_while_parked.set(n);
        n
    }

    /// Puts the parked blocks of the last purge back on the free list (each
    /// gets a link, so their pages fault back in, zeroed, now). A parked block found
    /// on the free list too was freed twice. Owner only.
    pub(crate) fn restore_parked(&self) -> bool {
        let parked_below = self.purged_capacity.get() as usize;
        if parked_below == 0 {
            return false;
        }
        let size = self.block_size();
        let mut listed = [0u64; FREE_MARK_WORDS];
        self.mark_free_list(&mut listed, self.capacity.load(Ordering::Relaxed) as usize);
        let code = self.link_code();
        let mut head = self.free_index();
        // Link in reverse so the list runs in address order.
        let mut index = parked_below;
        while index > 0 {
            index -= 1;
            if self.page_is_purged(index * size / PAGE_SIZE) {
                let block = self.block_at(index as u64);
                if bit(&listed, index) {
                    crate::diag::fatal_pointer(
                        "free",
                        "double free (of a block purged meanwhile)",
                        block,
                    );
                }
                // SAFETY: a parked block: free, of this span, in mapped
                // (purged, so zero-filled on touch) memory.
                unsafe { link_slot(block).write(code.encode(head)) };
                head = index as u64;
            }
        }
        self.set_free(head);
        self.forget_purged();
        self.has_free()
    }

    /// Makes free blocks available: first the blocks parked by a purge,
    /// then never-used blocks from the bump region (about a page worth, at
    /// least one). Owner only. Returns false if there are none.
    pub fn extend(&self) -> bool {
        if self.restore_parked() {
            return true;
        }
        let capacity = self.capacity.load(Ordering::Relaxed);
        let left = self.reserved.load(Ordering::Relaxed) - capacity;
        if left == 0 {
            return false;
        }
        let size = self.block_size();
        let per_page = PAGE_SIZE.checked_div(size).unwrap_or(0).max(1) as u32;
        let count = left.min(per_page);
        let code = self.link_code();
        // Link in address order so consecutive mallocs are adjacent.
        let mut next = self.free_index();
        let mut index = u64::from(capacity + count);
        while index > u64::from(capacity) {
            index -= 1;
            // SAFETY: the block lies in the span's never-used bump region,
            // which belongs to this span and is mapped read-write.
            unsafe { link_slot(self.block_at(index)).write(code.encode(next)) };
            next = index;
        }
        self.set_free(next);
        self.capacity.store(capacity + count, Ordering::Relaxed);
        self.update_fast_free();
        true
    }

    /// Moves blocks freed by other threads onto the owner's free list and
    /// returns how many there were. Aborts on a corrupt list or one with a
    /// block pushed twice. Owner only.
    pub fn collect_remote(&self) -> u32 {
        if !self.has_remote_frees() {
            return 0;
        }
        let (reserved, code) = (self.reserved(), self.link_code());
        let (first, last, pushed) =
            remote_parts(self.thread_free.0.swap(reserved, Ordering::Acquire));
        let capacity = self.capacity();
        if first >= capacity || last >= capacity || pushed == 0 || pushed > reserved {
            // Pushes store only block starts handed out, and count them.
            self.report_corrupt_list();
        }
        if self.parked.get() == 0 {
            // Spliced whole: no walk. `pop` checks each link before it
            // hands a block out, so a block pushed twice (which comes round
            // again live, its link cleared) is caught there; and the count
            // of pushes may then be too high, so the span's free blocks are
            // counted before it is retired (`check_before_retire`).
            let last_block = self.block_at(last);
            if self.has_free() {
                // SAFETY: `last` < capacity: a block of the list just taken,
                // ours now (the Acquire swap made its link visible).
                let link = unsafe { link_slot(last_block).read() };
                if code.decode(link) != reserved {
                    // Pushed twice: the list does not end there. The walk
                    // below finds the cycle.
                    return self.collect_walked(first, pushed);
                }
                // SAFETY: as above.
                unsafe { link_slot(last_block).write(code.encode(self.free_index())) };
            }
            self.set_free(first);
            return self.uncount_collected(pushed);
        }
        self.collect_walked(first, pushed)
    }

    /// [`Span::collect_remote`] of a list that must be walked: its first
    /// block and the count of its pushes.
    fn collect_walked(&self, first: u64, pushed: u64) -> u32 {
        let (reserved, code, capacity) = (self.reserved(), self.link_code(), self.capacity());
        // Blocks are parked (a parked block freed again must be caught
        // before it is listed twice), or the last block's link no longer
        // ends the list (it was pushed twice): walk.
        let mut count = 0u64;
        let mut tail = ptr::null_mut::<u8>();
        let mut index = first;
        while index < reserved {
            count += 1;
            if count > reserved || self.is_parked(index) {
                crate::diag::fatal_pointer(
                    "free",
                    "double free (a block freed twice by other threads)",
                    self.block_at(index),
                );
            }
            if index >= capacity {
                crate::diag::fatal_pointer(
                    "free",
                    "pointer is not a block in use (never handed out)",
                    self.block_at(index),
                );
            }
            tail = self.block_at(index);
            // SAFETY: every block on thread_free was pushed by `free_remote`
            // and is not live; the Acquire swap made its link visible.
            index = code.decode(unsafe { link_slot(tail).read() });
        }
        if index != reserved {
            self.report_corrupt_list();
        }
        if count != pushed || tail.is_null() {
            crate::diag::fatal_pointer(
                "free",
                "double free (a block freed twice by other threads at once)",
                self.block_at(first),
            );
        }
        // SAFETY: the tail is a block of the list just taken: ours now.
        unsafe { link_slot(tail).write(code.encode(self.free_index())) };
        self.set_free(first);
        self.uncount_collected(count)
    }

    /// Before a span with no block out goes back to its arena: every carved
    /// block must be free, listed once or parked. Else a block was freed
    /// twice without being caught at the free (two threads at once; the
    /// owner after the program overwrote the block's link word), `used`
    /// reached 0 early, and a block may still be live: aborts then, before
    /// the span's memory is reused or unmapped. Owner or arena-lock holder;
    /// O(free blocks), on the cold retire path only.
    pub fn check_before_retire(&self) {
        let capacity = self.capacity() as usize;
        if capacity > MAX_BLOCKS_PER_SPAN {
            self.report_corrupt_list();
        }
        let mut free_marks = [0u64; FREE_MARK_WORDS];
        self.mark_free_list(&mut free_marks, capacity);
        let listed: u32 = free_marks.iter().map(|w| w.count_ones()).sum();
        if listed + self.parked.get() != capacity as u32 {
            crate::diag::fatal_pointer(
                "free",
                "double free (a block freed twice, not caught when it was freed) in the span at",
                self.start.load(Ordering::Relaxed),
            );
        }
    }

    /// `count` blocks other threads freed came back: they are no longer
    /// out. Returns `count`.
    fn uncount_collected(&self, count: u64) -> u32 {
        let count = count as u32;
        match self.used().checked_sub(count) {
            Some(used) => self.set_used(used),
            None => crate::diag::fatal("more blocks freed than allocated in a span (double free)"),
        }
        count
    }

    /// Whether the owner can hand out a block from this span without more
    /// work than `extend`.
    pub fn has_room(&self) -> bool {
        self.has_free()
            || self.parked.get() != 0
            || self.capacity.load(Ordering::Relaxed) < self.reserved.load(Ordering::Relaxed)
    }
}

/// Whether the link word of the block at `p` decodes, with `code`, to a
/// link of a list
/// whose end is `reserved` (see [`Span::looks_free`]).
///
/// # Safety
/// `p` is readable for 8 bytes.
#[inline(always)]
pub unsafe fn looks_like_link(p: *mut u8, code: LinkCode, reserved: u64) -> bool {
    // SAFETY: the caller's guarantee.
    let word = unsafe { link_slot(p).read() };
    code.decode(word) <= reserved
}

/// Whether the link word of the block at `p` could be a link written with
/// `code`: its bits under the key's low 51 match, the index bits above are
/// anything (up to 8191). The free fast path's look for a double free: one
/// shift tests it, and no load of `reserved`. Weaker than
/// [`looks_like_link`] only for a word whose index bits lie between this
/// span's block count and 8191, which a word the list did not write has
/// with odds of 2^-51; a cleared link word (0) never passes (the key's bit
/// 0 is set).
///
/// # Safety
/// `p` is readable for 8 bytes.
#[inline(always)]
pub unsafe fn may_be_link(p: *mut u8, code: LinkCode) -> bool {
    // SAFETY: the caller's guarantee.
    let word = unsafe { link_slot(p).read() };
    (word ^ code.key) << (64 - LINK_ROTATION) == 0
}

const _: () = assert!(MAX_BLOCKS_PER_SPAN < 1 << (64 - LINK_ROTATION));

/// How one span life encodes the links of its lists (see the module).
#[derive(Clone, Copy)]
pub struct LinkCode {
    key: u64,
}

/// Where an index sits in a link word: its top 13 bits.
const LINK_ROTATION: u32 = 51;

impl LinkCode {
    #[inline(always)]
    fn encode(self, index: u64) -> LinkWord {
        index.rotate_left(LINK_ROTATION) ^ self.key
    }

    #[inline(always)]
    fn decode(self, word: LinkWord) -> u64 {
        (word ^ self.key).rotate_right(LINK_ROTATION)
    }
}

/// A per-process secret for the span keys (0: not drawn yet).
static KEY_SECRET: AtomicU64 = AtomicU64::new(0);
/// Span lives begun, so that a span reused at the same address gets
/// another key.
static KEY_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh key for the links of a span life starting at `start`: the
/// process secret mixed with the address and a counter, bit 0 set (a zero
/// word then decodes to an index with its top bit set: never a link).
fn new_span_key(start: *mut u8) -> u64 {
    let mut secret = KEY_SECRET.load(Ordering::Relaxed);
    if secret == 0 {
        // Two threads may both draw one; either secret is as good.
        secret = crate::os::random_u64() | 1;
        KEY_SECRET.store(secret, Ordering::Relaxed);
    }
    let n = KEY_COUNTER.fetch_add(1, Ordering::Relaxed);
    splitmix(secret ^ (start as u64) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1
}

/// SplitMix64's finaliser: a bijection that mixes every input bit into
/// every output bit.
fn splitmix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The inverse of the odd number `d` modulo 2^64 (Newton's iteration: each
/// step doubles the correct low bits, from 3).
const fn odd_inverse(d: u64) -> u64 {
    let mut x = d;
    let mut i = 0;
    while i < 5 {
        x = x.wrapping_mul(2u64.wrapping_sub(d.wrapping_mul(x)));
        i += 1;
    }
    x
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

/// Pushes the block `p` of index `index` on `span`'s remote list: one
/// atomic operation (a CAS, retried only if another thread pushed at the
/// same moment). Aborts on a block that looks freed already (a double free:
/// its link word decodes, or it heads the list). With `zero`, the block's
/// bytes are cleared first (secure mode).
///
/// # Safety
/// `span` is the live span that holds `p`, a block start of it (`index`)
/// that the caller gives up. After the push the owner may recycle the span
/// at any time, so nothing of it is touched once the CAS succeeds.
/// Inlined: a caller with `zero` false gets a copy that calls nothing (no
/// registers to save).
#[inline(always)]
pub unsafe fn free_remote(span: *const Span, p: *mut u8, index: u64, zero: bool) {
    // SAFETY: the span is live until our push lands (it holds `p`).
    let (code, end, list) = unsafe {
        (
            (*span).link_code(),
            (*span).reserved(),
            &(*span).thread_free.0,
        )
    };
    // SAFETY: as above; `p` is a block start of the span. (The key and the
    // list end as read above: read again, they took two more loads.)
    if unsafe { looks_like_link(p, code, end) } {
        crate::diag::fatal_pointer("free", "double free", p);
    }
    if zero {
        // SAFETY: the caller gave up `p`, a block of the span's size.
        unsafe { ptr::write_bytes(p, 0, (*span).block_size()) };
    }
    crate::race_hooks::pause(crate::race_hooks::Point::RemoteChecked);
    let mut word = list.load(Ordering::Relaxed);
    loop {
        let (head, last, count) = remote_parts(word);
        if head == index {
            crate::diag::fatal_pointer("free", "double free", p);
        }
        // SAFETY: the caller gave up `p`; its link word is ours to use.
        unsafe { link_slot(p).write(code.encode(head)) };
        // The first block pushed onto an empty list stays its last.
        let last = if head == end { index } else { last };
        let pushed = remote_word(index, last, count + 1);
        match list.compare_exchange_weak(word, pushed, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => {
                crate::race_hooks::pause(crate::race_hooks::Point::RemotePushed);
                if head == end {
                    // The owner may be idle: tell the purger.
                    crate::housekeeping::note_pending();
                }
                return;
            }
            Err(actual) => word = actual,
        }
    }
}

/// `thread_free`'s word for a list from block `first` to block `last`
/// holding `count` blocks: 16 bits for each index (every span's block
/// count, and so its list end, fits: see below), 32 for the count. A count
/// past 32 bits wraps into nonsense that `collect_remote` refuses. An empty
/// list's word is the list end, `reserved`. `first` and `last` are block
/// indexes, below 2^16, so they need no mask: without one the push's loop
/// holds no 64-bit constant, each of which took a register there (the
/// registers ran out, and the remote free saved two more).
#[inline(always)]
fn remote_word(first: u64, last: u64, count: u64) -> u64 {
    (count << 32) | (last << 16) | first
}

/// The first block, the last block and the length of the list in
/// `thread_free`'s `word`.
#[inline(always)]
fn remote_parts(word: u64) -> (u64, u64, u64) {
    (word & 0xffff, (word >> 16) & 0xffff, word >> 32)
}

const _: () = assert!(
    MAX_BLOCKS_PER_SPAN < 1 << 16,
    "a span's list end must fit the 16 bits of thread_free's indexes"
);

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

    /// Whether the list holds fewer than `n` spans (a walk of `n` at most).
    pub fn shorter_than(&self, n: usize) -> bool {
        let mut at = self.head;
        for _ in 0..n {
            if at.is_null() {
                return true;
            }
            // SAFETY: members of a list are live spans.
            at = unsafe { SpanList::next_of(at) };
        }
        false
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

/// Asks the CPU to bring the line of `p` into its cache: the next block on a
/// free list, whose link word the next `malloc` reads. Blocks freed by
/// another thread are cold in this core's cache, and that read was the
/// fast path's one stall.
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults and changes no memory,
    // whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::size_class::{class_size, span_slices, CLASS_COUNT};

    #[test]
    fn a_remote_word_gives_back_its_parts() {
        for first in [0u64, 1, 255, 4095, 0xffff] {
            for last in [0u64, 7, 1000, 0xffff] {
                for count in [0u64, 1, 65_536, u32::MAX as u64] {
                    let word = remote_word(first, last, count);
                    assert_eq!(remote_parts(word), (first, last, count), "{word:#x}");
                }
            }
        }
    }

    #[test]
    fn odd_inverses_are_inverses() {
        for d in (1..100_000u64).step_by(2) {
            assert_eq!(d.wrapping_mul(odd_inverse(d)), 1, "{d}");
        }
    }

    /// `index_of` gives the index of every block start and a number of at
    /// least `reserved` for every other offset in (and beyond) the span.
    #[test]
    fn index_of_recognises_exactly_the_block_starts() {
        let start = 0x7f12_3450_0000usize as *mut u8;
        for class in 0..CLASS_COUNT {
            let size = class_size(class);
            let bytes = span_slices(class) * SLICE_SIZE;
            let span = Span::empty();
            span.init(start, span_slices(class), bytes, class as u8, size);
            let reserved = span.reserved();
            // Every offset for the small spans, a stride (co-prime with the
            // sizes) over the large ones, plus both sides of each start.
            let stride = if bytes <= 1 << 17 { 1 } else { 7 };
            let mut offsets: std::vec::Vec<usize> = (0..bytes + 4096).step_by(stride).collect();
            for i in 0..=reserved as usize {
                offsets.extend([
                    i * size,
                    (i * size).wrapping_sub(1),
                    i * size + 1,
                    i * size + 16,
                ]);
            }
            for offset in offsets {
                let p = start.wrapping_add(offset);
                let index = span.index_of(p);
                // SAFETY: nothing writes the span meanwhile.
                assert_eq!(unsafe { span.index_of_owned(p) }, index);
                let expected = offset % size == 0 && offset / size < reserved as usize;
                assert_eq!(
                    index < reserved,
                    expected,
                    "class {class} ({size} B): offset {offset} gave index {index:#x}"
                );
                if expected {
                    assert_eq!(index as usize, offset / size);
                }
            }
            // Below the start.
            assert!(span.index_of(start.wrapping_sub(size)) >= reserved);
        }
    }

    /// `free`'s quick look passes every link the span could write and no
    /// cleared word, nor a link with any of its low 51 bits flipped.
    #[test]
    fn the_quick_double_free_look_passes_links_only() {
        let mut words = [0u64; 2];
        let first = words.as_mut_ptr();
        let p = first.cast::<u8>();
        // SAFETY: `first` points at two writable words.
        let set_link = |value: u64| unsafe { first.add(1).write(value) };
        for key in [1u64, 0x9e37_79b9_7f4a_7c15, u64::MAX] {
            let code = LinkCode { key };
            set_link(0);
            // SAFETY: `p` points at 16 readable bytes (link word second).
            assert!(
                !unsafe { may_be_link(p, code) },
                "cleared word, key {key:#x}"
            );
            for index in 0..=MAX_BLOCKS_PER_SPAN as u64 {
                set_link(code.encode(index));
                // SAFETY: as above.
                assert!(unsafe { may_be_link(p, code) }, "index {index}");
                for bit in 0..LINK_ROTATION {
                    set_link(code.encode(index) ^ (1 << bit));
                    // SAFETY: as above.
                    assert!(!unsafe { may_be_link(p, code) }, "index {index} bit {bit}");
                }
            }
        }
    }

    /// A span of one class over a zeroed slice of its own, given back when
    /// the test is done with it.
    struct SliceSpan {
        span: Span,
        start: *mut u8,
    }

    impl SliceSpan {
        const LAYOUT: std::alloc::Layout = match std::alloc::Layout::from_size_align(SLICE_SIZE, 64)
        {
            Ok(layout) => layout,
            Err(_) => panic!("slice layout"),
        };

        fn new(class: usize) -> SliceSpan {
            // SAFETY: a non-zero size.
            let start = unsafe { std::alloc::alloc_zeroed(Self::LAYOUT) };
            assert!(!start.is_null());
            let slice = SliceSpan {
                span: Span::empty(),
                start,
            };
            slice
                .span
                .init(start, 1, SLICE_SIZE, class as u8, class_size(class));
            slice
        }
    }

    impl Drop for SliceSpan {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with this layout; the span, the
            // only user of the memory, goes with it.
            unsafe { std::alloc::dealloc(self.start, Self::LAYOUT) };
        }
    }

    /// The list head and the count share a word: `pop_counted` and
    /// `push_local` move both, `pop` and `set_used` one each, and a corrupt
    /// index beyond the index bits stays corrupt instead of wrapping to a
    /// valid one.
    #[test]
    fn the_head_word_keeps_list_and_count_apart() {
        let slice = SliceSpan::new(0);
        let span = &slice.span;
        assert!(span.extend());
        span.set_used(1);
        let (a, b) = (span.pop_counted(), span.pop_counted());
        assert!(!a.is_null() && !b.is_null() && a != b);
        assert_eq!(span.used(), 3);
        let c = span.pop();
        assert_eq!(span.used(), 3);
        let code = span.link_code();
        // SAFETY (each push): a block of this span, handed out above and
        // given back once.
        assert!(!unsafe { span.push_local(c, span.index_of(c), code) });
        assert!(!unsafe { span.push_local(b, span.index_of(b), code) });
        assert!(unsafe { span.push_local(a, span.index_of(a), code) });
        assert_eq!(span.used(), 0);
        // Last in, first out, with the count untouched by `pop`.
        assert_eq!(span.pop(), a);
        assert_eq!(span.pop(), b);
        assert_eq!(span.pop(), c);
        assert_eq!(span.used(), 0);
        // A count below zero, stored back, reaches zero as a `u32` would.
        span.set_used(u32::MAX);
        assert_eq!(span.used(), u32::MAX);
        let (x, y) = (span.pop_counted(), span.pop_counted());
        assert_eq!(span.used(), 1);
        // SAFETY: as above.
        assert!(unsafe { span.push_local(x, span.index_of(x), code) });
        assert_eq!(span.used(), 0);
        assert!(span.has_free() && !span.free_list_is_corrupt());
        span.set_free(HEAD_INDEX + 1 + span.index_of(y));
        assert!(span.free_list_is_corrupt());
        assert_eq!(span.used(), 0);
        assert!(span.pop().is_null());
    }

    /// The owner's line (line 0) and the fields of the fixed line (line
    /// 1, up to `state`; the bytes after it are padding, never written).
    fn owner_and_fixed_bytes(span: &Span) -> [u8; 64 + FIXED_FIELDS_END] {
        let mut bytes = [0u8; 64 + FIXED_FIELDS_END];
        // SAFETY: these bytes are all fields of the span (line 0 ends with
        // an explicit, initialised pad), so they are initialised; they are
        // read only while no other thread writes the span.
        unsafe {
            ptr::copy_nonoverlapping(
                (span as *const Span).cast::<u8>(),
                bytes.as_mut_ptr(),
                bytes.len(),
            )
        };
        bytes
    }

    const FIXED_FIELDS_END: usize = core::mem::offset_of!(Span, state) + 1 - 64;

    /// A free by another thread writes the remote list's line (and the
    /// block) only: the owner's line and the fixed line are left as they
    /// were, so the owner's stores never wait for a line another core took.
    #[test]
    fn a_remote_free_writes_neither_the_owners_line_nor_the_fixed_one() {
        let slice = SliceSpan::new(3);
        let span = &slice.span;
        span.set_owner(ptr::null_mut(), 7);
        assert!(span.extend());
        let (a, b) = (span.pop(), span.pop());
        assert!(!a.is_null() && !b.is_null());
        span.set_used(2);
        let before = owner_and_fixed_bytes(span);
        let remote_before = span.thread_free.0.load(Ordering::Relaxed);
        let (a_index, b_index) = (span.index_of(a), span.index_of(b));
        let (a, b) = (a as usize, b as usize);
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: blocks of the live span, given up here; the owner
                // touches nothing until the pushes are done.
                unsafe {
                    free_remote(span, a as *mut u8, a_index, false);
                    free_remote(span, b as *mut u8, b_index, false);
                }
            });
        });
        assert_eq!(
            owner_and_fixed_bytes(span)[..64],
            before[..64],
            "owner's line"
        );
        assert_eq!(
            owner_and_fixed_bytes(span)[64..],
            before[64..],
            "fixed line"
        );
        assert_ne!(span.thread_free.0.load(Ordering::Relaxed), remote_before);
        // The owner gets both back.
        assert_eq!(span.collect_remote(), 2);
        assert_eq!(span.used(), 0);
    }
}
