//! Size classes: which block size serves a request, and how big a span of
//! each class is.
//!
//! 16-byte steps up to 128 B, then four classes per doubling (worst-case
//! internal waste 25%, typically ~12%) up to [`MEDIUM_MAX`] = 128 KiB.
//! Larger requests are mapped directly (see `large`). Requests up to
//! [`SMALL_TABLE_MAX`] find their class with one table load.

/// Spans are made of slices of this many bytes (`segment` cuts its
/// segments into them): a class's span size is a count of slices.
pub const SLICE_SHIFT: usize = 16;
/// See [`SLICE_SHIFT`].
pub const SLICE_SIZE: usize = 1 << SLICE_SHIFT;

/// Largest request served from spans; anything larger gets its own mapping.
/// Chosen by measurement: 128 KiB keeps medium spans at 1 MiB and matches
/// glibc's default mmap threshold, while the large-block cache keeps bigger
/// blocks as cheap as span blocks under churn.
pub const MEDIUM_MAX: usize = 128 * 1024;
/// Requests up to this size use the lookup table.
pub const SMALL_TABLE_MAX: usize = 1024;
/// Number of size classes.
pub const CLASS_COUNT: usize = 48;
/// Each span holds at least this many blocks (so a medium span is not one
/// block with a span's overhead).
const MIN_BLOCKS_PER_SPAN: usize = 8;
/// Largest span, in slices.
pub const MAX_SPAN_SLICES: usize = 16;

/// Block size of class `class`.
pub const fn class_size(class: usize) -> usize {
    if class < 8 {
        (class + 1) * 16
    } else {
        let doubling = 7 + (class - 8) / 4;
        let step = (class - 8) % 4;
        (1 << doubling) + (step + 1) * (1 << (doubling - 2))
    }
}

/// Class of a request of `size` bytes, computed (no table).
pub const fn class_of_computed(size: usize) -> usize {
    if size <= 128 {
        if size == 0 {
            0
        } else {
            (size - 1) / 16
        }
    } else {
        let n = size - 1;
        let doubling = (usize::BITS - 1 - n.leading_zeros()) as usize;
        let step = (n >> (doubling - 2)) & 3;
        8 + (doubling - 7) * 4 + step
    }
}

const fn build_small_table() -> [u8; SMALL_TABLE_MAX / 16 + 1] {
    let mut table = [0u8; SMALL_TABLE_MAX / 16 + 1];
    let mut i = 0;
    while i < table.len() {
        table[i] = class_of_computed(i * 16) as u8;
        i += 1;
    }
    table
}

/// `SMALL_CLASS[(size + 15) / 16]` is the class of `size` for sizes up to
/// [`SMALL_TABLE_MAX`].
static SMALL_CLASS: [u8; SMALL_TABLE_MAX / 16 + 1] = build_small_table();

/// Entries of a table indexed by [`direct_index`].
pub const DIRECT_ENTRIES: usize = SMALL_TABLE_MAX / 16 + 1;

/// Where a request of `size <= SMALL_TABLE_MAX` bytes is in a table by size
/// (one entry per 16 bytes, as `SMALL_CLASS`).
#[inline(always)]
pub const fn direct_index(size: usize) -> usize {
    (size + 15) >> 4
}

/// The entries of a table by size that lead to `class`: every index whose
/// sizes `class` serves (none for classes above `SMALL_TABLE_MAX`).
pub fn direct_entries_of(class: usize) -> core::ops::Range<usize> {
    if class >= CLASS_COUNT || class_size(class) > SMALL_TABLE_MAX {
        return 0..0;
    }
    let first = if class == 0 {
        0
    } else {
        class_size(class - 1) / 16 + 1
    };
    first..class_size(class) / 16 + 1
}

/// Class of a request of `size <= MEDIUM_MAX` bytes.
#[inline(always)]
pub fn class_of(size: usize) -> usize {
    if size <= SMALL_TABLE_MAX {
        SMALL_CLASS[direct_index(size)] as usize
    } else {
        class_of_computed(size)
    }
}

