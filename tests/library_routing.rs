//! Library arenas with no code change (`ARENALLOC_LIBRARY_ARENAS`,
//! `malloc_route_library`): `tests/c/routed_lib.c`, a shared library that
//! allocates through `malloc` and its family, `strdup`, `strndup`,
//! `asprintf`, `getline`, a stored and a taken function pointer, its
//! constructor and a thread it starts, is driven by
//! `tests/c/library_routing.c` under the preloaded `libarenalloc.so`. Every
//! block it allocates must be in one arena of its own, and the program's
//! blocks in the default arena:
//! - loaded at start-up (its constructor's block included), bound at load
//!   with full RELRO and bound lazily without;
//! - opened with `dlopen` after start-up, closed and opened again (the same
//!   arena again);
//! - routed from code with `malloc_route_library`;
//! - and, with the variable unset, nothing changes.

#[path = "support/native.rs"]
mod native;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use native::{capi_libs, compile_with, run_with_limit, Run};

const LIMIT: Duration = Duration::from_secs(120);

struct Built {
    dir: PathBuf,
    /// Linked against `libroutedtest.so` (loaded at start-up).
    linked: PathBuf,
    /// Not linked against it (opens it with dlopen).
    unlinked: PathBuf,
}

/// How the test library is bound.
#[derive(Clone, Copy)]
enum Binding {
    /// `-z now -z relro`: its GOT is read-only after load.
    AtLoadWithRelro,
    /// `-z lazy -z norelro`: PLT entries resolved at first call.
    Lazily,
}

impl Binding {
    fn file_name(self) -> &'static str {
        match self {
            Binding::AtLoadWithRelro => "libroutedtest.so",
            Binding::Lazily => "libroutedtest_lazy.so",
        }
    }
}

fn compile(args: &[&str], what: &str) {
    compile_with("cc", args, what);
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let libs = capi_libs();
        let so_dir = libs.so.parent().expect("the library's directory");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("library_routing");
        fs::create_dir_all(&dir).expect("create the output directory");
        let c = Path::new(env!("CARGO_MANIFEST_DIR")).join("c");
        let lib_source = c.join("routed_lib.c");
        let driver_source = c.join("library_routing.c");
        let strict = ["-O2", "-Wall", "-Wextra", "-Werror", "-pthread"];
        for (binding, flags) in [
            (Binding::AtLoadWithRelro, ["-Wl,-z,now", "-Wl,-z,relro"]),
            (Binding::Lazily, ["-Wl,-z,lazy", "-Wl,-z,norelro"]),
        ] {
            let out = dir.join(binding.file_name());
            let mut args: Vec<&str> = strict.to_vec();
            args.extend(["-fPIC", "-shared", "-o", out.to_str().unwrap()]);
            args.push(lib_source.to_str().unwrap());
            args.extend(flags);
            compile(&args, binding.file_name());
        }
        let rpath = format!("-Wl,-rpath,{}:{}", so_dir.display(), dir.display());
        let so_dir_arg = format!("-L{}", so_dir.display());
        let dir_arg = format!("-L{}", dir.display());
        let linked = dir.join("library_routing_linked");
        let unlinked = dir.join("library_routing");
        let mut args: Vec<&str> = strict.to_vec();
        args.extend([
            "-o",
            linked.to_str().unwrap(),
            driver_source.to_str().unwrap(),
        ]);
        args.extend([&so_dir_arg, "-larenalloc", &dir_arg, "-Wl,--no-as-needed"]);
        args.extend(["-lroutedtest", "-ldl", &rpath]);
        compile(&args, "library_routing.c (linked)");
        let mut args: Vec<&str> = strict.to_vec();
        args.extend([
            "-o",
            unlinked.to_str().unwrap(),
            driver_source.to_str().unwrap(),
        ]);
        args.extend([&so_dir_arg, "-larenalloc", "-ldl", &rpath]);
        compile(&args, "library_routing.c (unlinked)");
        Built {
            dir,
            linked,
            unlinked,
        }
    })
}

/// Runs a driver with `libarenalloc.so` preloaded, as a user would.
fn run(exe: &Path, args: &[&str], patterns: Option<&str>) -> Run {
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env("LD_PRELOAD", &capi_libs().so)
        .env("ARENALLOC_VERBOSE", "1")
        // Cargo's LD_LIBRARY_PATH leads to its own build of libarenalloc.so
        // (target/debug, or another profile's), which would then be loaded
        // beside the preloaded one for the drivers linked against it: the
        // RUNPATH they carry is searched only after LD_LIBRARY_PATH.
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("ARENALLOC_LIBRARY_ARENAS");
    if let Some(patterns) = patterns {
        cmd.env("ARENALLOC_LIBRARY_ARENAS", patterns);
    }
    run_with_limit(&mut cmd, LIMIT)
}

