//! Segments: 4 MiB regions, aligned to their size, each owned by one arena.
//!
//! ```text
//!  segment (4 MiB, 4 MiB-aligned)
//!  ┌──────────┬──────────┬──────────┬─────┬──────────┐
//!  │ slice 0  │ slice 1  │ slice 2  │ ... │ slice 63 │   slices: 64 KiB
//!  │ header:  │  span A (1 slice)   │     │          │
//!  │ arena,   │          │ span B (2 slices) ...     │
//!  │ spans[64]│          │          │     │          │
//!  └──────────┴──────────┴──────────┴─────┴──────────┘
//!  block p → segment = p & !(4 MiB - 1) → slice = (p - segment) >> 16
//!          → span_heads[slice] → head span
//! ```
//!
//! Large blocks get a mapping of their own with the same [`SegmentHeader`]
//! in its first page (see `large`), so one mask finds the owner of any block.
//! The [`OwnershipMap`] (one byte per 4 MiB of address space) says whether an
//! address is in a segment of ours before anything is read from it.

use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use crate::os;
use crate::span::Span;

pub const SEGMENT_SHIFT: usize = 22;
pub const SEGMENT_SIZE: usize = 1 << SEGMENT_SHIFT;
pub use crate::size_class::{SLICE_SHIFT, SLICE_SIZE};
pub const SLICES_PER_SEGMENT: usize = SEGMENT_SIZE / SLICE_SIZE;
/// Slice 0 holds the header.
pub const FIRST_USABLE_SLICE: usize = 1;
/// Bitmap of the slices that spans may use.
const USABLE_SLICES: u64 = !1u64;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum SegmentKind {
    /// Holds spans of size-classed blocks.
    Spans = 1,
    /// Holds one large block (see `large`).
    Large = 2,
}

/// The part of a header that every segment-aligned region of ours starts with.
#[repr(C)]
pub struct SegmentHeader {
    pub kind: SegmentKind,
    /// The arena that owns the region, type-erased: segments and large
    /// blocks sit below arenas and never look at it (`arena::Arena::owning`
    /// turns it back).
    pub arena: *const (),
}

/// A segment of spans. Lives at the start of its own slice 0. Reached only
/// through shared references: the span table is shared with the spans'
/// owners, and the arena-lock fields are `Cell`s.
#[repr(C)]
pub struct Segment {
    pub header: SegmentHeader,
    /// Per slice, the head span of the span that covers it, or the slice's
    /// own (free-state) entry: `free` finds a block's span with one load.
    /// Written under the arena lock while the slices hold no block; read by
    /// any thread that frees a block.
    span_heads: [AtomicPtr<Span>; SLICES_PER_SEGMENT],
    /// Bit `i` set: slice `i` is free. Arena lock.
    free_slices: Cell<u64>,
    /// Bit `i` set: slice `i` may hold resident pages (it was used since it
    /// was last discarded). Arena lock.
    dirty_slices: Cell<u64>,
    /// Bit `i` set: free slice `i` is unmapped (its address space given
    /// back, see [`Segment::unmap_free_runs`]); never dirty. Written under
    /// the arena lock; read without it by [`OwnershipMap::region_of`], so
    /// that an address in a hole, where someone else may have mapped
    /// memory, is not taken for ours (while such a mapping is there the bit
    /// cannot clear: mapping the slice again would fail).
    unmapped_slices: AtomicU64,
    /// Unmapped slices that could not be mapped again because something
    /// else was mapped there meanwhile: never used again by this segment.
    lost_slices: Cell<u64>,
    /// When the segment was mapped: the free time of slices never used.
    created_ms: Cell<u64>,
    /// Links in the arena's segment list. Arena lock.
    pub next: Cell<*mut Segment>,
    pub prev: Cell<*mut Segment>,
    pub spans: [Span; SLICES_PER_SEGMENT],
}

const _: () = assert!(core::mem::size_of::<Segment>() <= SLICE_SIZE);

