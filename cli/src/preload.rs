//! The `libarenalloc.so` this binary carries, written out once per version
//! so a child can preload it.
//!
//! It goes to a directory of the user's own (`$XDG_RUNTIME_DIR/arenalloc`,
//! else `<temp>/arenalloc-<uid>`, mode 0700 and checked to be ours, so no
//! other user can swap the library a later run preloads), named by a hash
//! of its bytes, so versions never collide and a second run reuses the file.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;

static LIBRARY: &[u8] = include_bytes!(env!("ARENALLOC_EMBEDDED_SO"));

/// FNV-1a: enough to tell versions apart (not a security check; the
/// directory's ownership is).
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn private_directory() -> io::Result<PathBuf> {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(runtime) if !runtime.is_empty() => PathBuf::from(runtime).join("arenalloc"),
        _ => std::env::temp_dir().join(format!("arenalloc-{uid}")),
    };
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
        return Err(io::Error::other(format!(
            "{} is not a private directory of this user",
            dir.display()
        )));
    }
    Ok(dir)
}

/// The path of the library, written out if this version is not there yet.
pub fn library_path() -> io::Result<PathBuf> {
    let dir = private_directory()?;
    let path = dir.join(format!("libarenalloc-{:016x}.so", fingerprint(LIBRARY)));
    if fs::metadata(&path).is_ok_and(|m| m.len() == LIBRARY.len() as u64) {
        return Ok(path);
    }
    let partial = dir.join(format!("libarenalloc.{}.partial", std::process::id()));
    let mut file = fs::File::create(&partial)?;
    file.write_all(LIBRARY)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&partial, &path)?;
    Ok(path)
}