fn assert_all_passed(run: &Run) {
    let report = format!(
        "{}\n--- stdout:\n{}--- stderr:\n{}",
        run.describe_status(),
        run.stdout_text(),
        run.stderr_text()
    );
    assert!(run.status.success(), "{report}");
    assert!(run.stdout_text().contains(" passed, 0 failed"), "{report}");
}

#[test]
fn a_library_loaded_at_start_up_allocates_in_its_own_arena_from_its_constructor_on() {
    let built = built();
    let run = run(&built.linked, &["startup"], Some("libroutedtest*"));
    assert_all_passed(&run);
    let stderr = run.stderr_text();
    assert!(
        stderr.contains("arenalloc: routing ") && stderr.contains("libroutedtest.so to arena 0x"),
        "ARENALLOC_VERBOSE=1 did not list the routed object:\n{stderr}"
    );
}

#[test]
fn with_the_variable_unset_the_library_allocates_in_the_default_arena() {
    let run = run(&built().linked, &["unset"], None);
    assert_all_passed(&run);
    assert!(
        !run.stderr_text().contains("routing"),
        "{}",
        run.stderr_text()
    );
}

#[test]
fn a_library_opened_later_is_routed_and_keeps_its_arena_when_reopened() {
    let built = built();
    for binding in [Binding::AtLoadWithRelro, Binding::Lazily] {
        let path = built.dir.join(binding.file_name());
        let run = run(
            &built.unlinked,
            &["dlopen", path.to_str().unwrap()],
            Some("libroutedtest*"),
        );
        assert_all_passed(&run);
        let stderr = run.stderr_text();
        assert!(
            stderr.contains("no loaded object matches 'libroutedtest*'")
                && stderr.contains("'libroutedtest*' now matches"),
            "the pattern that matched nothing at start-up, then a later dlopen, was not reported:\n{stderr}"
        );
    }
}

#[test]
fn malloc_route_library_routes_a_library_already_loaded() {
    let built = built();
    for binding in [Binding::AtLoadWithRelro, Binding::Lazily] {
        let path = built.dir.join(binding.file_name());
        let run = run(&built.unlinked, &["api", path.to_str().unwrap()], None);
        assert_all_passed(&run);
    }
}

#[test]
fn a_pattern_naming_the_c_library_is_refused_with_a_message() {
    let run = run(&built().linked, &["unset"], Some("libc.so*"));
    assert_all_passed(&run);
    assert!(
        run.stderr_text().contains("not routing") && run.stderr_text().contains("libc.so"),
        "{}",
        run.stderr_text()
    );
}

const CHILD: &str = "ARENALLOC_LIBRARY_ROUTING_CHILD";
const TEST_LIBRARY: &str = "ARENALLOC_ROUTED_TEST_LIBRARY";

#[test]
fn the_rust_api_refuses_where_arenalloc_is_not_the_process_malloc() {
    if std::env::var_os("LD_PRELOAD").is_some() {
        return; // the refusal is about a process without the preload
    }
    assert_eq!(
        arenalloc::route_library("libroutedtest*"),
        Err(arenalloc::RouteError::NotProcessMalloc)
    );
}

#[test]
fn the_rust_api_routes_a_library_through_the_preloaded_allocator() {
    let name = "the_rust_api_routes_a_library_through_the_preloaded_allocator";
    let (so, library) = if std::env::var(CHILD).as_deref() == Ok(name) {
        (String::new(), String::new())
    } else {
        let library = built().dir.join(Binding::Lazily.file_name());
        (
            capi_libs().so.display().to_string(),
            library.display().to_string(),
        )
    };
    arenalloc_tests::test_in_child(
        CHILD,
        name,
        &[("LD_PRELOAD", &so), (TEST_LIBRARY, &library)],
        LIMIT,
        rust_api_in_child,
    );
}