impl Segment {
    /// Maps and initialises a segment for `arena` (see
    /// [`SegmentHeader::arena`]).
    pub fn create(arena: *const ()) -> Option<*mut Segment> {
        let base = os::map_aligned(SEGMENT_SIZE, SEGMENT_SIZE)?;
        os::no_huge_pages(base, SEGMENT_SIZE);
        let segment = base.cast::<Segment>();
        // SAFETY: the mapping is fresh, zeroed and large enough for the header
        // (checked at compile time above). All-zero bytes are a valid
        // `Segment` body (free spans, null links, empty bitmaps), so only the
        // header and the free bitmap need writing, through raw pointers.
        unsafe {
            ptr::addr_of_mut!((*segment).header).write(SegmentHeader {
                kind: SegmentKind::Spans,
                arena,
            });
            ptr::addr_of_mut!((*segment).free_slices).write(Cell::new(USABLE_SLICES));
        }
        // SAFETY: initialised above; shared references only from here on.
        let seg = unsafe { &*segment };
        for (head, own) in seg.span_heads.iter().zip(&seg.spans) {
            head.store(own as *const Span as *mut Span, Ordering::Relaxed);
        }
        // Slices never used count as free since now (see `free_since`): the
        // purger gives back their address space only after the purge delay,
        // like any other. One field, so that the span table's pages stay
        // untouched until spans use them.
        // SAFETY: initialised above; shared references only from here on.
        unsafe { &*segment }.created_ms.set(os::now_ms());
        OWNERSHIP.insert(base as usize, RegionMark::SpanSegment);
        crate::stats::mapped_add(SEGMENT_SIZE);
        Some(segment)
    }

    /// Unmaps a segment with no span in use: the parts of it that are
    /// mapped (a hole it gave back may hold someone else's mapping now).
    ///
    /// # Safety
    /// No block of the segment is live and no list links to it.
    /// Returns the bytes unmapped.
    pub unsafe fn destroy(segment: *mut Segment) -> usize {
        // SAFETY: the caller passes a live segment.
        let unmapped = unsafe { (*segment).unmapped() };
        OWNERSHIP.remove(segment as usize, RegionMark::SpanSegment);
        let base = segment as usize;
        let mut mapped = 0;
        for_each_run(!unmapped, |first, count| {
            os::unmap((base + first * SLICE_SIZE) as *mut u8, count * SLICE_SIZE);
            mapped += count * SLICE_SIZE;
        });
        crate::stats::mapped_sub(mapped);
        mapped
    }

    /// The unmapped slices (see `unmapped_slices`).
    fn unmapped(&self) -> u64 {
        self.unmapped_slices.load(Ordering::Acquire)
    }

    /// Whether an unmapped slice of this segment could not be mapped again:
    /// an empty segment like that is not worth keeping as a spare.
    pub fn has_lost_slices(&self) -> bool {
        self.lost_slices.get() != 0
    }

    /// Bytes of the segment resident now.
    pub fn resident_bytes(&self) -> usize {
        let mut resident = 0;
        for_each_run(!self.unmapped(), |first, count| {
            // SAFETY: a mapped run of this live segment.
            resident +=
                unsafe { os::resident_bytes_in(self.slice_start(first), count * SLICE_SIZE) };
        });
        resident
    }

