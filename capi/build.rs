//! Link settings of `libarenalloc.so` (see docs/design.md, "The library is
//! `no_std` and small"):
//! - `-z initfirst`: its constructor runs before every other object's, so
//!   the library routing is in place before a routed library's own
//!   constructors allocate.
//! - `-z pack-relative-relocs` (DT_RELR), where the C library building it
//!   is glibc 2.36 or later: the linker then makes the library require
//!   `GLIBC_ABI_DT_RELR`, which an older glibc lacks, and the loader would
//!   refuse the library (under `LD_PRELOAD`, with a message, and the
//!   program runs on its own `malloc`).
//! - libgcc_s on GNU targets: the C stand-ins' cleanups (compiled with
//!   `-fexceptions`) need its personality routine and `_Unwind_Resume`, and
//!   with the crate `no_std` nothing else brings it. Linked, not weak: a C
//!   program may `dlopen` a C++ library, and libgcc_s with it, after
//!   start-up, and a `bad_alloc` thrown through a routed `operator new`
//!   must still switch the arena back (`tests/library_routing.rs`).

use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,initfirst");
    let gnu = env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|e| e == "gnu");
    if gnu {
        println!("cargo:rustc-link-lib=dylib=gcc_s");
    }
    let native = env::var("HOST").ok() == env::var("TARGET").ok();
    if gnu && native && glibc_version().is_some_and(|v| v >= (2, 36)) {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,pack-relative-relocs");
    }
}

/// The version of the build machine's glibc (`getconf GNU_LIBC_VERSION`
/// prints "glibc 2.36"), if it says.
fn glibc_version() -> Option<(u32, u32)> {
    let out = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let version = text.trim().strip_prefix("glibc ")?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}
