//! Drives random sequences of malloc / calloc / realloc / aligned / free /
//! trim against a model: every live block carries a pattern that must survive
//! until it is freed or reallocated, zeroed memory must read as zero, and no
//! two live blocks may overlap.
#![no_main]

use std::collections::BTreeMap;

use arenalloc_engine as engine;
use libfuzzer_sys::fuzz_target;

struct Live {
    ptr: *mut u8,
    size: usize,
    align: usize,
    seed: u8,
}

fn size_from(bytes: &[u8]) -> usize {
    let raw = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    // Mostly small, sometimes medium, rarely large (up to 8 MiB).
    match bytes[0] % 16 {
        0..=9 => raw % 1025,
        10..=13 => raw % (128 * 1024 + 64),
        _ => raw % (8 << 20),
    }
}

/// Offsets that carry the pattern: every byte of small blocks; for big
/// ones the first and last 256 bytes and one byte per 4 KiB page (enough to
/// catch overlap, lost pages and bad copies without memsetting megabytes on
/// every operation, which would slow the fuzzer a hundredfold).
fn pattern_offsets(size: usize) -> impl Iterator<Item = usize> {
    let dense = size <= 64 * 1024;
    let edge = if dense { size } else { 256 };
    let head = 0..edge.min(size);
    let tail = size.saturating_sub(edge).max(edge)..size;
    let pages = (edge..size.saturating_sub(edge)).step_by(4096);
    head.chain(pages).chain(tail)
}

fn fill(block: &Live) {
    for i in pattern_offsets(block.size) {
        // SAFETY: `ptr` has `size` writable bytes and `i < size`.
        unsafe { *block.ptr.add(i) = block.seed };
    }
}

fn check(block: &Live, upto: usize) {
    for i in pattern_offsets(block.size).filter(|&i| i < upto) {
        // SAFETY: `ptr` has at least `upto` readable bytes and `i < upto`.
        let b = unsafe { *block.ptr.add(i) };
        assert_eq!(b, block.seed, "block {:p} size {} corrupted at {}", block.ptr, block.size, i);
    }
}

fn no_overlap(ranges: &BTreeMap<usize, usize>, start: usize, len: usize) {
    let len = len.max(1);
    if let Some((&s, &l)) = ranges.range(..start + len).next_back() {
        assert!(s + l <= start, "overlap {s:#x}+{l} with {start:#x}+{len}");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut live: Vec<Live> = Vec::new();
    let mut ranges: BTreeMap<usize, usize> = BTreeMap::new();
    let mut seed = 1u8;
    for op in data.chunks_exact(6) {
        seed = seed.wrapping_add(1).max(1);
        let size = size_from(&op[2..6]);
        match op[0] % 6 {
            0 | 1 => {
                let zero = op[0] % 6 == 1;
                let p = if zero { engine::zalloc(size) } else { engine::malloc(size) };
                assert!(!p.is_null());
                assert_eq!(p as usize % 16, 0);
                // SAFETY: a live block of ours.
                assert!(unsafe { engine::usable_size(p) } >= size);
                if zero {
                    for i in pattern_offsets(size) {
                        // SAFETY: `size` readable bytes, `i < size`.
                        assert_eq!(unsafe { *p.add(i) }, 0, "calloc memory not zero at {i}");
                    }
                }
                no_overlap(&ranges, p as usize, size);
                ranges.insert(p as usize, size.max(1));
                let block = Live { ptr: p, size, align: 16, seed };
                fill(&block);
                live.push(block);
            }
            2 => {
                let align = 1usize << (4 + op[1] % 18);
                let p = engine::malloc_aligned(size, align);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "alignment {align}");
                no_overlap(&ranges, p as usize, size);
                ranges.insert(p as usize, size.max(1));
                let block = Live { ptr: p, size, align, seed };
                fill(&block);
                live.push(block);
            }
            3 if !live.is_empty() => {
                let i = op[1] as usize % live.len();
                let old = live.swap_remove(i);
                check(&old, old.size);
                ranges.remove(&(old.ptr as usize));
                // SAFETY: a live block of ours, aligned to `old.align`.
                let p = unsafe { engine::realloc_aligned(old.ptr, size, old.align) };
                assert!(!p.is_null());
                assert_eq!(p as usize % old.align, 0);
                let kept = Live { ptr: p, size: old.size, align: old.align, seed: old.seed };
                check(&kept, old.size.min(size));
                no_overlap(&ranges, p as usize, size);
                ranges.insert(p as usize, size.max(1));
                let block = Live { ptr: p, size, align: old.align, seed };
                fill(&block);
                live.push(block);
            }
            5 if op[1] % 8 == 0 => {
                // A purge while blocks live: every page it gives back and
                // every slice run it unmaps must not be under a live block
                // (the checks above find it), and must come back usable.
                engine::trim();
            }
            _ if !live.is_empty() => {
                let i = op[1] as usize % live.len();
                let old = live.swap_remove(i);
                check(&old, old.size);
                ranges.remove(&(old.ptr as usize));
                // SAFETY: a live block of ours, freed once.
                unsafe { engine::free(old.ptr) };
            }
            _ => {}
        }
    }
    for block in live {
        check(&block, block.size);
        // SAFETY: a live block of ours, freed once.
        unsafe { engine::free(block.ptr) };
    }
});
