//! Helpers for the tests that run native programs against the C ABI
//! (`c_abi.rs`, `real_programs.rs`): finding (or building) the release
//! `libarenalloc.{so,a}`, finding the tools, running a process with a time
//! limit.
//!
//! Included with `#[path = "support/native.rs"] mod native;` so it needs
//! nothing from the `arenalloc-tests` library.

#![allow(dead_code)]

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// The script that installs every program these tests need.
pub const INSTALL_SCRIPT: &str = "scripts/install-test-deps.sh";

/// The line `ARENALLOC_VERBOSE=1` makes every process print when the library
/// is loaded (capi/src/lib.rs, `on_load`).
pub const LOAD_LINE_PREFIX: &str = "arenalloc: loaded (pid ";

/// What the Rust staticlib needs from the system when linked into a C
/// program: the list `cargo rustc --release -p arenalloc-capi --crate-type
/// staticlib -- --print native-static-libs` prints (de-duplicated).
/// `--whole-archive` is not needed: a test program refers to `malloc`,
/// which pulls in the (single, LTO-merged) object that defines every
/// exported function and the load hook; forcing the whole archive in would
/// also pull in unused std objects. (Shared by `c_abi.rs` and
/// `c_arena_api.rs`.)
pub const STATIC_LIBS: &[&str] = &[
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

/// Setting this to 1 forces the nested build of the C ABI libraries even if
/// the workspace's release build is present and up to date (to exercise that
/// path).
pub const FORCE_BUILD_ENV: &str = "ARENALLOC_CAPI_FORCE_BUILD";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The target directory this test binary was built in: `CARGO_TARGET_DIR`
/// if set, else the directory above `<profile>/deps/` of the running test
/// executable, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() {
            dir
        } else {
            workspace_root().join(dir)
        };
    }
    if let Ok(exe) = std::env::current_exe() {
        // <target>/<profile>/deps/<test binary>
        if let Some(target) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            if target.join("release").is_dir() || target.join("debug").is_dir() {
                return target.to_path_buf();
            }
        }
    }
    workspace_root().join("target")
}

/// Paths to the release C ABI libraries the tests use.
#[derive(Debug)]
pub struct CapiLibs {
    /// `libarenalloc.so`, absolute (for `LD_PRELOAD`).
    pub so: PathBuf,
    /// `libarenalloc.a`, absolute.
    pub a: PathBuf,
    /// How they were found, for the test log.
    pub origin: String,
}

/// The source files listed in a cargo dep-info file (`libarenalloc.d`),
/// or None if it is missing or lists none.
fn dep_info_sources(d_file: &Path) -> Option<Vec<PathBuf>> {
    let text = fs::read_to_string(d_file).ok()?;
    let mut sources = Vec::new();
    for line in text.lines() {
        // "<output>: <dep> <dep> ..." with spaces in paths escaped as "\ ".
        let Some((_, deps)) = line.split_once(": ") else {
            continue;
        };
        let mut current = String::new();
        let mut chars = deps.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&' ') => {
                    current.push(' ');
                    chars.next();
                }
                ' ' => {
                    if !current.is_empty() {
                        sources.push(PathBuf::from(std::mem::take(&mut current)));
                    }
                }
                _ => current.push(c),
            }
        }
        if !current.is_empty() {
            sources.push(PathBuf::from(current));
        }
    }
    if sources.is_empty() {
        None
    } else {
        Some(sources)
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Why the release libraries in `dir` cannot be used as they are, or None if
/// they can: missing, or older than a source they were built from (per the
/// dep-info file cargo writes next to them, plus the two crates' manifests).
pub fn staleness(dir: &Path) -> Option<String> {
    let so = dir.join("libarenalloc.so");
    let a = dir.join("libarenalloc.a");
    for lib in [&so, &a] {
        if !lib.is_file() {
            return Some(format!("{} is missing", lib.display()));
        }
    }
    let oldest = mtime(&so)?.min(mtime(&a)?);
    let d_file = dir.join("libarenalloc.d");
    let Some(mut sources) = dep_info_sources(&d_file) else {
        return Some(format!("{} is missing or empty", d_file.display()));
    };
    let root = workspace_root();
    sources.push(root.join("capi/Cargo.toml"));
    sources.push(root.join("allocator/Cargo.toml"));
    // Built by the build scripts, so not in rustc's dep-info.
    sources.push(root.join("capi/build.rs"));
    sources.push(root.join("allocator/build.rs"));
    sources.push(root.join("allocator/src/library_routing/routed_libc.c"));
    sources.push(root.join("capi/src/unwind_shim.c"));
    for src in sources {
        match mtime(&src) {
            None => {
                return Some(format!(
                    "{} (a source of the library) is gone",
                    src.display()
                ))
            }
            Some(t) if t > oldest => {
                return Some(format!(
                    "{} is newer than the libraries in {}",
                    src.display(),
                    dir.display()
                ))
            }
            Some(_) => {}
        }
    }
    None
}

/// Builds the C ABI libraries with a nested `cargo build --release -p
/// arenalloc-capi` into a target directory of its own (so it never waits on,
/// or races with, a cargo that holds the workspace's target directory).
fn nested_build(reason: &str) -> PathBuf {
    let target = target_dir().join("capi-for-tests");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    eprintln!(
        "c-abi libs: {reason}; building them: cargo build --release -p arenalloc-capi (CARGO_TARGET_DIR={})",
        target.display()
    );
    let started = Instant::now();
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "arenalloc-capi"])
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", &target)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "could not run {cargo:?} to build libarenalloc ({e}); build it first with \
                 `cargo build --release -p arenalloc-capi`"
            )
        });
    assert!(
        status.success(),
        "the nested `cargo build --release -p arenalloc-capi` failed ({status}); \
         run it yourself to see why"
    );
    eprintln!("c-abi libs: nested build took {:.1?}", started.elapsed());
    target.join("release")
}

