//! Process-wide counters, kept off the fast paths: they change only when
//! memory is mapped or unmapped and when large blocks come and go. Live bytes
//! of small blocks are summed from span metadata on demand.

use core::sync::atomic::{AtomicUsize, Ordering};

static MAPPED: AtomicUsize = AtomicUsize::new(0);
static PEAK_MAPPED: AtomicUsize = AtomicUsize::new(0);
static LARGE_LIVE: AtomicUsize = AtomicUsize::new(0);
static LARGE_LIVE_BLOCKS: AtomicUsize = AtomicUsize::new(0);

pub fn mapped_add(bytes: usize) {
    let now = MAPPED.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK_MAPPED.fetch_max(now, Ordering::Relaxed);
}

/// Bytes mapped by the allocator now.
pub fn mapped_bytes() -> usize {
    MAPPED.load(Ordering::Relaxed)
}

/// Most bytes ever mapped at once.
pub fn peak_mapped_bytes() -> usize {
    PEAK_MAPPED.load(Ordering::Relaxed)
}

pub fn mapped_sub(bytes: usize) {
    MAPPED.fetch_sub(bytes, Ordering::Relaxed);
}

pub fn large_live_add(bytes: usize) {
    LARGE_LIVE.fetch_add(bytes, Ordering::Relaxed);
    LARGE_LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
}

pub fn large_live_sub(bytes: usize) {
    LARGE_LIVE.fetch_sub(bytes, Ordering::Relaxed);
    LARGE_LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
}

/// A live large block changed its usable size in place.
pub fn large_live_resize(old: usize, new: usize) {
    if new >= old {
        LARGE_LIVE.fetch_add(new - old, Ordering::Relaxed);
    } else {
        LARGE_LIVE.fetch_sub(old - new, Ordering::Relaxed);
    }
}

/// A snapshot of the allocator's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes mapped from the OS now (segments and large blocks).
    pub mapped_bytes: usize,
    /// Most bytes ever mapped at once.
    pub peak_mapped_bytes: usize,
    /// Bytes in blocks handed out and not freed (usable sizes), small and
    /// large. Blocks freed by another thread count until their owner
    /// collects them.
    pub live_bytes: usize,
    /// Blocks handed out and not freed.
    pub live_blocks: usize,
    /// Of `live_bytes`, in large blocks.
    pub large_live_bytes: usize,
    /// Span segments mapped.
    pub segments: usize,
    /// Resident set size of the process (from /proc), 0 if unknown.
    pub resident_bytes: usize,
}

impl Stats {
    /// The process-wide counters; the small blocks and segments, which only
    /// the arenas know, are left at 0 for the caller to count.
    pub fn from_counters() -> Stats {
        let large_live_bytes = LARGE_LIVE.load(Ordering::Relaxed);
        Stats {
            mapped_bytes: MAPPED.load(Ordering::Relaxed),
            peak_mapped_bytes: PEAK_MAPPED.load(Ordering::Relaxed),
            live_bytes: large_live_bytes,
            large_live_bytes,
            live_blocks: LARGE_LIVE_BLOCKS.load(Ordering::Relaxed),
            resident_bytes: crate::os::resident_bytes().unwrap_or(0),
            segments: 0,
        }
    }

    /// Counts live small blocks (`blocks` of `bytes` in all).
    pub fn add_small_live(&mut self, blocks: usize, bytes: usize) {
        self.live_blocks += blocks;
        self.live_bytes += bytes;
    }
}

/// What one arena holds, kept under its lock (slow paths only: spans taken
/// from and given back to the arena, large blocks mapped and freed).
#[derive(Clone, Copy, Debug, Default)]
pub struct ArenaAccounts {
    /// Bytes of spans handed to heaps (or abandoned) plus large mappings in
    /// use: what the arena's limit applies to.
    pub in_use_bytes: usize,
    /// Most `in_use_bytes` ever.
    pub peak_in_use_bytes: usize,
    /// 0: no limit.
    pub limit_bytes: usize,
    /// Usable bytes and count of live large blocks.
    pub large_live_bytes: usize,
    pub large_live_blocks: usize,
}

impl ArenaAccounts {
    pub const EMPTY: ArenaAccounts = ArenaAccounts {
        in_use_bytes: 0,
        peak_in_use_bytes: 0,
        limit_bytes: 0,
        large_live_bytes: 0,
        large_live_blocks: 0,
    };

    /// Bytes the arena may still put in use before it reaches its limit.
    pub fn headroom(&self) -> usize {
        if self.limit_bytes == 0 {
            usize::MAX
        } else {
            self.limit_bytes.saturating_sub(self.in_use_bytes)
        }
    }

    /// Puts `bytes` more in use if the limit allows; false (nothing changed)
    /// otherwise.
    pub fn reserve(&mut self, bytes: usize) -> bool {
        if bytes > self.headroom() {
            return false;
        }
        self.in_use_bytes += bytes;
        self.peak_in_use_bytes = self.peak_in_use_bytes.max(self.in_use_bytes);
        true
    }

    pub fn release(&mut self, bytes: usize) {
        self.in_use_bytes = self.in_use_bytes.saturating_sub(bytes);
    }
}

/// One arena's figures. `repr(C)`: the C API hands this very struct out as
/// `struct malloc_arena_stats` (field order as in `arenalloc.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Bytes in the arena's live blocks (usable sizes). Blocks freed by
    /// another thread count until their span's owner collects them.
    pub live_bytes: usize,
    /// The arena's live blocks.
    pub live_blocks: usize,
    /// Bytes of the arena's mappings that are resident now (from `mincore`).
    pub resident_bytes: usize,
    /// Bytes the arena has mapped (segments, large blocks, cached ones).
    pub mapped_bytes: usize,
    /// Bytes in spans that hold or may hold blocks, plus large mappings in
    /// use: live bytes rounded up to whole spans. The limit applies to this.
    pub in_use_bytes: usize,
    /// Most `in_use_bytes` at any time: an upper bound of peak live bytes,
    /// exact to a span.
    pub peak_in_use_bytes: usize,
    /// The arena's limit (0: none).
    pub limit_bytes: usize,
    /// Threads whose preferred arena this is.
    pub threads: usize,
    /// Spans holding blocks that other threads freed and the spans' owners
    /// have not collected yet. Those blocks still count in `live_*` and
    /// `in_use_bytes` until then; an allocation refused for the limit
    /// collects them first.
    pub pending_remote_spans: usize,
}
