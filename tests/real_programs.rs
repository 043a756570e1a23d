//! Real programs on arenalloc: each workload runs twice, on the system
//! allocator and with `LD_PRELOAD=libarenalloc.so` (plus
//! `ARENALLOC_VERBOSE=1`, whose load line proves the preload took), and the
//! two runs must both succeed and print the same output.
//!
//! - python3 (`PYTHONMALLOC=malloc`, so objects come from `malloc`):
//!   `scripts/alloc_heavy.py`, 8 threads of dicts, lists, strings, json,
//!   sorting, and objects freed by other threads;
//! - git: `scripts/git_workload.sh`, ~2000 files over several commits, a
//!   branch and a merge, `git gc`, then digests of the history;
//! - sqlite3: 200 000 generated rows inserted in one transaction, indexes,
//!   aggregates, window functions, joins, updates, `VACUUM`
//!   (`scripts/sqlite_queries.sql`);
//! - perl: `scripts/alloc_heavy.pl`, hashes and strings.
//!
//! A missing program is a failure naming `scripts/install-test-deps.sh`,
//! never a skip. The libraries are found as in `c_abi.rs`.

#[path = "support/native.rs"]
mod native;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use native::{capi_libs, require_tool, run_with_limit, tail, Run};

/// Generous: the runs take seconds; this only catches hangs.
const RUN_LIMIT: Duration = Duration::from_secs(240);

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// An empty directory for one run of one workload.
fn fresh_dir(workload: &str, variant: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("real_programs")
        .join(format!("{workload}-{variant}"));
    if dir.exists() {
        fs::remove_dir_all(&dir).expect("clear the previous run's directory");
    }
    fs::create_dir_all(&dir).expect("create the run directory");
    dir
}

/// The first line where `a` and `b` differ, for the failure message.
fn first_difference(a: &str, b: &str) -> String {
    let (mut la, mut lb) = (a.lines(), b.lines());
    let mut n = 1;
    loop {
        match (la.next(), lb.next()) {
            (None, None) => return "no difference".to_owned(),
            (x, y) if x == y => n += 1,
            (x, y) => {
                return format!(
                    "line {n}:\n  system allocator: {}\n  arenalloc:        {}",
                    x.unwrap_or("<end of output>"),
                    y.unwrap_or("<end of output>")
                )
            }
        }
    }
}

fn describe(what: &str, run: &Run) -> String {
    format!(
        "{what}: {} after {:.1?}\n--- stdout (tail):\n{}\n--- stderr (tail):\n{}",
        run.describe_status(),
        run.elapsed,
        tail(&run.stdout_text(), 20),
        tail(&run.stderr_text(), 20)
    )
}

/// Runs the command `make(dir)` builds in a fresh directory, once plain and
/// once under arenalloc, and requires identical successful results that end
/// with a line "DONE".
fn compare(workload: &str, make: impl Fn(&Path) -> Command) {
    let libs = capi_libs();

    let plain_dir = fresh_dir(workload, "plain");
    let mut cmd = make(&plain_dir);
    cmd.env_remove("LD_PRELOAD").env_remove("ARENALLOC_VERBOSE");
    let plain = run_with_limit(&mut cmd, RUN_LIMIT);
    assert!(
        plain.status.success() && !plain.timed_out,
        "{workload} fails on the system allocator, so the workload itself is broken\n{}",
        describe(&format!("{workload} (system allocator)"), &plain)
    );

    let preload_dir = fresh_dir(workload, "arenalloc");
    let mut cmd = make(&preload_dir);
    cmd.env("LD_PRELOAD", &libs.so)
        .env("ARENALLOC_VERBOSE", "1");
    let ours = run_with_limit(&mut cmd, RUN_LIMIT);
    eprintln!(
        "{workload}: system allocator {:.1?}, arenalloc {:.1?} ({} processes announced arenalloc)",
        plain.elapsed,
        ours.elapsed,
        ours.load_lines()
    );
    let ours_report = describe(
        &format!("{workload} under LD_PRELOAD=libarenalloc.so"),
        &ours,
    );
    assert!(
        ours.status.success() && !ours.timed_out,
        "{workload} fails under arenalloc but not on the system allocator\n{ours_report}"
    );
    assert!(
        ours.load_lines() >= 1,
        "{workload}: no process printed the arenalloc load line: the preload did not take\n{ours_report}"
    );
    assert_eq!(
        plain.load_lines(),
        0,
        "{workload}: the plain run has arenalloc loaded (LD_PRELOAD leaked in?)"
    );

    let (a, b) = (plain.stdout_text(), ours.stdout_text());
    assert!(
        a.lines().last() == Some("DONE"),
        "{workload}: the plain run did not get to the end (no final DONE line)\n{}",
        describe(workload, &plain)
    );
    assert!(
        a == b,
        "{workload}: output differs between the system allocator and arenalloc at {}\n{ours_report}",
        first_difference(&a, &b)
    );
    let (ea, eb) = (
        plain.stderr_without_load_lines(),
        ours.stderr_without_load_lines(),
    );
    assert!(
        ea == eb,
        "{workload}: stderr differs between the system allocator and arenalloc at {}",
        first_difference(&ea, &eb)
    );
}

