//! Builds `libarenalloc.so` (the C ABI crate, release) into this build's
//! own directory, so `src/preload.rs` can carry it inside the `arenalloc`
//! binary: one file to copy. A nested cargo with a target directory of its
//! own never waits on the cargo that runs this script.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest
        .parent()
        .expect("cli/ is in the workspace")
        .to_path_buf();
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    let target = out.join("capi-target");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    for path in [
        "allocator/src",
        "allocator/build.rs",
        "allocator/Cargo.toml",
        "capi/src",
        "capi/build.rs",
        "capi/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    let status = Command::new(&cargo)
        .args(["build", "--release", "--lib", "-p", "arenalloc-capi"])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target)
        // The copy the command carries needs no debug information.
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cargo} to build libarenalloc.so: {e}"));
    assert!(
        status.success(),
        "building libarenalloc.so for the arenalloc command failed ({status}): \
         run `cargo build --release -p arenalloc-capi` to see why"
    );
    let so = target.join("release/libarenalloc.so");
    assert!(so.is_file(), "{} was not built", so.display());
    println!("cargo:rustc-env=ARENALLOC_EMBEDDED_SO={}", so.display());
}
