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
//! - The unwinder's personality routine and `_Unwind_Resume`, which the C
//!   stand-ins' cleanups (compiled with `-fexceptions`) need: where panics
//!   abort (the `no_std` library users get), `src/unwind_shim.c` finds them
//!   in libgcc_s when an unwind first reaches a stand-in, so the library
//!   does not load libgcc_s into every program (about 100 KiB resident).
//!   Not a weak reference to them: a C program may `dlopen` a C++ library,
//!   and libgcc_s with it, after start-up, and a `bad_alloc` thrown through
//!   a routed `operator new` must still switch the arena back
//!   (`tests/library_routing.rs`). The shim goes into the shared library
//!   only; a program that links `libarenalloc.a` keeps its own unwinder.
//!   Builds that unwind (debug, tests) link libgcc_s, which `std` needs.

use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,initfirst");
    let gnu = env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|e| e == "gnu");
    // The profile, not `CARGO_CFG_PANIC`, which says the target's default
    // (unwind) whatever the profile sets: release builds abort (the
    // workspace's profile), debug builds unwind. The crate links libgcc_s
    // itself where it unwinds or has no shim (`src/lib.rs`).
    println!("cargo::rustc-check-cfg=cfg(arenalloc_unwind_shim)");
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    if gnu && release {
        let shim = "src/unwind_shim.c";
        println!("cargo:rerun-if-changed={shim}");
        let objects = cc::Build::new()
            .file(shim)
            .flag("-fvisibility=hidden")
            // Unwind information for the shim's own frames, whatever CFLAGS say.
            .flag("-fasynchronous-unwind-tables")
            .warnings(true)
            .extra_warnings(true)
            .flag("-Werror")
            .compile_intermediates();
        for object in objects {
            println!("cargo:rustc-cdylib-link-arg={}", object.display());
        }
        println!("cargo:rustc-cfg=arenalloc_unwind_shim");
    }
    cold_code_last();
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

/// Places the code most programs never run (section `arenalloc_cold`: the
/// library-routing stand-ins and scan, the exit summary, `malloc_info`)
/// after the PLT, at the end of the code: the linker would put it between
/// the rest of the code and the PLT, which every program touches at exit
/// (`__cxa_finalize`), so the kernel's fault-around (64 KiB at a time)
/// mapped its pages into every program.
fn cold_code_last() {
    let out = env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let script = std::path::Path::new(&out).join("cold_code_last.ld");
    std::fs::write(
        &script,
        "SECTIONS { arenalloc_cold : { *(arenalloc_cold) } } INSERT AFTER .plt;\n",
    )
    .expect("write the linker script");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-T,{}", script.display());
}
