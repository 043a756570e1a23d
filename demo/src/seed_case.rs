//! The seed case on real libraries (the default demonstration).
//!
//! `demo/seed/seed_case.c` is a C service: 400 requests, each building the
//! application's records (1200 strings of 32-512 B and 9 buffers of 4-64
//! KiB) and making one real HTTP request with libcurl, whose cookie jar keeps
//! every cookie the responses set (about 24 blocks per request, for good).
//! Half-way through it loads the system trust store with GnuTLS (144
//! certificates, 3.7 MB in 22 000 blocks, for good). Then it frees its
//! records and idles. Five fresh processes:
//!
//! 1. `glibc`: the system allocator;
//! 2. `glibc+trim`: and one `malloc_trim(0)` after the free;
//! 3. `arenalloc`: `libarenalloc.so` preloaded, everything in one arena;
//! 4. `arenalloc+routing`: preloaded with `ARENALLOC_LIBRARY_ARENAS` naming
//!    the TLS stack: no change to the program;
//! 5. `arenalloc+explicit`: preloaded, and the program wraps every library
//!    call in `malloc_set_arena` (the code change routing saves).
//!
//! The parent samples each child's RSS every 50 ms for the chart; the child
//! reports its own figures (VmHWM, VmRSS, RssAnon, the allocator's live
//! bytes) in one result line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::chart;
use crate::sampling::{self, SAMPLE_EVERY};

/// The TLS stack the routing mode names: libcurl, GnuTLS and the libraries
/// GnuTLS allocates through (libtasn1 makes 97% of the trust store's blocks).
pub const TLS_STACK: &str = "libcurl-gnutls.so*,libgnutls.so*,libtasn1.so*,libp11-kit.so*,\
                             libnettle.so*,libhogweed.so*,libgmp.so*,libidn2.so*";
const REQUESTS: &str = "400";
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Glibc,
    GlibcTrim,
    Arenalloc,
    ArenallocRouting,
    ArenallocExplicit,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::Glibc,
        Mode::GlibcTrim,
        Mode::Arenalloc,
        Mode::ArenallocRouting,
        Mode::ArenallocExplicit,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Glibc => "glibc",
            Mode::GlibcTrim => "glibc+trim",
            Mode::Arenalloc => "arenalloc",
            Mode::ArenallocRouting => "arenalloc+routing",
            Mode::ArenallocExplicit => "arenalloc+explicit",
        }
    }

    /// The program's own mode argument.
    fn program_mode(self) -> &'static str {
        match self {
            Mode::GlibcTrim => "glibc-trim",
            Mode::ArenallocExplicit => "explicit",
            _ => "plain",
        }
    }

    fn preloads(self) -> bool {
        !matches!(self, Mode::Glibc | Mode::GlibcTrim)
    }

    fn style(self) -> (&'static str, &'static str) {
        match self {
            Mode::Glibc => ("#d62728", ""),
            Mode::GlibcTrim => ("#ff8c00", "8 4"),
            Mode::Arenalloc => ("#1f5fbf", ""),
            Mode::ArenallocRouting => ("#2ca02c", ""),
            Mode::ArenallocExplicit => ("#6b3fa0", "3 3"),
        }
    }
}

/// What the demonstration needs, built or found.
struct Setup {
    program: PathBuf,
    preload: PathBuf,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("demo/ is inside the workspace")
        .to_path_buf()
}

fn run_checked(cmd: &mut Command, what: &str) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// Installs GnuTLS's and libcurl's headers, the CA bundle and a C compiler
/// with the project's script when any is missing.
fn ensure_packages() -> Result<(), String> {
    let present = |path: &str| Path::new(path).exists();
    let have_cc = Command::new("cc")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let have_curl =
        present("/usr/include/x86_64-linux-gnu/curl/curl.h") || present("/usr/include/curl/curl.h");
    if have_cc
        && have_curl
        && present("/usr/include/gnutls/gnutls.h")
        && present("/etc/ssl/certs/ca-certificates.crt")
    {
        return Ok(());
    }
    let script = workspace_root().join("scripts/install-demo-deps.sh");
    eprintln!(
        "installing what the demonstration needs: {}",
        script.display()
    );
    run_checked(
        Command::new("bash").arg(&script),
        "scripts/install-demo-deps.sh",
    )
}

