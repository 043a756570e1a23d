//! Which loaded objects a user's pattern names: a shell glob (`*`, `?`) on
//! the object's file name, or on its whole path when the pattern has a `/`.

/// Whether `pattern` names the object loaded from `path`.
pub fn names_object(pattern: &[u8], path: &[u8]) -> bool {
    if path.is_empty() {
        return false;
    }
    if pattern.contains(&b'/') {
        return glob_matches(pattern, path);
    }
    let file_name = match path.iter().rposition(|&b| b == b'/') {
        Some(slash) => path.get(slash + 1..).unwrap_or(&[]),
        None => path,
    };
    glob_matches(pattern, file_name)
}

/// `*` matches any run of bytes, `?` any one byte, anything else itself.
/// Iterative with one backtrack point, so linear in practice and never
/// recursive.
pub fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while let Some(&byte) = text.get(t) {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == byte => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern.iter().skip(p).all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_file_names_and_paths() {
        assert!(glob_matches(b"libgnutls.so.30", b"libgnutls.so.30"));
        assert!(glob_matches(b"libgnutls*", b"libgnutls.so.30"));
        assert!(glob_matches(b"lib?nutls.so.*", b"libgnutls.so.30"));
        assert!(glob_matches(b"*", b""));
        assert!(glob_matches(b"*.so*", b"libx.so.1"));
        assert!(!glob_matches(b"libgnutls.so.3", b"libgnutls.so.30"));
        assert!(!glob_matches(b"libtasn1*", b"libgnutls.so.30"));
        assert!(!glob_matches(b"a*b*c", b"aXbY"));
        assert!(glob_matches(b"a*b*c", b"aXbYbc"));
        assert!(names_object(b"libfoo.so*", b"/usr/lib/libfoo.so.1"));
        assert!(!names_object(b"libfoo.so*", b"/usr/lib/libfoo.so.1/other"));
        assert!(names_object(b"/usr/lib/*", b"/usr/lib/libfoo.so.1"));
        assert!(!names_object(b"*", b""));
    }
}