/// The smallest class that holds `size` bytes with every block aligned to
/// `align` (a power of two, at most a slice), or `None` if no class does.
/// Spans start slice-aligned, so a class whose size is a multiple of `align`
/// aligns every block; each power of two is a class, so one always exists
/// up to [`MEDIUM_MAX`].
pub fn class_of_aligned(size: usize, align: usize) -> Option<usize> {
    if align > SLICE_SIZE || size > MEDIUM_MAX {
        return None;
    }
    let mut class = class_of(size.max(align));
    while class < CLASS_COUNT {
        if class_size(class).is_multiple_of(align) {
            return Some(class);
        }
        class += 1;
    }
    None
}

/// Most blocks any span holds (the smallest class's span).
pub const MAX_BLOCKS_PER_SPAN: usize = {
    let mut most = 0;
    let mut class = 0;
    while class < CLASS_COUNT {
        let blocks = span_slices(class) * SLICE_SIZE / class_size(class);
        if blocks > most {
            most = blocks;
        }
        class += 1;
    }
    most
};

/// Number of slices in a span of class `class`.
pub const fn span_slices(class: usize) -> usize {
    let bytes = class_size(class) * MIN_BLOCKS_PER_SPAN;
    let slices = bytes.div_ceil(SLICE_SIZE);
    if slices == 0 {
        1
    } else {
        slices
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entries `direct_entries_of` gives for each class are exactly
    /// those whose sizes the table lookup puts in that class.
    #[test]
    fn direct_entries_lead_to_the_class_of_their_sizes() {
        let mut owner = [usize::MAX; DIRECT_ENTRIES];
        for class in 0..CLASS_COUNT {
            for entry in direct_entries_of(class) {
                assert_eq!(owner[entry], usize::MAX, "entry {entry} listed twice");
                owner[entry] = class;
            }
        }
        for size in 0..=SMALL_TABLE_MAX {
            assert_eq!(owner[direct_index(size)], class_of(size), "size {size}");
        }
    }

    #[test]
    fn classes_are_increasing_and_aligned_to_16() {
        for c in 1..CLASS_COUNT {
            assert!(class_size(c) > class_size(c - 1));
            assert_eq!(class_size(c) % 16, 0);
        }
        assert_eq!(class_size(CLASS_COUNT - 1), MEDIUM_MAX);
    }

    #[test]
    fn sixteen_byte_steps_then_four_per_doubling() {
        for c in 0..8 {
            assert_eq!(class_size(c), 16 * (c + 1));
        }
        let mut doubling = 256;
        while doubling <= MEDIUM_MAX {
            let inside = (0..CLASS_COUNT)
                .filter(|&c| class_size(c) > doubling / 2 && class_size(c) <= doubling)
                .count();
            assert_eq!(inside, 4, "classes in ({}, {}]", doubling / 2, doubling);
            doubling *= 2;
        }
    }

    #[test]
    fn every_size_maps_to_the_smallest_class_that_fits() {
        for size in 0..=MEDIUM_MAX {
            let c = class_of(size);
            assert!(class_size(c) >= size, "size {size} class {c}");
            if c > 0 {
                assert!(class_size(c - 1) < size.max(1), "size {size} not tightest");
            }
            assert_eq!(c, class_of_computed(size));
        }
    }

    #[test]
    fn internal_waste_is_at_most_25_percent_past_128_bytes() {
        for size in 129..=MEDIUM_MAX {
            let usable = class_size(class_of(size));
            assert!((usable - size) * 4 <= usable, "size {size} usable {usable}");
        }
    }

    #[test]
    fn aligned_classes_exist_for_every_power_of_two() {
        let mut align = 16;
        while align <= SLICE_SIZE {
            let sizes = [1, align - 1, align, align + 1, 3 * align, MEDIUM_MAX / 2];
            for size in sizes.into_iter().filter(|&s| s <= MEDIUM_MAX) {
                if let Some(c) = class_of_aligned(size, align) {
                    assert_eq!(class_size(c) % align, 0);
                    assert!(class_size(c) >= size);
                } else {
                    panic!("no class for size {size} align {align}");
                }
            }
            align *= 2;
        }
    }

    #[test]
    fn spans_hold_at_least_eight_blocks_and_fit_a_segment() {
        for c in 0..CLASS_COUNT {
            let slices = span_slices(c);
            assert!(slices <= MAX_SPAN_SLICES);
            assert!(slices * SLICE_SIZE / class_size(c) >= MIN_BLOCKS_PER_SPAN);
        }
    }
}