/// Builds `libarenalloc.so` (next to this binary) and the C program.
fn prepare(exe: &Path) -> Result<Setup, String> {
    ensure_packages()?;
    let out_dir = exe
        .parent()
        .ok_or("the demo binary has no directory")?
        .to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building libarenalloc.so: cargo build --release -p arenalloc-capi");
    let mut build = Command::new(cargo);
    build
        .args(["build", "--release", "-p", "arenalloc-capi"])
        .current_dir(workspace_root());
    // The library must land next to this binary, in the same target dir.
    if let Some(target) = out_dir.parent() {
        build.env("CARGO_TARGET_DIR", target);
    }
    run_checked(&mut build, "cargo build -p arenalloc-capi")?;
    let preload = out_dir.join("libarenalloc.so");
    if !preload.is_file() {
        return Err(format!("{} was not built", preload.display()));
    }
    let program = out_dir.join("seed_case");
    let source = workspace_root().join("demo/seed/seed_case.c");
    eprintln!("compiling {}", source.display());
    run_checked(
        Command::new("cc")
            .args(["-O2", "-Wall", "-o"])
            .arg(&program)
            .arg(&source)
            .args(["-lgnutls", "-lcurl", "-lpthread", "-ldl"]),
        "cc demo/seed/seed_case.c",
    )?;
    Ok(Setup { program, preload })
}

struct Run {
    mode: Mode,
    /// The result line's `key=value` figures.
    figures: HashMap<String, String>,
    samples: Vec<(f64, usize)>,
    phases: Vec<(String, f64)>,
}

impl Run {
    fn kb(&self, key: &str) -> f64 {
        self.figures
            .get(key)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    }

    fn mib(&self, key: &str) -> f64 {
        self.kb(key) / 1024.0
    }
}

fn run_mode(setup: &Setup, mode: Mode) -> Result<Run, String> {
    let mut cmd = Command::new(&setup.program);
    cmd.args([mode.program_mode(), REQUESTS])
        .env_remove("LD_PRELOAD")
        .env_remove("ARENALLOC_LIBRARY_ARENAS");
    if mode.preloads() {
        cmd.env("LD_PRELOAD", &setup.preload);
    }
    if mode == Mode::ArenallocRouting {
        cmd.env("ARENALLOC_LIBRARY_ARENAS", TLS_STACK);
    }
    let watched = sampling::watch(&mut cmd, mode.name(), CHILD_TIMEOUT)?;
    let figures = watched.lines.iter().find_map(|(_, line)| {
        let rest = line.strip_prefix("result ")?;
        Some(
            rest.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
        )
    });
    let figures = figures.ok_or_else(|| format!("no result line from {}", mode.name()))?;
    Ok(Run {
        mode,
        figures,
        phases: watched.phases(),
        samples: watched.samples,
    })
}

fn print_table(runs: &[Run]) {
    println!(
        "{:<19} {:>7} {:>11} {:>11} {:>12} {:>13} {:>9}",
        "mode (MiB)", "peak", "after free", "idle 1.5 s", "heap (anon)", "libraries'", "build ms"
    );
    println!(
        "{:<19} {:>7} {:>11} {:>11} {:>12} {:>13} {:>9}",
        "", "", "", "", "after idle", "live", ""
    );
    for run in runs {
        println!(
            "{:<19} {:>7.1} {:>11.1} {:>11.1} {:>12.1} {:>13.1} {:>9}",
            run.mode.name(),
            run.mib("rss_peak_kb"),
            run.mib("rss_free_kb"),
            run.mib("rss_after_kb"),
            run.mib("anon_after_kb"),
            (run.kb("lib_live_kb") + run.kb("tls_live_kb")) / 1024.0,
            run.figures.get("build_ms").map_or("?", String::as_str)
        );
    }
}