/// In a child with `libarenalloc.so` preloaded: opens the test library,
/// routes it with `arenalloc::route_library`, and checks where its blocks
/// go, with the preloaded library's `malloc_arena_of`.
fn rust_api_in_child() {
    use std::ffi::{c_void, CString};
    type ArenaOf = unsafe extern "C" fn(*const c_void) -> *mut c_void;
    type DefaultArena = unsafe extern "C" fn() -> *mut c_void;
    type LibMalloc = unsafe extern "C" fn(usize) -> *mut c_void;
    let path = CString::new(std::env::var(TEST_LIBRARY).expect("the library's path")).unwrap();
    // SAFETY: dlopen/dlsym with NUL-terminated names; each symbol has the
    // C signature given (the C ABI's header and tests/c/routed_lib.c).
    unsafe {
        let symbol = |handle: *mut c_void, name: &std::ffi::CStr| {
            let f = libc::dlsym(handle, name.as_ptr());
            assert!(!f.is_null(), "{name:?} not found");
            f
        };
        let arena_of: ArenaOf = std::mem::transmute(symbol(libc::RTLD_DEFAULT, c"malloc_arena_of"));
        let default_arena: DefaultArena =
            std::mem::transmute(symbol(libc::RTLD_DEFAULT, c"malloc_default_arena"));
        let handle = libc::dlopen(path.as_ptr(), libc::RTLD_NOW);
        assert!(!handle.is_null(), "dlopen of the test library failed");
        let lib_malloc: LibMalloc = std::mem::transmute(symbol(handle, c"routed_lib_malloc"));

        assert_eq!(
            arenalloc::route_library(""),
            Err(arenalloc::RouteError::BadPattern)
        );
        let before = lib_malloc(40);
        assert_eq!(
            arena_of(before),
            default_arena(),
            "routed before route_library"
        );
        assert_eq!(arenalloc::route_library("libroutedtest*"), Ok(1));
        let after = lib_malloc(40);
        let arena = arena_of(after);
        assert!(
            !arena.is_null() && arena != default_arena(),
            "after route_library the library's block is in {arena:?} (default {:?})",
            default_arena()
        );
        libc::free(before);
        libc::free(after);
    }
}

/// The TLS stack of `demo/seed/seed_case.c`, as the demo names it
/// (`demo/src/seed_case.rs`, `TLS_STACK`).
const TLS_STACK: &str = "libcurl-gnutls.so*,libgnutls.so*,libtasn1.so*,libp11-kit.so*,\
                         libnettle.so*,libhogweed.so*,libgmp.so*,libidn2.so*";

