//! Links `libarenalloc.so` with `-z initfirst`: its constructor then runs
//! before every other object's, so the library routing is in place before a
//! routed library's own constructors allocate.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,initfirst");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,pack-relative-relocs");
}
