//! Diagnostics without allocation: fixed buffers, hand-formatted numbers,
//! `write(2)` to stderr.

use crate::os;

/// A fixed-size line buffer; text past its end is dropped.
pub struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    pub const fn new() -> Self {
        Self {
            buf: [0; 256],
            len: 0,
        }
    }

    pub fn text(&mut self, s: &str) -> &mut Self {
        for &b in s.as_bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        self
    }

    /// Raw bytes (a path, a user's pattern), as they are.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.text_byte(b);
        }
        self
    }

    #[link_section = "arenalloc_cold"]
    pub fn num(&mut self, mut value: usize) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        for &d in digits.get(i..).unwrap_or(&[]) {
            self.text_byte(d);
        }
        self
    }

    #[link_section = "arenalloc_cold"]
    pub fn hex(&mut self, value: usize) -> &mut Self {
        self.text("0x");
        let mut started = false;
        for shift in (0..16).rev() {
            let nibble = (value >> (shift * 4)) & 0xf;
            if nibble != 0 || started || shift == 0 {
                started = true;
                self.text_byte(b"0123456789abcdef"[nibble]);
            }
        }
        self
    }

    /// Bytes as mebibytes with one decimal.
    pub fn mib(&mut self, bytes: usize) -> &mut Self {
        let tenths = bytes / (1 << 20) * 10 + (bytes % (1 << 20)) * 10 / (1 << 20);
        self.num(tenths / 10)
            .text(".")
            .num(tenths % 10)
            .text(" MiB")
    }

    /// Bytes as KiB below 1 MiB, else as MiB with one decimal.
    pub fn size(&mut self, bytes: usize) -> &mut Self {
        if bytes < 1 << 20 {
            self.num(bytes.div_ceil(1024)).text(" KiB")
        } else {
            self.mib(bytes)
        }
    }

    fn text_byte(&mut self, b: u8) {
        if self.len < self.buf.len() {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Writes the line to stderr.
    pub fn emit(&self) {
        os::write_all(2, self.as_bytes());
    }
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

/// Reports a misuse of the allocator (invalid or double free) and aborts:
/// continuing would corrupt memory.
#[cold]
pub fn fatal_pointer(operation: &str, problem: &str, p: *mut u8) -> ! {
    Line::new()
        .text("arenalloc: ")
        .text(operation)
        .text("(")
        .hex(p as usize)
        .text("): ")
        .text(problem)
        .text("; aborting\n")
        .emit();
    os::abort()
}

/// Reports a broken internal invariant and aborts.
#[cold]
pub fn fatal(message: &str) -> ! {
    Line::new()
        .text("arenalloc: fatal: ")
        .text(message)
        .text("\n")
        .emit();
    os::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_format_like_printf() {
        let mut l = Line::new();
        l.num(0)
            .text(" ")
            .num(1234567)
            .text(" ")
            .hex(0xdead_beef)
            .text(" ")
            .hex(0);
        assert_eq!(l.as_bytes(), b"0 1234567 0xdeadbeef 0x0");
        let mut m = Line::new();
        m.mib(3 * (1 << 20) + (1 << 19));
        assert_eq!(m.as_bytes(), b"3.5 MiB");
        let mut k = Line::new();
        k.size(0)
            .text(" ")
            .size(1)
            .text(" ")
            .size(5000)
            .text(" ")
            .size(1 << 20);
        assert_eq!(k.as_bytes(), b"0 KiB 1 KiB 5 KiB 1.0 MiB");
    }

    #[test]
    fn long_lines_are_cut_not_overflowed() {
        let mut l = Line::new();
        for _ in 0..100 {
            l.text("abcdef");
        }
        assert_eq!(l.as_bytes().len(), 256);
    }
}