/// One run of the seed-case program, preloaded; its result line's figures.
fn seed_case_figures(program: &Path, patterns: Option<&str>) -> HashMap<String, f64> {
    let run = run(program, &["plain", "60"], patterns);
    assert!(
        run.status.success(),
        "seed_case failed ({}):\n{}",
        run.describe_status(),
        run.stderr_text()
    );
    let stdout = run.stdout_text();
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("result "))
        .unwrap_or_else(|| panic!("no result line:\n{stdout}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse::<f64>().ok()?)))
        .collect()
}

/// Real libraries: the demo's service loads the system trust store with
/// GnuTLS (most of its blocks allocated inside libtasn1) and keeps libcurl's
/// cookies (copied with `strdup` through a function pointer libcurl keeps).
/// Unrouted, those blocks are in the default arena; routed, they leave it.
#[test]
fn routing_the_tls_stack_takes_gnutls_and_libcurl_blocks_out_of_the_default_arena() {
    let dir = &built().dir;
    let program = dir.join("seed_case");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/seed/seed_case.c");
    compile(
        &[
            "-O2",
            "-Wall",
            "-o",
            program.to_str().unwrap(),
            source.to_str().unwrap(),
            "-lgnutls",
            "-lcurl",
            "-lpthread",
            "-ldl",
        ],
        "demo/seed/seed_case.c (scripts/install-demo-deps.sh installs its libraries)",
    );
    let unrouted = seed_case_figures(&program, None);
    let routed = seed_case_figures(&program, Some(TLS_STACK));
    let kept = routed["tls_live_kb"] + routed["lib_live_kb"];
    assert!(
        routed["certs"] > 0.0 && kept > 3000.0,
        "the libraries kept too little for the test to mean anything: {routed:?}"
    );
    assert!(
        unrouted["default_arena_live_kb"] > kept * 0.9,
        "unrouted, the default arena should hold the libraries' {kept} KiB: {unrouted:?}"
    );
    assert!(
        routed["default_arena_live_kb"] < 1024.0,
        "routed, the libraries' {kept} KiB should have left the default arena: {routed:?}"
    );
}

/// A program can replace a library's stored allocation pointer with a hook
/// of its own (libxml2's `xmlMemSetup` does this); a later rescan, here
/// caused by a `dlopen`, must leave the hook in place, and a successful
/// `dlopen` must leave no error behind for `dlerror`.
#[test]
fn a_hook_the_program_installs_in_a_routed_library_survives_later_rescans() {
    let built = built();
    let routed = built.dir.join(Binding::AtLoadWithRelro.file_name());
    let other = built.dir.join(Binding::Lazily.file_name());
    let run = run(
        &built.unlinked,
        &["hooks", routed.to_str().unwrap(), other.to_str().unwrap()],
        Some("libroutedtest*"),
    );
    assert_all_passed(&run);
}

/// A C++ library opened with `RTLD_LOCAL` by a C program: libstdc++ is only
/// in the library's own scope, so its `operator new` must be found there
/// (not in the global scope, where it is absent). And a `bad_alloc` thrown
/// through the routed `operator new` must switch the thread back.
#[test]
fn a_cxx_library_opened_locally_is_routed_and_an_exception_restores_the_arena() {
    let built = built();
    let library = built.dir.join("libroutedcxx.so");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("c/routed_lib_cxx.cpp");
    compile_with(
        "g++",
        &[
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fPIC",
            "-shared",
            "-o",
            library.to_str().unwrap(),
            source.to_str().unwrap(),
        ],
        "routed_lib_cxx.cpp",
    );
    let run = run(
        &built.unlinked,
        &["cxx", library.to_str().unwrap()],
        Some("libroutedcxx*"),
    );
    assert_all_passed(&run);
}

/// A thread cancelled while a routed library blocks in `getline` (a read on
/// an empty pipe) unwinds through the C stand-in, whose cleanup must switch
/// the thread's arena back before the thread's own cleanup handler runs.
/// glibc loads libgcc_s for the unwind; `libarenalloc.so` finds it there
/// (`capi/src/unwind_shim.c`).
#[test]
fn a_thread_cancelled_inside_a_routed_call_gets_its_arena_back() {
    let built = built();
    let path = built.dir.join(Binding::AtLoadWithRelro.file_name());
    let run = run(
        &built.unlinked,
        &["cancel", path.to_str().unwrap()],
        Some("libroutedtest*"),
    );
    assert_all_passed(&run);
}

/// glibc's `dlopen` searches the `DT_RPATH` of every object up its caller's
/// loader chain: here the program links libchainx (`DT_RPATH` naming the
/// directory of libchainz), which links libchainy, which opens
/// "libchainz.so" by name. With routing on, the allocator's `dlopen` must
/// still let glibc see the real caller.
#[test]
fn a_dlopen_that_depends_on_the_callers_loader_chain_still_finds_its_library() {
    let dir = built().dir.join("chain");
    let z_dir = dir.join("z");
    fs::create_dir_all(&z_dir).expect("create the chain's directories");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("c/rpath_chain.c");
    let source = source.to_str().unwrap();
    let at = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let z = z_dir.join("libchainz.so");
    compile(
        &[
            "-DPART_Z",
            "-fPIC",
            "-shared",
            "-o",
            z.to_str().unwrap(),
            source,
        ],
        "libchainz",
    );
    compile(
        &[
            "-DPART_Y",
            "-fPIC",
            "-shared",
            "-o",
            &at("libchainy.so"),
            source,
            "-ldl",
        ],
        "libchainy",
    );
    let dir_arg = format!("-L{}", dir.display());
    let rpath = format!(
        "-Wl,--disable-new-dtags,-rpath,{}:{}",
        z_dir.display(),
        dir.display()
    );
    compile(
        &[
            "-DPART_X",
            "-fPIC",
            "-shared",
            "-o",
            &at("libchainx.so"),
            source,
            &dir_arg,
            "-lchainy",
            &rpath,
        ],
        "libchainx",
    );
    let main_rpath = format!("-Wl,-rpath,{}", dir.display());
    compile(
        &[
            "-DPART_MAIN",
            "-o",
            &at("chain"),
            source,
            &dir_arg,
            "-lchainx",
            &main_rpath,
        ],
        "the chain program",
    );
    let exe = dir.join("chain");
    let plain = run_with_limit(&mut Command::new(&exe), LIMIT);
    assert!(
        plain.status.success(),
        "without arenalloc the chain does not work: {}",
        plain.stdout_text()
    );
    let routed = run(&exe, &[], Some("libroutedtest*"));
    assert!(
        routed.status.success() && routed.stdout_text().contains("chain: 42"),
        "with routing on, the dlopen failed ({}):\n{}{}",
        routed.describe_status(),
        routed.stdout_text(),
        routed.stderr_text()
    );
}
