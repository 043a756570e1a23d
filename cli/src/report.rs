//! What a run is reported as: lines for a person (on stderr, so the
//! command's own output stays clean) and a JSON document of the same
//! figures.

use serde::Serialize;
use serde_json::Value;

use crate::child::{mib, Exit, Outcome};

#[derive(Serialize)]
struct JsonExit {
    code: Option<i32>,
    signal: Option<i32>,
    description: String,
}

#[derive(Serialize)]
struct JsonRun<'a> {
    label: &'a str,
    allocator: &'a str,
    library_arenas: &'a [String],
    exit: JsonExit,
    wall_seconds: f64,
    peak_rss_bytes: u64,
    final_rss_bytes: u64,
    /// [seconds, RSS bytes]
    samples: &'a [(f64, u64)],
    /// arenalloc's exit figures (null under glibc, or when the program
    /// ended with `_exit` or closed the statistics descriptor).
    arenalloc: Option<&'a Value>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    command: Vec<String>,
    runs: Vec<JsonRun<'a>>,
}

fn allocator_name(run: &Outcome) -> &'static str {
    if run.preloaded {
        "arenalloc"
    } else {
        "glibc"
    }
}

/// The JSON document of `runs`.
pub fn json(command: &[std::ffi::OsString], runs: &[Outcome]) -> String {
    let report = JsonReport {
        command: command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        runs: runs
            .iter()
            .map(|run| JsonRun {
                label: &run.label,
                allocator: allocator_name(run),
                library_arenas: &run.library_arenas,
                exit: JsonExit {
                    code: match run.exit {
                        Exit::Code(c) => Some(c),
                        Exit::Signal(_) => None,
                    },
                    signal: match run.exit {
                        Exit::Signal(s) => Some(s),
                        Exit::Code(_) => None,
                    },
                    description: run.exit.describe(),
                },
                wall_seconds: run.wall.as_secs_f64(),
                peak_rss_bytes: run.peak_rss,
                final_rss_bytes: run.final_rss,
                samples: &run.samples,
                arenalloc: run.allocator.as_ref(),
            })
            .collect(),
    };
    serde_json::to_string_pretty(&report).expect("plain data serialises") + "\n"
}

fn field(doc: &Value, key: &str) -> u64 {
    doc.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// The lines for one run.
pub fn describe(run: &Outcome) -> Vec<String> {
    let mut lines = vec![
        format!("arenalloc: {} finished: {}", run.label, run.exit.describe()),
        format!(
            "  time {:.2} s; RSS peak {:.1} MiB, at the end {:.1} MiB ({} samples)",
            run.wall.as_secs_f64(),
            mib(run.peak_rss),
            mib(run.final_rss),
            run.samples.len()
        ),
    ];
    let Some(doc) = &run.allocator else {
        if run.preloaded {
            lines.push(
                "  no figures from arenalloc (the program ended with _exit, was killed, or \
                 closed the statistics descriptor)"
                    .to_owned(),
            );
        }
        return lines;
    };
    lines.push(format!(
        "  arenalloc: live {:.1} MiB in {} blocks, mapped {:.1} MiB (peak {:.1}), purged {:.1} MiB in all",
        mib(field(doc, "live_bytes")),
        field(doc, "live_blocks"),
        mib(field(doc, "mapped_bytes")),
        mib(field(doc, "peak_mapped_bytes")),
        mib(field(doc, "purged_bytes"))
    ));
    for arena in doc
        .get("arenas")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let handle = arena.get("handle").and_then(Value::as_str).unwrap_or("?");
        let what = if arena.get("default").and_then(Value::as_bool) == Some(true) {
            "default".to_owned()
        } else if let Some(object) = arena.get("routed_object").and_then(Value::as_str) {
            object.rsplit('/').next().unwrap_or(object).to_owned()
        } else {
            "dedicated".to_owned()
        };
        if arena.get("busy").and_then(Value::as_bool) == Some(true) {
            lines.push(format!(
                "  arena {handle} ({what}): busy at exit, no figures"
            ));
            continue;
        }
        lines.push(format!(
            "  arena {handle} ({what}): live {:.2} MiB, resident {:.2} MiB, mapped {:.1} MiB, purged {:.1} MiB",
            mib(field(arena, "live_bytes")),
            mib(field(arena, "resident_bytes")),
            mib(field(arena, "mapped_bytes")),
            mib(field(arena, "purged_bytes"))
        ));
    }
    lines
}

/// One table of several runs of the same command, side by side.
pub fn comparison(runs: &[Outcome]) -> Vec<String> {
    let mut lines = Vec::new();
    let header: String = runs.iter().map(|r| format!("{:>20}", r.label)).collect();
    lines.push(format!("{:<18}{header}", ""));
    let row = |name: &str, value: &dyn Fn(&Outcome) -> String| {
        let cells: String = runs.iter().map(|r| format!("{:>20}", value(r))).collect();
        format!("{name:<18}{cells}")
    };
    lines.push(row("time (s)", &|r| format!("{:.2}", r.wall.as_secs_f64())));
    lines.push(row("peak RSS (MiB)", &|r| {
        format!("{:.1}", mib(r.peak_rss))
    }));
    lines.push(row("final RSS (MiB)", &|r| {
        format!("{:.1}", mib(r.final_rss))
    }));
    lines.push(row("exit", &|r| match r.exit {
        Exit::Code(c) => format!("status {c}"),
        Exit::Signal(s) => format!("signal {s}"),
    }));
    if let Some(base) = runs.first() {
        for run in runs.iter().skip(1) {
            let saved = base.final_rss as f64 - run.final_rss as f64;
            lines.push(format!(
                "{}: {:.1} MiB {} at the end than {} ({:.0}%), peak {:+.1} MiB, time {:.2}x",
                run.label,
                mib(saved.abs() as u64),
                if saved >= 0.0 { "less" } else { "more" },
                base.label,
                100.0 * saved / (base.final_rss.max(1) as f64),
                mib(run.peak_rss) - mib(base.peak_rss),
                run.wall.as_secs_f64() / base.wall.as_secs_f64().max(1e-9)
            ));
        }
    }
    lines
}
