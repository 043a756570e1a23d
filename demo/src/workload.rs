//! The workload of the desktop-search-service case: an application that
//! builds release histories and icons over many requests, and a library that
//! keeps a cache of small blocks forever.
//!
//! Every block holds real bytes (so every page is touched and counts in RSS),
//! and every size comes from one seeded PRNG, so each run does exactly the
//! same allocations in the same order.

use std::sync::Mutex;

/// Requests the service handles while it builds its data.
pub const REQUESTS: usize = 400;
/// Release-history strings per request (32-512 B each).
pub const RECORDS_PER_REQUEST: usize = 1200;
/// Icons per request (4-64 KiB each).
pub const ICONS_PER_REQUEST: usize = 9;
/// Small blocks (16-256 B) the library allocates in each call.
pub const LIBRARY_BLOCKS_PER_CALL: usize = 2000;
/// The library keeps one block in this many for good; the rest is its
/// scratch for the call, freed when the call returns.
pub const LIBRARY_KEEP_ONE_IN: u64 = 26;
/// The seed: the same in every mode, so the modes differ only in allocator.
pub const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// A deterministic pseudo-random sequence (xorshift64).
pub struct Rng(u64);

impl Rng {
    /// A sequence started from `seed` (which must not be zero).
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// Fills `buf` with pseudo-random bytes, eight at a time.
    fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let tail = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        tail.copy_from_slice(&last[..tail.len()]);
    }

    /// A string of `len` printable ASCII characters (`'0'..='o'`).
    fn text(&mut self, len: usize) -> String {
        let mut bytes = vec![0u8; len];
        self.fill(&mut bytes);
        for b in &mut bytes {
            *b = (*b & 0x3f) + b'0';
        }
        String::from_utf8(bytes).expect("ASCII is UTF-8")
    }
}

/// The application's data: everything it builds and later frees at once.
#[derive(Default)]
pub struct AppData {
    history: Vec<String>,
    icons: Vec<Box<[u8]>>,
    bytes: usize,
}

impl AppData {
    /// Adds one request's release-history strings.
    pub fn add_history(&mut self, rng: &mut Rng) {
        for _ in 0..RECORDS_PER_REQUEST {
            let len = rng.range(32, 512);
            let record = rng.text(len);
            self.bytes += record.len();
            self.history.push(record);
        }
    }

    /// Adds one request's icons.
    pub fn add_icons(&mut self, rng: &mut Rng) {
        for _ in 0..ICONS_PER_REQUEST {
            let len = rng.range(4 << 10, 64 << 10);
            let mut icon = vec![0u8; len].into_boxed_slice();
            rng.fill(&mut icon);
            self.bytes += icon.len();
            self.icons.push(icon);
        }
    }

    /// Bytes of history and icons held (not counting the two index vectors).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The library's cache, kept for the life of the process as a library's
/// global state would be. Never freed: the application cannot free it.
static LIBRARY_CACHE: Mutex<LibraryCache> = Mutex::new(LibraryCache {
    entries: Vec::new(),
    entry_bytes: 0,
});

struct LibraryCache {
    entries: Vec<Box<[u8]>>,
    entry_bytes: usize,
}

/// One call into the library: it allocates [`LIBRARY_BLOCKS_PER_CALL`]
/// small blocks of real bytes, keeps about one in [`LIBRARY_KEEP_ONE_IN`]
/// in its cache forever and frees the rest (its scratch) on return. What it
/// keeps is spread over the whole run, among the application's blocks,
/// unless the call runs in an arena of its own.
pub fn library_call(rng: &mut Rng) {
    let mut cache = LIBRARY_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let mut scratch: Vec<Box<[u8]>> = Vec::with_capacity(LIBRARY_BLOCKS_PER_CALL);
    for _ in 0..LIBRARY_BLOCKS_PER_CALL {
        let len = rng.range(16, 256);
        let mut block = vec![0u8; len].into_boxed_slice();
        rng.fill(&mut block);
        if rng.next_u64().is_multiple_of(LIBRARY_KEEP_ONE_IN) {
            cache.entry_bytes += block.len();
            cache.entries.push(block);
        } else {
            scratch.push(block);
        }
    }
    drop(scratch);
}

/// Bytes the library cache holds: its entries plus its index vector.
pub fn library_cache_bytes() -> usize {
    let cache = LIBRARY_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache.entry_bytes + cache.entries.capacity() * size_of::<Box<[u8]>>()
}
