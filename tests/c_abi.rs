//! The C contract from C: `tests/c/c_contract.c` compiled with `cc` and run
//! twice, against the release build of the C ABI crate (`arenalloc-capi`):
//!
//! - linked with `libarenalloc.a`, so `malloc` and friends resolve to ours
//!   at link time (and are exported from the executable, so libc's own
//!   internal calls such as `strdup`'s reach them too);
//! - built plain and run with `LD_PRELOAD=libarenalloc.so`.
//!
//! Both runs must end with "N passed, 0 failed", exit 0, and prove that the
//! allocator in the process really is arenalloc: `malloc_info` must name it
//! (`--expect-arenalloc`) and `ARENALLOC_VERBOSE=1` must print the load line.
//! A third test runs the plain binary without the preload and requires the
//! identity check to say "other", so that check can fail. The contract runs
//! set a purge delay longer than the run: its `malloc_trim` check expects
//! to release what it freed, which a housekeeper pass could take first.
//!
//! The libraries come from `target/release/` (`cargo build --release -p
//! arenalloc-capi`, which `scripts/test-all.sh` runs first); when they are
//! missing or older than their sources, they are built by a nested cargo
//! into `target/capi-for-tests/` (see `support/native.rs`).

#[path = "support/native.rs"]
mod native;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use native::{capi_libs, require_tool, run_with_limit, tail, Run, LOAD_LINE_PREFIX, STATIC_LIBS};

/// A run of c_contract takes about 10 s here; this only catches hangs.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// Purge delay of the contract runs (longer than `RUN_LIMIT`): the
/// housekeeper starts but never purges, so `malloc_trim(0)` after the frees
/// of `test_trim` finds them all (it must return 1).
const NO_PURGE_IN_THE_RUN_MS: &str = "600000";

fn c_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("c/c_contract.c")
}

fn out_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_abi");
    fs::create_dir_all(&dir).expect("create the output directory");
    dir
}

/// Compiles c_contract.c into `name` with `extra` arguments after the
/// source; returns the executable's path.
fn compile(name: &str, extra: &[&str]) -> PathBuf {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let cc_path = if cc.contains('/') {
        PathBuf::from(&cc)
    } else {
        require_tool(&cc)
    };
    let exe = out_dir().join(name);
    let mut cmd = Command::new(&cc_path);
    cmd.args([
        "-std=c11",
        "-O2",
        "-g",
        "-Wall",
        "-Wextra",
        "-fno-builtin",
        "-o",
    ])
    .arg(&exe)
    .arg(c_source())
    .args(extra);
    let run = run_with_limit(&mut cmd, Duration::from_secs(120));
    assert!(
        run.status.success(),
        "compiling {} failed ({}): {cmd:?}\n{}{}",
        name,
        run.describe_status(),
        run.stdout_text(),
        run.stderr_text()
    );
    if !run.stderr.is_empty() {
        eprintln!("{name}: compiler warnings:\n{}", run.stderr_text());
    }
    exe
}

/// Checks a run of c_contract with `--expect-arenalloc`: all checks passed,
/// the identity check saw arenalloc, the library announced itself.
fn assert_contract_run(what: &str, run: &Run) {
    let stdout = run.stdout_text();
    let stderr = run.stderr_text();
    let failures: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.ends_with(" failed") && l.contains(" passed, "));
    let report = format!(
        "c_contract ({what}): {}, {:.1?}\n--- failures ({}):\n{}\n--- stdout (tail):\n{}\n--- stderr (tail):\n{}",
        run.describe_status(),
        run.elapsed,
        failures.len(),
        failures.join("\n"),
        tail(&stdout, 30),
        tail(&stderr, 30)
    );
    eprintln!("{report}");
    let Some(summary) = summary else {
        panic!("c_contract ({what}) printed no summary line (it crashed or hung)\n{report}");
    };
    let mut parts = summary.split_whitespace();
    let passed: u64 = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let failed: u64 = parts
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(
        failed == 0 && failures.is_empty(),
        "c_contract ({what}): {failed} checks failed\n{report}"
    );
    assert!(passed > 0, "c_contract ({what}): no checks ran\n{report}");
    assert!(
        run.status.success(),
        "c_contract ({what}) reported no failures but ended with {}\n{report}",
        run.describe_status()
    );
    assert!(
        stdout.lines().any(|l| l == "allocator: arenalloc"),
        "c_contract ({what}): malloc_info does not name arenalloc: the allocator in use is not ours\n{report}"
    );
    assert!(
        stderr.lines().any(|l| l.starts_with(LOAD_LINE_PREFIX)),
        "c_contract ({what}): ARENALLOC_VERBOSE=1 printed no load line: libarenalloc is not in the process\n{report}"
    );
}

