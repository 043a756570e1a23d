//! Shared helpers for the integration tests.
//!
//! - [`pattern`]: fill blocks with bytes derived from a seed and a position,
//!   and check them later (whole blocks, or a sparse sample for big ones).
//! - [`Rng`]: a small deterministic generator (SplitMix64) for stress tests.
//! - [`rss_bytes`], [`errno`], [`set_errno`]: process facts.
//! - [`run_in_child`]: re-runs one test of the current test binary in a
//!   child process with a scenario selected by an environment variable;
//!   [`run_in_child_timed`] also kills it (and says where it hung) after a
//!   timeout.
//! - [`stuck_process_report`]: what a hung child is doing (for deadlock
//!   failures).

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Seed- and position-derived bytes: byte `i` of a block filled with `seed`
/// is byte `i % 8` (little-endian) of `word(seed, i / 8)`, whatever the block
/// length, so a prefix check of a longer fill is meaningful (for `realloc`).
pub mod pattern {
    /// The 8 pattern bytes at word index `w` of a block seeded `seed`.
    #[inline(always)]
    pub fn word(seed: u64, w: usize) -> u64 {
        let x = seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add((w as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        x ^ (x >> 29) ^ 0x5555_5555_5555_5555
    }

    /// Writes words `first..last` of the pattern.
    ///
    /// # Safety
    /// `p + 8 * last` bytes are writable.
    unsafe fn fill_words(p: *mut u8, first: usize, last: usize, seed: u64) {
        let wp = p.cast::<u64>();
        for w in first..last {
            // SAFETY: in bounds by the caller's contract.
            unsafe { wp.add(w).write_unaligned(word(seed, w)) };
        }
    }

    /// First mismatching byte offset among words `first..last`.
    ///
    /// # Safety
    /// `p + 8 * last` bytes are readable.
    unsafe fn check_words(p: *const u8, first: usize, last: usize, seed: u64) -> Result<(), usize> {
        let wp = p.cast::<u64>();
        for w in first..last {
            // SAFETY: in bounds by the caller's contract.
            let got = unsafe { wp.add(w).read_unaligned() };
            let want = word(seed, w);
            if got != want {
                let byte = ((got ^ want).trailing_zeros() / 8) as usize;
                return Err(w * 8 + byte);
            }
        }
        Ok(())
    }

    /// # Safety
    /// `p..p+len` is writable.
    unsafe fn fill_tail(p: *mut u8, len: usize, seed: u64) {
        let words = len / 8;
        let tail = word(seed, words).to_le_bytes();
        for (i, &b) in tail.iter().enumerate().take(len % 8) {
            // SAFETY: `words * 8 + i < len`.
            unsafe { *p.add(words * 8 + i) = b };
        }
    }

    /// # Safety
    /// `p..p+len` is readable.
    unsafe fn check_tail(p: *const u8, len: usize, seed: u64) -> Result<(), usize> {
        let words = len / 8;
        let tail = word(seed, words).to_le_bytes();
        for (i, &b) in tail.iter().enumerate().take(len % 8) {
            // SAFETY: `words * 8 + i < len`.
            if unsafe { *p.add(words * 8 + i) } != b {
                return Err(words * 8 + i);
            }
        }
        Ok(())
    }

    /// Fills all of `p..p+len`.
    ///
    /// # Safety
    /// `p..p+len` is writable memory the caller owns.
    pub unsafe fn fill(p: *mut u8, len: usize, seed: u64) {
        // SAFETY: forwarded.
        unsafe {
            fill_words(p, 0, len / 8, seed);
            fill_tail(p, len, seed);
        }
    }

    /// Checks all of `p..p+len`; `Err(offset)` of the first wrong byte.
    ///
    /// # Safety
    /// `p..p+len` is readable memory the caller owns.
    pub unsafe fn check(p: *const u8, len: usize, seed: u64) -> Result<(), usize> {
        // SAFETY: forwarded.
        unsafe {
            check_words(p, 0, len / 8, seed)?;
            check_tail(p, len, seed)
        }
    }

    /// The word ranges a sparse fill touches: the first and last 256 bytes
    /// and one word per 1 KiB in between.
    fn sparse_ranges(
        len: usize,
        mut f: impl FnMut(usize, usize) -> Result<(), usize>,
    ) -> Result<(), usize> {
        let words = len / 8;
        if words <= 64 {
            return f(0, words);
        }
        f(0, 32)?;
        let mut w = 128;
        while w < words - 32 {
            f(w, w + 1)?;
            w += 128;
        }
        f(words - 32, words)
    }

    /// Fills the first and last 256 bytes of `p..p+len` and one word in
    /// every KiB: enough to see overlaps and stray writes in big blocks
    /// cheaply.
    ///
    /// # Safety
    /// As [`fill`].
    pub unsafe fn fill_sparse(p: *mut u8, len: usize, seed: u64) {
        let _ = sparse_ranges(len, |a, b| {
            // SAFETY: `b <= len / 8`.
            unsafe { fill_words(p, a, b, seed) };
            Ok(())
        });
        // SAFETY: forwarded.
        unsafe { fill_tail(p, len, seed) };
    }

    /// Checks what [`fill_sparse`] wrote.
    ///
    /// # Safety
    /// As [`check`].
    pub unsafe fn check_sparse(p: *const u8, len: usize, seed: u64) -> Result<(), usize> {
        // SAFETY: `b <= len / 8`.
        sparse_ranges(len, |a, b| unsafe { check_words(p, a, b, seed) })?;
        // SAFETY: forwarded.
        unsafe { check_tail(p, len, seed) }
    }

    /// Checks the first `prefix` bytes of what [`fill_sparse`] wrote over
    /// `filled` bytes (`prefix <= filled`): what `realloc` must have kept.
    ///
    /// # Safety
    /// `p..p+prefix` is readable.
    pub unsafe fn check_sparse_prefix(
        p: *const u8,
        filled: usize,
        prefix: usize,
        seed: u64,
    ) -> Result<(), usize> {
        let limit = prefix / 8;
        // SAFETY: the word ranges are clipped to `prefix / 8`.
        sparse_ranges(filled, |a, b| unsafe {
            check_words(p, a.min(limit), b.min(limit), seed)
        })?;
        if prefix == filled {
            // SAFETY: forwarded.
            unsafe { check_tail(p, filled, seed) }?;
        }
        Ok(())
    }

    /// Offset of the first non-zero byte of `p..p+len`, if any.
    ///
    /// # Safety
    /// `p..p+len` is readable.
    pub unsafe fn first_nonzero(p: *const u8, len: usize) -> Option<usize> {
        // SAFETY: forwarded.
        let bytes = unsafe { std::slice::from_raw_parts(p, len) };
        // SAFETY: any bytes are valid u64s.
        let (head, words, _) = unsafe { bytes.align_to::<u64>() };
        if let Some(i) = head.iter().position(|&b| b != 0) {
            return Some(i);
        }
        // Skip the zero words, then find the byte.
        let zero_words = words.iter().position(|&w| w != 0).unwrap_or(words.len());
        let start = head.len() + zero_words * 8;
        bytes[start..]
            .iter()
            .position(|&b| b != 0)
            .map(|i| i + start)
    }
}

/// SplitMix64: small, fast, deterministic.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x2545_F491_4F6C_DD1D)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// Log-uniform in `lo..=hi` (lo >= 1): as many 16-32 B requests as
    /// 32-64 KiB ones.
    pub fn log_range(&mut self, lo: usize, hi: usize) -> usize {
        let lo_bits = usize::BITS - lo.leading_zeros();
        let hi_bits = usize::BITS - hi.leading_zeros();
        let bits = self.range(lo_bits as usize, hi_bits as usize) as u32;
        let top = 1usize << (bits - 1);
        let v = top + self.below(top);
        v.clamp(lo, hi)
    }

    /// True with probability 1/n.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// Resident set size of this process, from `/proc/self/statm`.
pub fn rss_bytes() -> usize {
    let text = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = text
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm has a resident field");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    pages * page
}

/// The calling thread's `errno`.
pub fn errno() -> i32 {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
pub fn set_errno(value: i32) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = value }
}

/// Runs the test `test_name` of the current test binary again, alone, in a
/// child process with `env_key=scenario` in its environment and core dumps
/// disabled; returns its exit status and output.
pub fn run_in_child(test_name: &str, env_key: &str, scenario: &str) -> Output {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(env_key, scenario);
    no_core_dumps(&mut cmd);
    cmd.output().expect("spawn the test binary")
}

/// Maps a read-write page at `addr`, where nothing may be mapped; panics if
/// something is (`MAP_FIXED_NOREPLACE`). For tests that put a foreign page
/// into a hole the allocator gave back.
pub fn map_page_at(addr: usize) {
    // SAFETY: MAP_FIXED_NOREPLACE maps only where nothing is mapped.
    let page = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    assert_eq!(page as usize, addr, "could not map a page at {addr:#x}");
}

/// How a child of [`run_in_child_timed`] ended, and its output.
pub struct ChildRun {
    /// `exit status: 0`, `signal: 6 (SIGABRT)`, or a description of where
    /// it hung before it was killed.
    pub status: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ChildRun {
    /// Everything about the run, for an assertion message.
    pub fn report(&self, what: &str) -> String {
        format!(
            "{what}: {}\n--- child stdout:\n{}\n--- child stderr:\n{}",
            self.status,
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        )
    }
}

/// Runs test `name` alone in a child process: this test binary again, with
/// `child_var=<name>` and `env` added. In the child (`child_var` names this
/// test), runs `body`, prints `<name>: done` and returns `None`. In the test
/// process, checks that the child ran the body and exited 0 within `timeout`,
/// and returns its run (for a report).
pub fn test_in_child(
    child_var: &str,
    name: &str,
    env: &[(&str, &str)],
    timeout: Duration,
    body: fn(),
) -> Option<ChildRun> {
    if std::env::var(child_var).as_deref() == Ok(name) {
        body();
        println!("{name}: done");
        return None;
    }
    let mut env = env.to_vec();
    env.push((child_var, name));
    let run = run_in_child_timed(name, &env, &[], timeout);
    let report = run.report(name);
    assert_eq!(run.status, "exit status: 0", "the child failed\n{report}");
    assert!(
        contains(&run.stdout, &format!("{name}: done")),
        "the child did not run the test\n{report}"
    );
    Some(run)
}

/// Runs `<this binary> <test_name> --exact` with `env` added (and the
/// variables in `remove` taken out of) the environment; kills it, and
/// reports where it hung, after `timeout`.
pub fn run_in_child_timed(
    test_name: &str,
    env: &[(&str, &str)],
    remove: &[&str],
    timeout: Duration,
) -> ChildRun {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([test_name, "--exact", "--include-ignored", "--nocapture"])
        .arg("--test-threads=1");
    for key in remove {
        cmd.env_remove(key);
    }
    cmd.envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    no_core_dumps(&mut cmd);
    let mut child = cmd.spawn().expect("spawn the test binary");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status.to_string();
        }
        if Instant::now() >= deadline {
            let stuck = stuck_process_report(child.id() as libc::pid_t);
            let _ = child.kill();
            let _ = child.wait();
            break format!("still running after {timeout:?} (killed)\n{stuck}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    ChildRun {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Makes the child `cmd` starts write no core file (tests that expect an
/// abort should not litter the disk).
pub fn no_core_dumps(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and touches no shared state.
    unsafe {
        cmd.pre_exec(|| {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            Ok(())
        });
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes();
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What a stuck process is doing: its state and wait channel from /proc,
/// and a backtrace from gdb if gdb is installed.
pub fn stuck_process_report(pid: libc::pid_t) -> String {
    let proc_file = |name: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{name}")).unwrap_or_else(|e| format!("({e})"))
    };
    let mut report = format!(
        "state: {}\nwchan: {}\nsyscall: {}",
        proc_file("stat"),
        proc_file("wchan"),
        proc_file("syscall")
    );
    let gdb = std::process::Command::new("timeout")
        .args(["20", "gdb", "-p", &pid.to_string(), "-batch", "-nx"])
        .args(["-ex", "thread apply all bt"])
        .output();
    if let Ok(out) = gdb {
        report.push_str("\ngdb:\n");
        report.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    report
}
