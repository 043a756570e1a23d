//! C programs whose first allocation happens inside one of glibc's
//! registration functions, which hold a lock while they allocate: an
//! allocator that registered something of its own from there would
//! deadlock. Each runs with `LD_PRELOAD=libarenalloc.so` and linked with
//! `libarenalloc.a`, and must end and exit 0.
//!
//! - `tests/c/exit_summary.c`: inside `atexit`, with `ARENALLOC_STATS=1`;
//!   the summary must be printed (and not without the variable).
//! - `tests/c/atfork_first.c`: inside `pthread_atfork`; then it forks and
//!   the child allocates.

#[path = "support/native.rs"]
mod native;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use native::{capi_libs, compile_with, run_with_limit, Run, STATIC_LIBS};

/// The program takes milliseconds; a run this long has deadlocked.
const RUN_LIMIT: Duration = Duration::from_secs(30);

fn compile(program: &str, name: &str, extra: &[&str]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_first_allocation");
    fs::create_dir_all(&dir).expect("create the output directory");
    let exe = dir.join(name);
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("c")
        .join(program);
    let (exe_arg, source_arg) = (
        exe.to_str().expect("UTF-8 path"),
        source.to_str().expect("UTF-8 path"),
    );
    let mut args = vec![
        "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-o", exe_arg, source_arg,
    ];
    args.extend_from_slice(extra);
    compile_with("cc", &args, name);
    exe
}

fn assert_summary(what: &str, run: &Run) {
    let stderr = run.stderr_text();
    let report = format!("{what}: {}\n--- stderr:\n{stderr}", run.describe_status());
    assert!(run.status.success(), "{report}");
    assert!(
        stderr.contains("arenalloc: exit summary of pid "),
        "no summary heading\n{report}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("arenalloc:   arena 0x1 (default): live ")),
        "no line for the default arena\n{report}"
    );
    assert!(
        stderr.lines().any(|l| l.starts_with("arenalloc:   rss ")),
        "no totals line\n{report}"
    );
}

#[test]
fn summary_of_a_program_whose_first_malloc_is_inside_atexit_preload() {
    let libs = capi_libs();
    let exe = compile("exit_summary.c", "exit_summary_plain", &[]);
    let run = run_with_limit(
        Command::new(&exe)
            .env("LD_PRELOAD", &libs.so)
            .env("ARENALLOC_STATS", "1"),
        RUN_LIMIT,
    );
    assert_summary("LD_PRELOAD", &run);
    let quiet = run_with_limit(
        Command::new(&exe)
            .env("LD_PRELOAD", &libs.so)
            .env_remove("ARENALLOC_STATS"),
        RUN_LIMIT,
    );
    assert!(quiet.status.success(), "{}", quiet.describe_status());
    assert!(
        !quiet.stderr_text().contains("exit summary"),
        "a summary without ARENALLOC_STATS=1:\n{}",
        quiet.stderr_text()
    );
}

#[test]
fn summary_of_a_program_whose_first_malloc_is_inside_atexit_static() {
    let libs = capi_libs();
    let mut extra = vec![libs.a.to_str().expect("UTF-8 path")];
    extra.extend_from_slice(STATIC_LIBS);
    let exe = compile("exit_summary.c", "exit_summary_static", &extra);
    let run = run_with_limit(
        Command::new(&exe)
            .env_remove("LD_PRELOAD")
            .env("ARENALLOC_STATS", "1"),
        RUN_LIMIT,
    );
    assert_summary("linked with libarenalloc.a", &run);
}

#[test]
fn a_program_whose_first_malloc_is_inside_pthread_atfork_runs_and_forks() {
    let libs = capi_libs();
    let plain = compile("atfork_first.c", "atfork_first_plain", &[]);
    let run = run_with_limit(Command::new(&plain).env("LD_PRELOAD", &libs.so), RUN_LIMIT);
    assert!(
        run.status.success(),
        "LD_PRELOAD: {}\n{}",
        run.describe_status(),
        run.stderr_text()
    );
    let mut extra = vec![libs.a.to_str().expect("UTF-8 path")];
    extra.extend_from_slice(STATIC_LIBS);
    let linked = compile("atfork_first.c", "atfork_first_static", &extra);
    let run = run_with_limit(Command::new(&linked).env_remove("LD_PRELOAD"), RUN_LIMIT);
    assert!(
        run.status.success(),
        "linked with libarenalloc.a: {}\n{}",
        run.describe_status(),
        run.stderr_text()
    );
}
