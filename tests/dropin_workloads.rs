//! The drop-in harness's workload programs (`benches/dropin/*.c`) as tests:
//! each one builds with the harness's flags (a thread's own state that lost
//! its 128-byte alignment fails the build: see `ASSERT_THREAD_OWNED` in
//! `common.h`), then runs once on the system allocator and once with
//! `LD_PRELOAD=libarenalloc.so`. Each program checks a stamp in the blocks
//! it frees (most of them; see `benches/dropin/README.md`) and prints a
//! checksum of what it allocated; both runs must succeed and print the same
//! line.
//!
//! Speed is the harness's business (`benches/dropin_harness.py`), not this
//! test's: it times nothing.

#[path = "support/native.rs"]
mod native;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use native::{capi_libs, compile_with, run_with_limit, tail, Run};

/// Generous: each run takes about a second; this only catches hangs.
const RUN_LIMIT: Duration = Duration::from_secs(120);

fn workload_sources() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/dropin");
    let mut sources: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "c"))
        .collect();
    sources.sort();
    sources
}

/// Runs `exe 1`, with `preload` as `LD_PRELOAD` (announcing the load), or
/// with none.
fn run_workload(exe: &Path, preload: Option<&Path>) -> Run {
    let mut cmd = Command::new(exe);
    cmd.arg("1").env_remove("LD_PRELOAD");
    if let Some(lib) = preload {
        cmd.env("LD_PRELOAD", lib).env("ARENALLOC_VERBOSE", "1");
    }
    run_with_limit(&mut cmd, RUN_LIMIT)
}

#[test]
fn every_dropin_workload_builds_and_prints_the_same_checksum_on_arenalloc() {
    let libs = capi_libs();
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dropin_workloads");
    fs::create_dir_all(&out_dir).expect("create the build directory");
    let sources = workload_sources();
    assert!(
        sources.len() >= 14,
        "expected the harness's 14 workloads in benches/dropin, found {}",
        sources.len()
    );
    for source in &sources {
        let name = source.file_stem().unwrap().to_string_lossy().into_owned();
        let exe = out_dir.join(&name);
        compile_with(
            "cc",
            &[
                "-O2",
                "-std=c11",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pthread",
                "-o",
                exe.to_str().unwrap(),
                source.to_str().unwrap(),
            ],
            &name,
        );
        let plain = run_workload(&exe, None);
        assert!(
            plain.status.success() && !plain.timed_out,
            "{name} fails on the system allocator ({}): the workload itself is broken\n{}",
            plain.describe_status(),
            tail(&plain.stderr_text(), 10)
        );
        let ours = run_workload(&exe, Some(&libs.so));
        assert!(
            ours.status.success() && !ours.timed_out,
            "{name} fails under arenalloc ({})\n{}",
            ours.describe_status(),
            tail(&ours.stderr_text(), 10)
        );
        assert!(
            ours.load_lines() >= 1,
            "{name}: arenalloc's load line is missing: the preload did not take"
        );
        let (a, b) = (plain.stdout_text(), ours.stdout_text());
        assert!(
            a.starts_with(&format!("{name}: ok ")),
            "{name}: unexpected output on the system allocator: {a:?}"
        );
        assert_eq!(a, b, "{name}: the checksums differ");
        eprintln!(
            "{name}: system allocator {:.2?}, arenalloc {:.2?}",
            plain.elapsed, ours.elapsed
        );
    }
}