    /// Gives back the address space of free slices that have been free
    /// since `freed_by_ms` or earlier, in runs of at least
    /// [`MIN_UNMAP_RUN`] slices, keeping the segment at [`MAX_HOLES`] holes
    /// or fewer (each hole splits the kernel's mapping in two, and a process
    /// has a limited number of mappings). Not for an empty segment, which
    /// goes (or stays as a spare) whole. Returns the bytes unmapped and
    /// whether some free slice is too young yet. Arena lock.
    pub fn unmap_free_runs(&self, freed_by_ms: u64) -> (usize, bool) {
        let candidates = self.free_slices.get() & !self.unmapped();
        if self.is_empty() || candidates == 0 {
            return (0, false);
        }
        let old = self.free_since(candidates, freed_by_ms);
        let young = candidates & !old;
        let mut unmapped = self.unmapped();
        let mut released = 0;
        let mut refused = false;
        for_each_run(old, |first, count| {
            let run = run_mask(first, count);
            if refused || count < MIN_UNMAP_RUN || holes(unmapped | run) > MAX_HOLES {
                return;
            }
            // Recorded before the unmap: from the moment the hole exists,
            // another mapping may land in it, and an address there must not
            // read as ours.
            self.unmapped_slices
                .store(unmapped | run, Ordering::Release);
            // Splitting a mapping fails at the process's mapping limit: then
            // the slices stay mapped (and are discarded instead).
            if !os::unmap(self.slice_start(first), count * SLICE_SIZE) {
                self.unmapped_slices.store(unmapped, Ordering::Release);
                refused = true;
                return;
            }
            crate::race_hooks::pause(crate::race_hooks::Point::HoleUnmapped);
            unmapped |= run;
            released += count * SLICE_SIZE;
        });
        self.dirty_slices.set(self.dirty_slices.get() & !unmapped);
        crate::stats::mapped_sub(released);
        (released, young != 0)
    }

