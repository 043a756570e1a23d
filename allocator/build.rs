//! Compiles the C stand-ins for the C library's allocating functions
//! (`src/library_routing/routed_libc.c`): several are variadic, which stable
//! Rust cannot define.

fn main() {
    let source = "src/library_routing/routed_libc.c";
    println!("cargo:rerun-if-changed={source}");
    cc::Build::new()
        .file(source)
        .flag("-fvisibility=hidden")
        .flag("-U_FORTIFY_SOURCE")
        // Unwinding (a C++ exception, a thread cancellation) through a
        // stand-in runs its cleanup, which switches the arena back.
        .flag("-fexceptions")
        .warnings(true)
        .extra_warnings(true)
        .flag("-Werror")
        .compile("arenalloc_routed_libc");
    // The cleanups of `-fexceptions` code need C's personality routine and
    // `_Unwind_Resume`, from libgcc_s: with `no_std` nothing else brings it.
    // Linked, not weak: a C program may dlopen a C++ library (and libgcc_s
    // with it) after start-up, and a `bad_alloc` thrown through a routed
    // `operator new` must still switch the arena back
    // (`tests/library_routing.rs`).
    println!("cargo:rustc-link-lib=dylib=gcc_s");
}
