//! The arena functions of the C ABI from C and from C++:
//! `tests/c/arena_api.c` (compiled with `cc`, or `$CC`) and
//! `tests/c/arena_api.cpp` (compiled with `g++`, or `$CXX`), both with
//! `-Wall -Wextra -Werror` against `capi/include/arenalloc.h` and linked with
//! the release `libarenalloc.a` as `tests/c_abi.rs` links it. Each run must
//! exit 0 with "N passed, 0 failed" (N > 0), and `ARENALLOC_VERBOSE=1` must
//! print the library's load line (the allocator in the process is ours).
//!
//! The libraries come from `target/release/` (`cargo build --release -p
//! arenalloc-capi`), or are built by a nested cargo when missing or stale
//! (see `support/native.rs`).

#[path = "support/native.rs"]
mod native;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use native::{
    capi_libs, require_tool, run_with_limit, tail, workspace_root, Run, LOAD_LINE_PREFIX,
    STATIC_LIBS,
};

/// The programs take well under a second; this only catches hangs.
const RUN_LIMIT: Duration = Duration::from_secs(120);
const COMPILE_LIMIT: Duration = Duration::from_secs(180);

#[derive(Clone, Copy, Debug)]
enum Lang {
    C,
    Cxx,
}

impl Lang {
    /// `$CC` / `$CXX`, else `cc` / `g++` (which scripts/install-test-deps.sh
    /// installs).
    fn compiler(self) -> PathBuf {
        let (var, default) = match self {
            Lang::C => ("CC", "cc"),
            Lang::Cxx => ("CXX", "g++"),
        };
        let name = std::env::var(var).unwrap_or_else(|_| default.to_owned());
        if name.contains('/') {
            PathBuf::from(name)
        } else {
            require_tool(&name)
        }
    }

    fn flags(self) -> &'static [&'static str] {
        match self {
            Lang::C => &["-std=c11"],
            Lang::Cxx => &["-std=c++17"],
        }
    }
}

fn out_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_arena_api");
    fs::create_dir_all(&dir).expect("create the output directory");
    dir
}

fn include_dir() -> PathBuf {
    workspace_root().join("capi/include")
}

/// Compiles `source` with warnings as errors and links it with
/// `libarenalloc.a`; returns the executable.
fn build(lang: Lang, source: &Path, name: &str) -> PathBuf {
    let libs = capi_libs();
    let exe = out_dir().join(name);
    let mut cmd = Command::new(lang.compiler());
    cmd.args(lang.flags())
        .args([
            "-O2",
            "-g",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fno-builtin",
            "-pthread",
        ])
        .arg("-I")
        .arg(include_dir())
        .arg("-o")
        .arg(&exe)
        .arg(source)
        .arg(&libs.a)
        .args(STATIC_LIBS);
    let run = run_with_limit(&mut cmd, COMPILE_LIMIT);
    assert!(
        run.status.success(),
        "building {name} failed ({}): {cmd:?}\n{}{}",
        run.describe_status(),
        run.stdout_text(),
        run.stderr_text()
    );
    exe
}

/// Checks a run: no FAIL line, a "N passed, 0 failed" summary with N > 0,
/// exit status 0, and the library's load line on stderr.
fn assert_all_passed(what: &str, run: &Run) {
    let stdout = run.stdout_text();
    let stderr = run.stderr_text();
    let failures: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    let report = format!(
        "{what}: {}, {:.1?}\n--- failures ({}):\n{}\n--- stdout (tail):\n{}\n--- stderr (tail):\n{}",
        run.describe_status(),
        run.elapsed,
        failures.len(),
        failures.join("\n"),
        tail(&stdout, 40),
        tail(&stderr, 20)
    );
    eprintln!("{report}");
    let summary = stdout
        .lines()
        .rev()
        .find_map(|l| {
            let (passed, rest) = l.split_once(" passed, ")?;
            let failed = rest.strip_suffix(" failed")?;
            Some((passed.parse::<u64>().ok()?, failed.parse::<u64>().ok()?))
        })
        .unwrap_or_else(|| panic!("{what} printed no summary line (it crashed or hung)\n{report}"));
    let (passed, failed) = summary;
    assert!(
        failed == 0 && failures.is_empty(),
        "{what}: {failed} checks failed\n{report}"
    );
    assert!(passed > 0, "{what}: no checks ran\n{report}");
    assert!(
        run.status.success(),
        "{what} reported no failures but ended with {}\n{report}",
        run.describe_status()
    );
    assert!(
        stderr.lines().any(|l| l.starts_with(LOAD_LINE_PREFIX)),
        "{what}: ARENALLOC_VERBOSE=1 printed no load line: libarenalloc is not in the process\n{report}"
    );
}

fn build_and_run(lang: Lang, file: &str, name: &str) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("c").join(file);
    let exe = build(lang, &source, name);
    let run = run_with_limit(
        Command::new(&exe)
            .env("ARENALLOC_VERBOSE", "1")
            // The housekeeper starts but never purges within the run, so
            // the explicit-trim checks see exactly what they freed.
            .env("ARENALLOC_PURGE_DELAY_MS", "600000")
            .env_remove("LD_PRELOAD"),
        RUN_LIMIT,
    );
    assert_all_passed(&format!("{file} ({lang:?})"), &run);
}

#[test]
fn arena_api_from_c() {
    build_and_run(Lang::C, "arena_api.c", "arena_api_c");
}

#[test]
fn arena_api_from_cxx() {
    build_and_run(Lang::Cxx, "arena_api.cpp", "arena_api_cpp");
}

/// A C++ translation unit that includes arenalloc.h and then <malloc.h>
/// must compile (in C it does; in the other order it does too).
#[test]
fn cxx_may_include_arenalloc_h_before_malloc_h() {
    let source = out_dir().join("header_then_malloc_h.cpp");
    fs::write(
        &source,
        "#include \"arenalloc.h\"\n#include <malloc.h>\n\
         int main() { return malloc_trim(0) < 0 || malloc_usable_size(nullptr) != 0; }\n",
    )
    .expect("write the test source");
    let exe = build(Lang::Cxx, &source, "header_then_malloc_h");
    let run = run_with_limit(&mut Command::new(&exe), RUN_LIMIT);
    assert!(run.status.success(), "{}", run.describe_status());
}