    /// The slices of `slices` free since `freed_by_ms` or earlier (a slice
    /// never used since the segment was mapped: since then).
    fn free_since(&self, slices: u64, freed_by_ms: u64) -> u64 {
        let mut old = 0;
        let mut bits = slices;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let freed_ms = self.spans.get(i).map_or(0, |s| s.freed_ms());
            let freed_ms = if freed_ms == 0 {
                self.created_ms.get()
            } else {
                freed_ms
            };
            if freed_ms <= freed_by_ms {
                old |= 1 << i;
            }
        }
        old
    }

    /// Maps the unmapped slices of `run` again. `Taken` if something else
    /// is mapped in their hole now (the whole hole is then lost for this
    /// segment), `Failed` if the kernel refused for want of memory (nothing
    /// is lost: it may work later).
    fn map_again(&self, run: u64) -> os::FixedMap {
        let mut unmapped = self.unmapped();
        let mut outcome = os::FixedMap::Mapped;
        for_each_run(unmapped & run, |first, count| {
            if outcome != os::FixedMap::Mapped {
                return;
            }
            outcome = os::map_fixed_if_free(self.slice_start(first), count * SLICE_SIZE);
            match outcome {
                os::FixedMap::Mapped => {
                    os::no_huge_pages(self.slice_start(first), count * SLICE_SIZE);
                    unmapped &= !run_mask(first, count);
                    crate::stats::mapped_add(count * SLICE_SIZE);
                }
                os::FixedMap::Taken => {
                    let hole = run_containing(unmapped, first);
                    self.lost_slices.set(self.lost_slices.get() | hole);
                }
                os::FixedMap::Failed => {}
            }
        });
        self.unmapped_slices.store(unmapped, Ordering::Relaxed);
        outcome
    }

    /// Whether `p` (inside this segment) lies in an unmapped slice.
    #[inline(always)]
    fn in_hole(&self, p: usize) -> bool {
        let slice = (p - self as *const Segment as usize) >> SLICE_SHIFT;
        self.unmapped() & (1u64 << (slice % SLICES_PER_SEGMENT)) != 0
    }

    /// Bytes of the segment mapped now (its slices less the holes it gave
    /// back).
    pub fn mapped_bytes(&self) -> usize {
        (SLICES_PER_SEGMENT - self.unmapped().count_ones() as usize) * SLICE_SIZE
    }

    pub fn is_empty(&self) -> bool {
        self.free_slices.get() == USABLE_SLICES
    }

    /// Address of slice `index`.
    pub fn slice_start(&self, index: usize) -> *mut u8 {
        (self as *const Segment as usize + index * SLICE_SIZE) as *mut u8
    }

    /// Takes `count` contiguous free slices and returns the head span,
    /// initialised for `class`. Arena lock.
    pub fn take_span(&self, count: usize, class: u8, block_size: usize) -> Option<*mut Span> {
        let first = loop {
            let usable = self.free_slices.get() & !self.lost_slices.get();
            let first = find_free_run(usable, count)?;
            // Each `Taken` loses at least one slice, so this ends.
            match self.map_again(run_mask(first, count)) {
                os::FixedMap::Mapped => break first,
                os::FixedMap::Taken => continue,
                os::FixedMap::Failed => return None,
            }
        };
        let run_mask = run_mask(first, count);
        self.free_slices.set(self.free_slices.get() & !run_mask);
        self.dirty_slices.set(self.dirty_slices.get() | run_mask);
        let run = self.spans.get(first..first + count)?;
        let head = run.first()?;
        for tail in run.iter().skip(1) {
            tail.init_tail();
        }
        for entry in self.span_heads.iter().skip(first).take(count) {
            entry.store(head as *const Span as *mut Span, Ordering::Relaxed);
        }
        head.init(
            self.slice_start(first),
            count,
            count * SLICE_SIZE,
            class,
            block_size,
        );
        Some(head as *const Span as *mut Span)
    }

    /// Gives a span's slices back to the segment. Arena lock.
    ///
    /// # Safety
    /// `span` is a head span of this segment with no live block.
    pub unsafe fn release_span(&self, span: *mut Span) {
        let index = self.span_index(span);
        // SAFETY: the caller passes a head span of this segment.
        let s = unsafe { &*span };
        let count = s.slice_count();
        s.clear();
        let now = os::now_ms();
        for (slice, head) in self
            .spans
            .iter()
            .zip(&self.span_heads)
            .skip(index)
            .take(count)
        {
            // A free slice leads to its own free entry, not to a head: it
            // may be unmapped and its address someone else's.
            slice.init_tail();
            slice.set_freed_ms(now);
            head.store(slice as *const Span as *mut Span, Ordering::Relaxed);
        }
        self.free_slices
            .set(self.free_slices.get() | run_mask(index, count));
    }

    /// Free slices that may still hold resident pages, and of those, the
    /// ones free since `freed_by_ms` or earlier. Arena lock.
    pub fn dirty_free_slices(&self, freed_by_ms: u64) -> (u64, u64) {
        let dirty = self.free_slices.get() & self.dirty_slices.get();
        let mut old = 0;
        let mut bits = dirty;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if self
                .spans
                .get(i)
                .is_some_and(|s| s.freed_ms() <= freed_by_ms)
            {
                old |= 1 << i;
            }
        }
        (dirty, old)
    }

    /// Returns the resident pages of free slices to the OS; returns the
    /// bytes discarded. Arena lock.
    pub fn discard_free_slices(&self) -> usize {
        self.discard_free_slices_freed_by(u64::MAX)
    }

    /// As [`Segment::discard_free_slices`], for the slices free since
    /// `freed_by_ms` or earlier. Arena lock.
    pub fn discard_free_slices_freed_by(&self, freed_by_ms: u64) -> usize {
        let (_, old) = self.dirty_free_slices(freed_by_ms);
        let mut discarded = 0;
        for_each_run(old, |first, count| {
            os::discard(self.slice_start(first), count * SLICE_SIZE);
            discarded += count * SLICE_SIZE;
        });
        self.dirty_slices.set(self.dirty_slices.get() & !old);
        discarded
    }

    /// Head spans in use, in slice order. Arena lock (their `used` and state
    /// are read racily, as statistics).
    pub fn for_each_span(&self, mut f: impl FnMut(&Span)) {
        let mut i = FIRST_USABLE_SLICE;
        while i < SLICES_PER_SEGMENT {
            let span = &self.spans[i];
            let is_head = core::ptr::eq(self.span_heads[i].load(Ordering::Relaxed), span);
            if self.free_slices.get() & (1 << i) == 0 && is_head {
                f(span);
                i += span.slice_count().max(1);
            } else {
                i += 1;
            }
        }
    }

    fn span_index(&self, span: *const Span) -> usize {
        (span as usize - self.spans.as_ptr() as usize) / core::mem::size_of::<Span>()
    }
}

/// Free runs shorter than this stay mapped (unmapping costs a system call
/// now and another when the run is used again).
pub const MIN_UNMAP_RUN: usize = 2;
/// Holes one segment may have in its mapping.
pub const MAX_HOLES: u32 = 8;