/// The release `libarenalloc.{so,a}`: the workspace's own
/// (`target/release/`, as built by `cargo build --release -p
/// arenalloc-capi`) when present and up to date, else built once per test
/// process into `target/capi-for-tests/`.
pub fn capi_libs() -> &'static CapiLibs {
    static LIBS: OnceLock<CapiLibs> = OnceLock::new();
    LIBS.get_or_init(|| {
        let main = target_dir().join("release");
        let forced = std::env::var_os(FORCE_BUILD_ENV).is_some_and(|v| v == "1");
        let reason = if forced {
            Some(format!("{FORCE_BUILD_ENV}=1"))
        } else {
            staleness(&main)
        };
        let (dir, origin) = match reason {
            None => (main, "workspace release build".to_owned()),
            Some(reason) => {
                let dir = nested_build(&reason);
                if let Some(problem) = staleness(&dir) {
                    panic!("after the nested build the libraries are still unusable: {problem}");
                }
                (dir, format!("nested build ({reason})"))
            }
        };
        let libs = CapiLibs {
            so: fs::canonicalize(dir.join("libarenalloc.so")).expect("libarenalloc.so exists"),
            a: fs::canonicalize(dir.join("libarenalloc.a")).expect("libarenalloc.a exists"),
            origin,
        };
        eprintln!(
            "c-abi libs: {} and {} ({})",
            libs.so.display(),
            libs.a.display(),
            libs.origin
        );
        libs
    })
}

/// Runs `compiler` (`cc`, `g++`: found with [`require_tool`]) with `args`;
/// a failure fails the test with the compiler's messages, naming `what`.
pub fn compile_with(compiler: &str, args: &[&str], what: &str) {
    let mut cmd = Command::new(require_tool(compiler));
    cmd.args(args);
    let run = run_with_limit(&mut cmd, Duration::from_secs(180));
    assert!(
        run.status.success(),
        "compiling {what} failed ({}):\n{}",
        run.describe_status(),
        run.stderr_text()
    );
}

/// The absolute path of `name` found in `PATH`. Panics (a test failure, not
/// a skip) naming the install script when it is not installed.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if let Ok(meta) = fs::metadata(&candidate) {
            use std::os::unix::fs::PermissionsExt;
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return candidate;
            }
        }
    }
    panic!(
        "`{name}` is not installed (not found in PATH); install the test dependencies with \
         `sudo bash {INSTALL_SCRIPT}` (from the workspace root)"
    );
}

/// What a finished (or killed) process left behind.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
    pub timed_out: bool,
}

impl Run {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Exit status in words, with the signal name for a crash.
    pub fn describe_status(&self) -> String {
        use std::os::unix::process::ExitStatusExt;
        if self.timed_out {
            return format!("killed after the {:.0?} time limit", self.elapsed);
        }
        match (self.status.code(), self.status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => {
                let name = match sig {
                    libc::SIGSEGV => "SIGSEGV",
                    libc::SIGABRT => "SIGABRT",
                    libc::SIGBUS => "SIGBUS",
                    libc::SIGILL => "SIGILL",
                    libc::SIGFPE => "SIGFPE",
                    libc::SIGKILL => "SIGKILL",
                    _ => "signal",
                };
                format!(
                    "killed by {name} ({sig}){}",
                    if self.status.core_dumped() {
                        ", core dumped"
                    } else {
                        ""
                    }
                )
            }
            _ => format!("{}", self.status),
        }
    }

    /// Lines of stderr other than the allocator's load announcements.
    pub fn stderr_without_load_lines(&self) -> String {
        self.stderr_text()
            .lines()
            .filter(|l| !l.starts_with(LOAD_LINE_PREFIX))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    pub fn load_lines(&self) -> usize {
        self.stderr_text()
            .lines()
            .filter(|l| l.starts_with(LOAD_LINE_PREFIX))
            .count()
    }
}

/// Runs `cmd` to completion with its output captured, killing it (and its
/// process group) after `limit`.
pub fn run_with_limit(cmd: &mut Command, limit: Duration) -> Run {
    use std::os::unix::process::CommandExt;
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"));
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if started.elapsed() > limit {
            timed_out = true;
            let pgid = child.id() as libc::pid_t;
            // SAFETY: signalling the process group we created for the child.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            break child.wait().expect("wait for killed child");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    Run {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
        elapsed,
        timed_out,
    }
}

/// The last `max` lines of `text`.
pub fn tail(text: &str, max: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(max);
    lines[from..].join("\n")
}