fn explain(runs: &[Run]) {
    let find = |mode: Mode| {
        runs.iter()
            .find(|r| r.mode == mode)
            .expect("every mode ran")
    };
    let routing = find(Mode::ArenallocRouting);
    let explicit = find(Mode::ArenallocExplicit);
    let default = find(Mode::Arenalloc);
    let glibc = find(Mode::Glibc);
    let live = (routing.kb("lib_live_kb") + routing.kb("tls_live_kb")) / 1024.0;
    println!(
        "\nThe libraries keep {live:.1} MiB live at the end (libcurl's cookie jar {:.1}, the trust \
         store {:.1}); the application's {:.0} MiB of records are all freed.",
        routing.kb("lib_live_kb") / 1024.0,
        routing.kb("tls_live_kb") / 1024.0,
        routing.kb("live_app_bytes") / (1 << 20) as f64
    );
    println!(
        "- glibc keeps {:.0}% of its peak: the libraries' blocks are spread through its heap.",
        100.0 * glibc.kb("rss_after_kb") / glibc.kb("rss_peak_kb")
    );
    println!(
        "- arenalloc, no call and no change: its housekeeper returns every free 4 KiB page; the \
         heap ends at {:.1} MiB, because each request's cookies sit on pages of their own size \
         classes between the application's blocks.",
        default.mib("anon_after_kb")
    );
    println!(
        "- arenalloc+routing (ARENALLOC_LIBRARY_ARENAS, no change to the program): the heap ends \
         at {:.1} MiB, {:+.1} MiB from the explicit wrapping ({:.1} MiB), {:.1} MiB above the \
         libraries' live bytes.",
        routing.mib("anon_after_kb"),
        routing.mib("anon_after_kb") - explicit.mib("anon_after_kb"),
        explicit.mib("anon_after_kb"),
        routing.mib("anon_after_kb") - live
    );
    println!(
        "'heap (anon)' is RssAnon: RSS without the shared libraries' file pages (about {:.0} MiB \
         of every RSS figure here).",
        glibc.mib("rss_start_kb") - glibc.mib("anon_start_kb")
    );
}

fn write_chart(path: &Path, runs: &[Run]) -> std::io::Result<()> {
    let series: Vec<chart::Series> = runs
        .iter()
        .map(|run| {
            let (colour, dash) = run.mode.style();
            chart::Series {
                label: run.mode.name(),
                colour,
                dash,
                points: run
                    .samples
                    .iter()
                    .map(|&(t, b)| (t, b as f64 / (1 << 20) as f64))
                    .collect(),
                phases: run.phases.clone(),
            }
        })
        .collect();
    let svg = chart::render(
        "A service using libcurl and GnuTLS: RSS over time",
        &format!(
            "{REQUESTS} requests (app records freed at the end; cookie jar and trust store kept); \
             sampled from /proc/<pid>/statm every {} ms",
            SAMPLE_EVERY.as_millis()
        ),
        &series,
    );
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, svg)
}

/// Runs the five modes and prints the table; writes the chart to `chart`.
pub fn run(exe: &Path, chart: &Path) -> Result<(), String> {
    let setup = prepare(exe)?;
    println!(
        "A C service ({}) on Debian's libcurl and GnuTLS, {REQUESTS} requests, five fresh \
         processes. Routing names: {TLS_STACK}\n",
        setup.program.display()
    );
    let mut runs = Vec::new();
    for mode in Mode::ALL {
        eprintln!("running {} ...", mode.name());
        runs.push(run_mode(&setup, mode)?);
    }
    print_table(&runs);
    explain(&runs);
    write_chart(chart, &runs).map_err(|e| format!("cannot write {}: {e}", chart.display()))?;
    let shown = std::fs::canonicalize(chart).unwrap_or_else(|_| chart.to_path_buf());
    println!("\nChart of RSS over time: {}", shown.display());
    Ok(())
}