/// Calls `f(first, count)` for every run of consecutive set bits in `bits`.
fn for_each_run(bits: u64, mut f: impl FnMut(usize, usize)) {
    let mut todo = bits;
    while todo != 0 {
        let first = todo.trailing_zeros() as usize;
        let count = (todo >> first).trailing_ones() as usize;
        f(first, count);
        todo &= !run_mask(first, count);
    }
}

/// The run of consecutive set bits of `bits` that contains bit `index`.
fn run_containing(bits: u64, index: usize) -> u64 {
    let mut run = 0;
    for_each_run(bits, |first, count| {
        if (first..first + count).contains(&index) {
            run = run_mask(first, count);
        }
    });
    run
}

/// Runs of set bits in `bits`.
fn holes(bits: u64) -> u32 {
    (bits & !(bits << 1)).count_ones()
}

fn run_mask(first: usize, count: usize) -> u64 {
    let ones = if count >= 64 {
        u64::MAX
    } else {
        (1u64 << count) - 1
    };
    ones << first
}

/// Lowest index of `count` consecutive set bits in `free`.
fn find_free_run(free: u64, count: usize) -> Option<usize> {
    let mut candidates = free;
    for shift in 1..count {
        candidates &= free >> shift;
    }
    if candidates == 0 {
        None
    } else {
        Some(candidates.trailing_zeros() as usize)
    }
}

/// Segment base of any address.
#[inline(always)]
pub fn segment_base(p: usize) -> usize {
    p & !(SEGMENT_SIZE - 1)
}

/// The span that holds block `p` of a `Spans` segment.
///
/// # Safety
/// `segment` is a live `Spans` segment that contains `p`.
#[inline(always)]
pub unsafe fn span_of(segment: *mut Segment, p: *mut u8) -> *mut Span {
    let slice = (p as usize - segment as usize) >> SLICE_SHIFT;
    // SAFETY: `slice` < SLICES_PER_SEGMENT because `p` is inside `segment`;
    // every entry leads to a span entry of the same segment.
    unsafe {
        let heads = ptr::addr_of!((*segment).span_heads).cast::<AtomicPtr<Span>>();
        (*heads.add(slice)).load(Ordering::Relaxed)
    }
}

/// User-space virtual addresses with 4-level page tables: 47 bits on x86-64,
/// 48 on aarch64. One bit per segment of that range.
#[cfg(target_arch = "x86_64")]
const ADDRESS_BITS: usize = 47;
#[cfg(not(target_arch = "x86_64"))]
const ADDRESS_BITS: usize = 48;
/// Segment-sized pieces of that range: one byte each in the map.
const MAP_SLOTS: usize = 1 << (ADDRESS_BITS - SEGMENT_SHIFT);

/// One byte per segment-sized piece of the address space, saying what
/// region of ours starts there (a [`RegionMark`], or 0: none). It lives in
/// `.bss`: untouched parts cost no memory (32 MiB of address space; a page
/// of it covers 16 GiB). `free`'s fast path learns from one byte compare
/// both that a block is ours and that it lies in a span segment, without a
/// load of the header's kind; a byte, not a bit, so that the look-up is a
/// shift, a bounds test and that compare (a bit map took four instructions
/// more). A large block aligned to a segment or more is marked at the
/// block, its header one segment below (see `large`).
///
/// `free` and `realloc` look a live block up without more ado: its region
/// cannot go meanwhile. [`OwnershipMap::inspect`] takes any address, where
/// the region may be unmapped between the look at the mark and the read of
/// its header; so inspectors count themselves in, and removing a region
/// waits until the inspectors that might have seen its mark are out before
/// the caller unmaps it. Two counters and an epoch (as in sleepable RCU): an
/// inspector counts itself in the current epoch's counter; a remover flips
/// the epoch and waits only for the old counter, so a stream of inspectors
/// cannot hold it up (they count in the new one).
pub struct OwnershipMap {
    marks: [AtomicU8; MAP_SLOTS],
    inspectors: [AtomicUsize; 2],
    epoch: AtomicUsize,
    /// One remover at a time: two flips during one wait would send the
    /// second remover to wait on the wrong counter.
    removers: crate::sync::Mutex<()>,
}