#[test]
fn c_contract_static() {
    let libs = capi_libs();
    let a = libs.a.to_str().expect("UTF-8 path");
    let mut extra = vec![a];
    extra.extend_from_slice(STATIC_LIBS);
    let exe = compile("c_contract_static", &extra);
    // c_contract's "identity" section frees blocks that libc allocated
    // internally (strdup, asprintf, open_memstream): that only works if the
    // executable exports our malloc to libc, as the linker does here.
    let run = run_with_limit(
        Command::new(&exe)
            .arg("--expect-arenalloc")
            .env("ARENALLOC_VERBOSE", "1")
            .env("ARENALLOC_PURGE_DELAY_MS", NO_PURGE_IN_THE_RUN_MS)
            .env_remove("LD_PRELOAD"),
        RUN_LIMIT,
    );
    assert_contract_run("linked with libarenalloc.a", &run);
}

#[test]
fn c_contract_preload() {
    let libs = capi_libs();
    let exe = compile("c_contract_plain", &[]);
    let run = run_with_limit(
        Command::new(&exe)
            .arg("--expect-arenalloc")
            .env("LD_PRELOAD", &libs.so)
            .env("ARENALLOC_VERBOSE", "1")
            .env("ARENALLOC_PURGE_DELAY_MS", NO_PURGE_IN_THE_RUN_MS),
        RUN_LIMIT,
    );
    assert_contract_run("LD_PRELOAD=libarenalloc.so", &run);
}

/// The identity check must be able to say "not arenalloc": without the
/// preload the plain binary runs on the system allocator.
#[test]
fn identity_check_tells_allocators_apart() {
    let libs = capi_libs();
    let exe = compile("c_contract_identify", &[]);
    let without = run_with_limit(
        Command::new(&exe)
            .arg("--identify-only")
            .env_remove("LD_PRELOAD"),
        RUN_LIMIT,
    );
    assert!(without.status.success(), "{}", without.describe_status());
    assert_eq!(
        without.stdout_text().trim(),
        "allocator: other",
        "without LD_PRELOAD the identity check should see the system allocator"
    );
    let with = run_with_limit(
        Command::new(&exe)
            .arg("--identify-only")
            .env("LD_PRELOAD", &libs.so),
        RUN_LIMIT,
    );
    assert!(with.status.success(), "{}", with.describe_status());
    assert_eq!(with.stdout_text().trim(), "allocator: arenalloc");
}