/// The interpreter behind `python3` (pyenv and similar put a shell script
/// first in PATH; the test is about python, not the shim).
fn python_executable() -> PathBuf {
    let shim = require_tool("python3");
    let out = Command::new(&shim)
        .args(["-c", "import sys; print(sys.executable)"])
        .env_remove("LD_PRELOAD")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", shim.display()));
    let exe = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && !exe.is_empty() && Path::new(&exe).is_file() {
        PathBuf::from(exe)
    } else {
        shim
    }
}

#[test]
fn python_threads_dicts_json() {
    let python = python_executable();
    let script = scripts_dir().join("alloc_heavy.py");
    compare("python3", |dir| {
        let mut cmd = Command::new(&python);
        cmd.arg(&script)
            .current_dir(dir)
            .env("PYTHONMALLOC", "malloc")
            .env("PYTHONHASHSEED", "0")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        cmd
    });
}

#[test]
fn git_commits_gc_log() {
    let bash = require_tool("bash");
    require_tool("git");
    require_tool("sha256sum");
    let script = scripts_dir().join("git_workload.sh");
    compare("git", |dir| {
        let mut cmd = Command::new(&bash);
        cmd.arg(&script).arg(dir).current_dir(dir);
        cmd
    });
}

/// 200 000 INSERT statements (deterministic pseudo-random values) in one
/// transaction, followed by the queries of `scripts/sqlite_queries.sql`.
fn sqlite_workload() -> String {
    const ROWS: u64 = 200_000;
    const SYLLABLES: [&str; 16] = [
        "ab", "ra", "ca", "da", "bra", "ar", "en", "al", "lo", "cat", "or", "sp", "an", "seg",
        "me", "nt",
    ];
    let mut sql = String::with_capacity(40 << 20);
    sql.push_str(
        ".bail on\nPRAGMA cache_size = -131072;\n\
         CREATE TABLE t(id INTEGER PRIMARY KEY, grp INTEGER NOT NULL, name TEXT NOT NULL,\n\
         val REAL NOT NULL, payload TEXT NOT NULL);\nBEGIN;\n",
    );
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for id in 1..=ROWS {
        let r = next();
        let grp = r % 97;
        let mut name = String::new();
        for k in 0..(2 + (r >> 8) % 4) {
            name.push_str(SYLLABLES[((r >> (12 + 4 * k)) % 16) as usize]);
        }
        let val = (next() % 1_000_000) as f64 / 1000.0;
        let len = 10 + next() % 180;
        let mut payload = String::with_capacity(len as usize);
        let mut y = next();
        for _ in 0..len {
            payload.push((b'a' + (y % 26) as u8) as char);
            y = y.rotate_left(5) ^ 0x9E37_79B9;
        }
        writeln!(
            sql,
            "INSERT INTO t VALUES({id}, {grp}, '{name}{id}', {val:.3}, '{payload}');"
        )
        .expect("write to a String");
    }
    sql.push_str("COMMIT;\n");
    sql.push_str(
        &fs::read_to_string(scripts_dir().join("sqlite_queries.sql"))
            .expect("read tests/scripts/sqlite_queries.sql"),
    );
    sql
}

#[test]
fn sqlite_big_transaction() {
    let sqlite = require_tool("sqlite3");
    let sql = sqlite_workload();
    compare("sqlite3", |dir| {
        let file = dir.join("workload.sql");
        fs::write(&file, &sql).expect("write the SQL workload");
        let mut cmd = Command::new(&sqlite);
        cmd.arg("-batch")
            .arg(dir.join("test.db"))
            .arg(format!(".read {}", file.display()))
            .current_dir(dir);
        cmd
    });
}

#[test]
fn perl_hashes_strings() {
    let perl = require_tool("perl");
    let script = scripts_dir().join("alloc_heavy.pl");
    compare("perl", |dir| {
        let mut cmd = Command::new(&perl);
        cmd.arg(&script)
            .current_dir(dir)
            .env("PERL_HASH_SEED", "0")
            .env("PERL_PERTURB_KEYS", "0");
        cmd
    });
}