pub static OWNERSHIP: OwnershipMap = OwnershipMap {
    marks: [const { AtomicU8::new(0) }; MAP_SLOTS],
    inspectors: [const { AtomicUsize::new(0) }; 2],
    epoch: AtomicUsize::new(0),
    removers: crate::sync::Mutex::new(()),
};

/// What starts at a base address entered in the [`OwnershipMap`] (its
/// byte there; 0 is none).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum RegionMark {
    /// A span segment, its header at the base.
    SpanSegment = 1,
    /// A large block's mapping, its header at the base.
    Large = 2,
    /// A large block aligned to a segment or more, starting at the base;
    /// its header lies one segment below.
    LargeShifted = 3,
}

impl OwnershipMap {
    /// The byte of the segment-sized piece at `base`, if the map covers it.
    #[inline(always)]
    fn slot(&self, base: usize) -> Option<&AtomicU8> {
        self.marks.get(base >> SEGMENT_SHIFT)
    }

    pub fn insert(&self, base: usize, mark: RegionMark) {
        if let Some(slot) = self.slot(base) {
            slot.store(mark as u8, Ordering::Release);
        }
    }

    /// Forgets the region at `base`; returns once no [`inspect`] can still
    /// read its header, so the caller may unmap it.
    ///
    /// [`inspect`]: OwnershipMap::inspect
    pub fn remove(&self, base: usize, mark: RegionMark) {
        if let Some(slot) = self.slot(base) {
            debug_assert_eq!(slot.load(Ordering::Relaxed), mark as u8);
            slot.store(0, Ordering::SeqCst);
        }
        crate::race_hooks::pause(crate::race_hooks::Point::SegmentBeforeUnmap);
        // Dekker with `inspect`: it counts itself in, then reads the mark;
        // we cleared the mark, then flip the epoch and read the old count
        // (all SeqCst). Either it saw the mark clear, or we see it counted:
        // an inspector that read the old epoch before our flip counts in
        // the old counter; one that read the new epoch comes after our
        // flip, so after our clear, and sees the mark clear.
        let _one = self.removers.lock();
        let old = self.epoch.fetch_add(1, Ordering::SeqCst) % 2;
        while self.inspectors[old].load(Ordering::SeqCst) != 0 {
            crate::os::yield_now();
        }
    }

    /// Calls `f` with the header of the region of ours that holds `p` (see
    /// [`region_of`]), while that region cannot be unmapped; `None` if `p`
    /// is not in one. For addresses that need not be live blocks.
    ///
    /// [`region_of`]: OwnershipMap::region_of
    pub fn inspect<R>(&self, p: usize, f: impl FnOnce(*mut SegmentHeader) -> R) -> Option<R> {
        let epoch = self.epoch.load(Ordering::SeqCst) % 2;
        self.inspectors[epoch].fetch_add(1, Ordering::SeqCst);
        // The mark is read with SeqCst ordering after the count (the look-up
        // below loads with Acquire, which alone may move before it).
        core::sync::atomic::fence(Ordering::SeqCst);
        crate::race_hooks::pause(crate::race_hooks::Point::InspectCounted);
        let result = self.header_of(p).and_then(|header| {
            crate::race_hooks::pause(crate::race_hooks::Point::OwnershipMarkSeen);
            // SAFETY: the region is mapped until our count leaves.
            let in_hole = unsafe { Self::header_in_hole(header, p) };
            (!in_hole).then(|| f(header))
        });
        self.inspectors[epoch].fetch_sub(1, Ordering::Release);
        result
    }

    /// In the child after `fork`: the threads that were inspecting are gone.
    pub fn after_fork_child(&self) {
        for count in &self.inspectors {
            count.store(0, Ordering::Relaxed);
        }
        // SAFETY: the child has one thread, which is not removing a region
        // (`fork` does not run inside `remove`), so the lock is free or was
        // held by a thread that does not exist here.
        unsafe { self.removers.reset() };
    }

