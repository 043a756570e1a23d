//! The `arenalloc` command, driven as a user drives it, on real programs:
//! python3 and the demonstration's C service. Figures are checked against
//! what the child itself reads in `/proc` and against the JSON report.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn arenalloc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_arenalloc"))
}

fn out_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("cli")
        .join(name);
    std::fs::create_dir_all(&dir).expect("create the test's directory");
    dir
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn report(output: &Output) -> String {
    format!(
        "{}\n--- stdout:\n{}--- stderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    )
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("the JSON report"))
        .expect("the JSON report parses")
}

#[test]
fn run_reports_the_peak_the_child_saw_in_proc_and_arenallocs_own_figures() {
    let dir = out_dir("run");
    let json_path = dir.join("report.json");
    let chart_path = dir.join("chart.svg");
    // Allocates ~100 MB, frees it, and prints its own VmHWM as it exits.
    let program = "x = [bytes(1000) for _ in range(100000)]\n\
                   del x\n\
                   print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))";
    let output = arenalloc()
        .arg("run")
        .arg("--json")
        .arg(&json_path)
        .arg("--chart")
        .arg(&chart_path)
        .args(["--", "python3", "-c", program])
        .output()
        .expect("run arenalloc");
    let all = report(&output);
    assert!(output.status.success(), "{all}");
    let vm_hwm_kb: u64 = text(&output.stdout).trim().parse().expect("VmHWM in kB");
    let doc = json(&json_path);
    let run = &doc["runs"][0];
    let peak = run["peak_rss_bytes"].as_u64().expect("peak");
    // The kernel's high-water mark at exit can only have grown after the
    // child printed it.
    assert!(
        peak >= vm_hwm_kb * 1024 && peak <= vm_hwm_kb * 1024 + (8 << 20),
        "peak {peak} B against the child's VmHWM {vm_hwm_kb} kB\n{all}"
    );
    assert!(run["final_rss_bytes"].as_u64().unwrap() <= peak, "{all}");
    assert!(!run["samples"].as_array().unwrap().is_empty(), "{all}");
    let figures = &run["arenalloc"];
    assert!(
        figures["pid"].as_u64().is_some() && figures["arenas"][0]["default"] == true,
        "arenalloc's exit figures are missing: {figures}\n{all}"
    );
    assert!(
        figures["peak_mapped_bytes"].as_u64().unwrap() >= 90 << 20,
        "{figures}"
    );
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("arenalloc: arenalloc finished: exit status 0")
            && stderr.contains("arena 0x1 (default)"),
        "{all}"
    );
    let svg = std::fs::read_to_string(&chart_path).expect("the chart");
    assert!(
        svg.starts_with("<svg") && svg.contains("arenalloc"),
        "{svg}"
    );
}

#[test]
fn the_childs_exit_status_is_passed_on() {
    let output = arenalloc()
        .args(["run", "--", "python3", "-c", "import sys; sys.exit(7)"])
        .output()
        .expect("run arenalloc");
    assert_eq!(output.status.code(), Some(7), "{}", report(&output));
}

#[test]
fn a_child_killed_by_a_signal_is_reported_as_such() {
    let dir = out_dir("signal");
    let json_path = dir.join("report.json");
    let output = arenalloc()
        .arg("run")
        .arg("--json")
        .arg(&json_path)
        .args([
            "--",
            "python3",
            "-c",
            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
        ])
        .output()
        .expect("run arenalloc");
    let all = report(&output);
    assert_eq!(output.status.code(), Some(128 + 9), "{all}");
    assert!(
        text(&output.stderr).contains("killed by signal 9 (SIGKILL"),
        "{all}"
    );
    assert_eq!(json(&json_path)["runs"][0]["exit"]["signal"], 9, "{all}");
}

#[test]
fn bad_use_gets_a_clear_message_and_a_failing_status() {
    let missing = arenalloc().arg("run").output().expect("run arenalloc");
    assert!(!missing.status.success(), "{}", report(&missing));
    assert!(
        text(&missing.stderr).contains("CMD ARGS"),
        "{}",
        report(&missing)
    );

    let not_found = arenalloc()
        .args(["run", "--", "/nonexistent/program"])
        .output()
        .expect("run arenalloc");
    assert_eq!(not_found.status.code(), Some(2), "{}", report(&not_found));
    assert!(
        text(&not_found.stderr).contains("cannot run /nonexistent/program"),
        "{}",
        report(&not_found)
    );

    let chart = arenalloc()
        .args(["run", "--chart", "/nonexistent/dir/chart.svg", "--", "true"])
        .output()
        .expect("run arenalloc");
    assert_eq!(chart.status.code(), Some(2), "{}", report(&chart));
    assert!(
        text(&chart.stderr).contains("cannot write the chart to /nonexistent/dir/chart.svg"),
        "{}",
        report(&chart)
    );
}

/// The demonstration's service (libcurl's cookie jar and GnuTLS's trust
/// store), compared under glibc, arenalloc and arenalloc with the TLS stack
/// routed: three runs in the table and the JSON, and routing's RSS at the
/// end far under glibc's (265 MB against 15 MB on this project's machine).
#[test]
fn compare_runs_a_real_service_three_ways() {
    let dir = out_dir("compare");
    let program = dir.join("seed_case");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/seed/seed_case.c");
    let cc = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&program)
        .arg(&source)
        .args(["-lgnutls", "-lcurl", "-lpthread", "-ldl"])
        .output()
        .expect("run cc (scripts/install-demo-deps.sh installs it)");
    assert!(cc.status.success(), "{}", report(&cc));
    let json_path = dir.join("report.json");
    let output = arenalloc()
        .arg("compare")
        .args([
            "--library-arena",
            "libcurl-gnutls.so*",
            "--library-arena",
            "libgnutls.so*",
        ])
        .args(["--library-arena", "libtasn1.so*", "--json"])
        .arg(&json_path)
        .arg("--")
        .arg(&program)
        .args(["plain", "200"])
        .output()
        .expect("run arenalloc");
    let all = report(&output);
    assert!(output.status.success(), "{all}");
    let doc = json(&json_path);
    let runs = doc["runs"].as_array().expect("runs");
    let labels: Vec<&str> = runs.iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["glibc", "arenalloc", "arenalloc+routing"], "{all}");
    assert_eq!(
        runs[2]["library_arenas"].as_array().unwrap().len(),
        3,
        "{all}"
    );
    let final_of = |i: usize| runs[i]["final_rss_bytes"].as_u64().unwrap();
    assert!(final_of(2) * 2 < final_of(0), "{all}");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("final RSS (MiB)") && stderr.contains("less at the end than glibc"),
        "{all}"
    );
}
