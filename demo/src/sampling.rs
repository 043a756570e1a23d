//! Running a child process while watching it from outside: its RSS from
//! `/proc/<pid>/statm` every 50 ms (so measuring costs the child nothing)
//! and its stdout lines, each with the moment it arrived.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How often a child's RSS is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// The resident set size from a `statm` file, read into a stack buffer so
/// that measuring allocates nothing in the measured process.
pub fn statm_rss(path: &str) -> Option<usize> {
    let mut buf = [0u8; 256];
    let n = std::fs::File::open(path).ok()?.read(&mut buf).ok()?;
    let text = std::str::from_utf8(buf.get(..n)?).ok()?;
    let pages: usize = text.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * usize::try_from(page).unwrap_or(4096))
}

/// What watching one child saw.
pub struct Watched {
    /// (seconds since spawn, RSS bytes).
    pub samples: Vec<(f64, usize)>,
    /// (seconds since spawn, line), the child's stdout.
    pub lines: Vec<(f64, String)>,
}

impl Watched {
    /// The "phase NAME" lines as (name, seconds since spawn).
    pub fn phases(&self) -> Vec<(String, f64)> {
        self.lines
            .iter()
            .filter_map(|(t, line)| Some((line.strip_prefix("phase ")?.to_string(), *t)))
            .collect()
    }
}

/// Runs `cmd` to its end (its stdout piped here), sampling its RSS; an
/// error names `what` if it cannot start, fails, or runs over `timeout`.
pub fn watch(cmd: &mut Command, what: &str, timeout: Duration) -> Result<Watched, String> {
    let spawned = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    // Lines are read (and timestamped) on their own thread, so a phase's time
    // is when it began, not when the sampler next looked.
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .map(|line| (spawned.elapsed().as_secs_f64(), line))
            .collect::<Vec<_>>()
    });
    let statm = format!("/proc/{}/statm", child.id());
    let mut samples = Vec::new();
    let mut next = spawned;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        let t = spawned.elapsed();
        if t > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} ran over {timeout:?}"));
        }
        // A zombie's statm reads 0: not a sample.
        if let Some(rss) = statm_rss(&statm).filter(|&r| r > 0) {
            samples.push((t.as_secs_f64(), rss));
        }
        next += SAMPLE_EVERY;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    };
    let lines = reader.join().map_err(|_| "the reader thread panicked")?;
    if !status.success() {
        return Err(format!("{what} failed: {status}"));
    }
    Ok(Watched { samples, lines })
}
