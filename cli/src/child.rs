//! Runs one command to its end: with or without arenalloc preloaded, its
//! RSS sampled from `/proc/<pid>/statm` every 50 ms, its peak from the
//! kernel (`wait4`'s `ru_maxrss`), and arenalloc's own exit figures read from
//! a file the child's allocator writes to (`ARENALLOC_STATS=json` on a
//! descriptor passed to it), never from its human summary.

use std::ffi::OsString;
use std::fs::File;
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The descriptor the child's allocator writes its figures to: high, so
/// it does not take a number the program expects to open itself.
const STATS_FD: i32 = 1000;
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// How the command is run.
pub struct Launch {
    pub command: Vec<OsString>,
    /// `libarenalloc.so` to preload; `None`: the system allocator.
    pub preload: Option<PathBuf>,
    /// `ARENALLOC_LIBRARY_ARENAS` patterns.
    pub library_arenas: Vec<String>,
    /// Name in progress lines and reports.
    pub label: String,
}

/// How the command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The status this command should itself exit with: the child's code,
    /// or 128 + the signal (as a shell reports it).
    pub fn as_status(self) -> i32 {
        match self {
            Exit::Code(code) => code,
            Exit::Signal(signal) => 128 + signal,
        }
    }

    pub fn describe(self) -> String {
        match self {
            Exit::Code(code) => format!("exit status {code}"),
            Exit::Signal(signal) => format!("killed by signal {signal} ({})", signal_name(signal)),
        }
    }
}

pub fn signal_name(signal: i32) -> String {
    // SAFETY: strsignal returns a static or thread-local string (or null).
    let text = unsafe { libc::strsignal(signal) };
    let description = if text.is_null() {
        "unknown signal".to_owned()
    } else {
        // SAFETY: a NUL-terminated string from strsignal.
        unsafe { std::ffi::CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    };
    let abbreviation = match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGHUP => "SIGHUP",
        libc::SIGPIPE => "SIGPIPE",
        _ => return description,
    };
    format!("{abbreviation}: {description}")
}

/// What one run measured.
pub struct Outcome {
    pub label: String,
    pub preloaded: bool,
    pub library_arenas: Vec<String>,
    pub exit: Exit,
    pub wall: Duration,
    /// (seconds since start, RSS bytes).
    pub samples: Vec<(f64, u64)>,
    /// The kernel's high-water mark of the child's RSS.
    pub peak_rss: u64,
    /// RSS at the end: arenalloc's own reading at exit when it made one,
    /// else the last sample.
    pub final_rss: u64,
    /// arenalloc's exit document for the child's pid, if it wrote one.
    pub allocator: Option<Value>,
}

fn rss_of(pid: u32, page: u64) -> Option<u64> {
    let mut text = String::new();
    File::open(format!("/proc/{pid}/statm"))
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page)
}

/// A file the child's allocator appends its figures to, removed from the
/// directory at once (only the descriptors keep it).
fn stats_file() -> std::io::Result<File> {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("arenalloc-stats-{}-{run}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// Runs the command to its end.
pub fn run(launch: &Launch) -> Result<Outcome, String> {
    let (program, args) = launch.command.split_first().ok_or("no command to run")?;
    let mut stats = stats_file().map_err(|e| format!("cannot create a statistics file: {e}"))?;
    let stats_fd = stats.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove("ARENALLOC_STATS")
        .env_remove("ARENALLOC_STATS_FD");
    if let Some(library) = &launch.preload {
        let mut preload = library.as_os_str().to_owned();
        if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
            preload.push(":");
            preload.push(existing);
        }
        cmd.env("LD_PRELOAD", preload)
            .env("ARENALLOC_STATS", "json")
            .env("ARENALLOC_STATS_FD", STATS_FD.to_string());
        if launch.library_arenas.is_empty() {
            cmd.env_remove("ARENALLOC_LIBRARY_ARENAS");
        } else {
            cmd.env("ARENALLOC_LIBRARY_ARENAS", launch.library_arenas.join(","));
        }
        // SAFETY: only dup2 between fork and exec (async-signal-safe); the
        // statistics file's descriptor is open in the parent.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(stats_fd, STATS_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    } else {
        cmd.env_remove("LD_PRELOAD")
            .env_remove("ARENALLOC_LIBRARY_ARENAS");
    }
    let started = Instant::now();
    let child = cmd.spawn().map_err(|e| {
        format!(
            "cannot run {}: {e}",
            std::path::Path::new(program).display()
        )
    })?;
    let pid = child.id();
    // SAFETY: sysconf cannot fail for _SC_PAGESIZE.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    let progress = std::io::stderr().is_terminal();
    let mut samples = Vec::new();
    let mut next = started;
    let (exit, usage) = loop {
        let mut status = 0;
        // SAFETY: a zeroed rusage is a valid out-parameter.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child without blocking; the pointers
        // are valid for the call.
        let waited = unsafe { libc::wait4(pid as i32, &mut status, libc::WNOHANG, &mut usage) };
        if waited == pid as i32 {
            let exit = if libc::WIFSIGNALED(status) {
                Exit::Signal(libc::WTERMSIG(status))
            } else {
                Exit::Code(libc::WEXITSTATUS(status))
            };
            break (exit, usage);
        }
        if waited < 0 {
            return Err(format!(
                "waiting for the command failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        let t = started.elapsed().as_secs_f64();
        if let Some(rss) = rss_of(pid, page).filter(|&r| r > 0) {
            samples.push((t, rss));
            if progress {
                let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
                eprint!(
                    "\rarenalloc: {:<18} {:>7.1} s   RSS {:>9.1} MiB   peak {:>9.1} MiB ",
                    launch.label,
                    t,
                    mib(rss),
                    mib(peak)
                );
                let _ = std::io::stderr().flush();
            }
        }
        next += SAMPLE_EVERY;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    };
    let wall = started.elapsed();
    if progress {
        eprint!("\r{:79}\r", "");
    }
    drop(child);
    // The child is gone; only descendants that outlive it still write.
    let mut text = String::new();
    stats
        .seek(SeekFrom::Start(0))
        .and_then(|_| stats.read_to_string(&mut text))
        .map_err(|e| format!("cannot read the statistics file: {e}"))?;
    let allocator = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .rfind(|doc| doc.get("pid").and_then(Value::as_u64) == Some(u64::from(pid)));
    let peak_rss = (usage.ru_maxrss.max(0) as u64) * 1024;
    let final_rss = allocator
        .as_ref()
        .and_then(|doc| doc.get("rss_bytes").and_then(Value::as_u64))
        .or_else(|| samples.last().map(|s| s.1))
        .unwrap_or(0);
    Ok(Outcome {
        label: launch.label.clone(),
        preloaded: launch.preload.is_some(),
        library_arenas: launch.library_arenas.clone(),
        exit,
        wall,
        samples,
        peak_rss,
        final_rss,
        allocator,
    })
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}