    /// The header that owns address `p`, if `p` is in a region of ours.
    #[inline(always)]
    pub fn header_of(&self, p: usize) -> Option<*mut SegmentHeader> {
        if let Some(segment) = self.span_segment_of(p) {
            return Some(segment.cast());
        }
        self.large_header_of(p)
    }

    /// The span segment that holds `p`, if `p` is in one of ours: `free`'s
    /// fast path. `None` may still be ours (a large block), which
    /// [`header_of`] finds.
    ///
    /// [`header_of`]: OwnershipMap::header_of
    #[inline(always)]
    pub fn span_segment_of(&self, p: usize) -> Option<*mut Segment> {
        #[cfg(all(target_arch = "x86_64", not(arenalloc_tsan)))]
        {
            // The compiler turns the bounds test of `slot` into a test of the
            // top bits and then shifts again, and it never merges an atomic
            // load into a compare: written out, the look-up is a shift, a
            // bounds test and one compare of the byte in memory.
            // SAFETY: `marks` is a live array of `MAP_SLOTS` bytes and the
            // index is tested against that first; the byte is read once, an
            // aligned single-byte load (single-copy atomic, as the acquire
            // load it replaces, which is a plain load on x86). Not
            // `readonly`: no read of the segment may move before it.
            unsafe {
                core::arch::asm!(
                    "mov {slot}, {p}",
                    "shr {slot}, {shift}",
                    "cmp {slot}, {slots}",
                    "jae {not_ours}",
                    "cmp byte ptr [{marks} + {slot}], {span}",
                    "jne {not_ours}",
                    p = in(reg) p,
                    slot = out(reg) _,
                    marks = in(reg) self.marks.as_ptr(),
                    shift = const SEGMENT_SHIFT,
                    slots = const MAP_SLOTS,
                    span = const RegionMark::SpanSegment as u8,
                    not_ours = label { return None; },
                    options(nostack),
                );
            }
            Some(segment_base(p) as *mut Segment)
        }
        #[cfg(any(not(target_arch = "x86_64"), arenalloc_tsan))]
        {
            self.marked(segment_base(p), RegionMark::SpanSegment)
                .then(|| segment_base(p) as *mut Segment)
        }
    }

    /// Whether the segment-aligned `base` starts a region marked `mark`.
    #[inline(always)]
    fn marked(&self, base: usize, mark: RegionMark) -> bool {
        self.slot(base)
            .is_some_and(|slot| slot.load(Ordering::Acquire) == mark as u8)
    }
    /// The header of the region of ours that holds `p`: as [`header_of`],
    /// except that an address in a hole of a segment (an unmapped slice,
    /// where another mapping may be now) is not ours.
    ///
    /// [`header_of`]: OwnershipMap::header_of
    #[inline(always)]
    pub fn region_of(&self, p: usize) -> Option<*mut SegmentHeader> {
        let header = self.header_of(p)?;
        // SAFETY: the map holds live headers only (the caller's block keeps
        // the region mapped).
        let in_hole = unsafe { Self::header_in_hole(header, p) };
        (!in_hole).then_some(header)
    }

    /// Whether `p` lies in an unmapped slice of the region `header` starts.
    ///
    /// # Safety
    /// `header` is a live header of ours that stays mapped meanwhile.
    #[inline(always)]
    unsafe fn header_in_hole(header: *mut SegmentHeader, p: usize) -> bool {
        // SAFETY: a Spans header starts a live segment whose
        // `unmapped_slices` is atomic.
        unsafe { (*header).kind == SegmentKind::Spans && (*header.cast::<Segment>()).in_hole(p) }
    }

