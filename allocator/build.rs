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
}