/// The freshness check that decides whether `target/release/` can be used:
/// a library older than one of its sources must not be.
#[test]
fn stale_libraries_are_detected() {
    use std::time::SystemTime;
    let dir = out_dir().join("staleness");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create a scratch directory");
    let source = dir.join("some source.rs");
    fs::write(&source, "// a source\n").expect("write a source");
    assert!(
        native::staleness(&dir).is_some_and(|why| why.contains("missing")),
        "missing libraries must count as stale"
    );
    fs::write(dir.join("libarenalloc.so"), "").expect("write");
    fs::write(dir.join("libarenalloc.a"), "").expect("write");
    let escaped = source.display().to_string().replace(' ', "\\ ");
    fs::write(
        dir.join("libarenalloc.d"),
        format!(
            "{0}/libarenalloc.so: {escaped}\n\n{0}/libarenalloc.a: {escaped}\n",
            dir.display()
        ),
    )
    .expect("write the dep-info file");
    // Make the source clearly older than the libraries, then newer.
    let old = SystemTime::now() - Duration::from_secs(3600);
    let file = fs::File::options().write(true).open(&source).expect("open");
    file.set_modified(old).expect("set the mtime");
    assert_eq!(
        native::staleness(&dir),
        None,
        "up-to-date libraries judged stale"
    );
    file.set_modified(SystemTime::now() + Duration::from_secs(3600))
        .expect("set the mtime");
    let why = native::staleness(&dir).expect("a newer source must make the libraries stale");
    assert!(why.contains("some source.rs"), "{why}");
    fs::remove_file(&source).expect("remove");
    assert!(
        native::staleness(&dir).is_some_and(|why| why.contains("gone")),
        "a vanished source must count as stale"
    );
}

/// The preloaded library brings nothing into a C program but itself: it
/// needs only the C library (no libgcc_s: the routing stand-ins find the
/// unwinder when an unwind reaches them, `capi/src/unwind_shim.c`) and
/// leaves no unwinder symbol for the dynamic linker to find.
#[test]
fn the_shared_library_needs_only_the_c_library() {
    require_tool("readelf");
    let so = &capi_libs().so;
    let out = Command::new("readelf")
        .arg("--dynamic")
        .arg("--dyn-syms")
        .arg("-W")
        .arg(so)
        .output()
        .expect("run readelf");
    assert!(out.status.success(), "readelf failed on {}", so.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let needed: Vec<&str> = text.lines().filter(|l| l.contains("(NEEDED)")).collect();
    assert!(
        !needed.is_empty() && needed.iter().all(|l| l.contains("[libc.so.6]")),
        "{} needs more than the C library:\n{}",
        so.display(),
        needed.join("\n")
    );
    let unwinder: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains(" UND ") && (l.contains("_Unwind_") || l.contains("__gcc_personality"))
        })
        .collect();
    assert!(
        unwinder.is_empty(),
        "{} leaves unwinder symbols undefined:\n{}",
        so.display(),
        unwinder.join("\n")
    );
}

/// The code most programs never run (section `arenalloc_cold`: routing
/// stand-ins, the exit summary's printing, `malloc_info`, ...) lies after
/// the PLT, which every program touches at exit: the kernel faults file
/// pages in 64 KiB at a time, so cold code before or beside the PLT would be
/// mapped into every program (`capi/build.rs`).
#[test]
fn the_code_most_programs_never_run_lies_after_the_plt() {
    require_tool("readelf");
    let so = &capi_libs().so;
    let out = Command::new("readelf")
        .args(["--section-headers", "-W"])
        .arg(so)
        .output()
        .expect("run readelf");
    assert!(out.status.success(), "readelf failed on {}", so.display());
    let text = String::from_utf8_lossy(&out.stdout);
    // "[16] .text PROGBITS 000000000001c3f0 01b3f0 00fc59 ...": address and size.
    let section = |name: &str| -> Option<(u64, u64)> {
        text.lines().find_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let at = fields.iter().position(|&f| f == name)?;
            let hex = |i: usize| u64::from_str_radix(fields.get(i)?, 16).ok();
            Some((hex(at + 2)?, hex(at + 4)?))
        })
    };
    let (text_at, text_size) = section(".text").expect("a .text section");
    let (plt_at, _) = section(".plt").expect("a .plt section");
    let (cold_at, cold_size) = section("arenalloc_cold").expect("an arenalloc_cold section");
    assert!(
        text_at < plt_at && plt_at < cold_at,
        ".text at {text_at:#x}, .plt at {plt_at:#x}, arenalloc_cold at {cold_at:#x}"
    );
    assert!(
        cold_size > text_size / 2,
        "arenalloc_cold holds {cold_size} bytes against .text's {text_size}: the cold code is back in .text"
    );
}