    /// The header of the large block that holds `p`, if `p` is in one.
    #[cold]
    #[inline(never)]
    fn large_header_of(&self, p: usize) -> Option<*mut SegmentHeader> {
        let base = segment_base(p);
        if self.marked(base, RegionMark::Large) {
            Some(base as *mut SegmentHeader)
        } else if self.marked(base, RegionMark::LargeShifted) {
            Some((base - SEGMENT_SIZE) as *mut SegmentHeader)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_runs_are_found_lowest_first() {
        assert_eq!(find_free_run(0b1110, 1), Some(1));
        assert_eq!(find_free_run(0b1110, 3), Some(1));
        assert_eq!(find_free_run(0b1110, 4), None);
        assert_eq!(find_free_run(0b1101_1011, 2), Some(0));
        assert_eq!(find_free_run(0b1101_1010, 2), Some(3));
        assert_eq!(find_free_run(USABLE_SLICES, 16), Some(1));
        assert_eq!(find_free_run(USABLE_SLICES, 63), Some(1));
        assert_eq!(find_free_run(0, 1), None);
    }

    #[test]
    fn runs_and_holes_are_counted() {
        let mut runs = [(0, 0); 4];
        let mut n = 0;
        for_each_run(0b1110_0110_0001, |first, count| {
            runs[n] = (first, count);
            n += 1;
        });
        assert_eq!(&runs[..n], &[(0, 1), (5, 2), (9, 3)]);
        assert_eq!(holes(0b1110_0110_0001), 3);
        assert_eq!(holes(0), 0);
        assert_eq!(holes(u64::MAX), 1);
        assert_eq!(holes(1 << 63 | 1), 2);
        for_each_run(u64::MAX, |first, count| assert_eq!((first, count), (0, 64)));
        assert_eq!(run_containing(0b0111_0110, 5), 0b0111_0000);
        assert_eq!(run_containing(0b0111_0110, 1), 0b0000_0110);
        assert_eq!(run_containing(0b0111_0110, 3), 0);
    }

    #[test]
    fn run_masks_cover_exactly_the_run() {
        assert_eq!(run_mask(1, 1), 0b10);
        assert_eq!(run_mask(2, 3), 0b11100);
        assert_eq!(run_mask(0, 64), u64::MAX);
    }

    #[test]
    fn ownership_map_tracks_insert_and_remove() {
        let base = 0x7012_3440_0000usize;
        assert!(OWNERSHIP.header_of(base + 100).is_none());
        OWNERSHIP.insert(base, RegionMark::SpanSegment);
        assert_eq!(OWNERSHIP.header_of(base + 100), Some(base as *mut _));
        assert_eq!(OWNERSHIP.span_segment_of(base + 100), Some(base as *mut _));
        OWNERSHIP.remove(base, RegionMark::SpanSegment);
        assert!(OWNERSHIP.header_of(base + 100).is_none());
        OWNERSHIP.insert(base, RegionMark::Large);
        assert_eq!(OWNERSHIP.header_of(base + 100), Some(base as *mut _));
        assert!(OWNERSHIP.span_segment_of(base + 100).is_none());
        OWNERSHIP.remove(base, RegionMark::Large);
        assert!(OWNERSHIP.header_of(base + 100).is_none());
        OWNERSHIP.insert(base, RegionMark::LargeShifted);
        assert_eq!(
            OWNERSHIP.header_of(base + 100),
            Some((base - SEGMENT_SIZE) as *mut _)
        );
        assert!(OWNERSHIP.span_segment_of(base + 100).is_none());
        OWNERSHIP.remove(base, RegionMark::LargeShifted);
        assert!(OWNERSHIP.header_of(usize::MAX - 5).is_none());
        // Past the map's range `free`'s look-up answers without reading
        // past the map (its bounds test is assembly of its own).
        for p in [1usize << ADDRESS_BITS, usize::MAX - 5, usize::MAX] {
            assert!(OWNERSHIP.span_segment_of(p).is_none(), "{p:#x}");
        }
        // The last piece in range.
        let last = (1usize << ADDRESS_BITS) - SEGMENT_SIZE;
        OWNERSHIP.insert(last, RegionMark::SpanSegment);
        assert_eq!(OWNERSHIP.span_segment_of(last + 100), Some(last as *mut _));
        OWNERSHIP.remove(last, RegionMark::SpanSegment);
        assert!(OWNERSHIP.span_segment_of(last + 100).is_none());
    }

    #[test]
    fn segment_header_fits_in_slice_zero() {
        assert!(core::mem::size_of::<Segment>() <= SLICE_SIZE);
    }
}
