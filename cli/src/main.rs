//! `arenalloc`: run a program with arenalloc preloaded and see what it
//! would save, without changing or rebuilding it.
//!
//! ```text
//! arenalloc run [--library-arena PATTERN]... [--chart FILE.svg] [--json FILE] -- CMD ARGS...
//! arenalloc compare [same options] -- CMD ARGS...
//! ```
//!
//! The binary carries `libarenalloc.so` (`preload.rs`); a run samples the
//! child's RSS (`child.rs`), reports it with arenalloc's own exit figures
//! (`report.rs`) and can chart it (`chart.rs`). The child's exit status is
//! passed on (128 + the signal for a child killed by one).

mod chart;
mod child;
mod preload;
mod report;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use child::{Exit, Launch, Outcome};

#[derive(Parser)]
#[command(
    name = "arenalloc",
    version,
    about = "Run a program with arenalloc as its malloc, and see what it would save"
)]
struct Cli {
    #[command(subcommand)]
    command: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Run CMD with arenalloc preloaded; report its RSS and arenalloc's figures.
    Run(Options),
    /// Run CMD under glibc and under arenalloc (and with the library arenas,
    /// when given), the same way, and compare.
    Compare(Options),
}

#[derive(Args)]
struct Options {
    /// Give each loaded library matching PATTERN (a glob on its file name,
    /// or on its path if it has a '/') an arena of its own; repeatable.
    #[arg(long = "library-arena", value_name = "PATTERN")]
    library_arenas: Vec<String>,
    /// Write a chart of RSS over time (SVG) to FILE.
    #[arg(long, value_name = "FILE.svg")]
    chart: Option<PathBuf>,
    /// Write the figures as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD ARGS")]
    command: Vec<OsString>,
}

/// Fails before anything runs if an output file cannot be written.
fn check_writable(path: &Path, what: &str) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map(drop)
        .map_err(|e| format!("cannot write the {what} to {}: {e}", path.display()))
}

fn run(action: Action) -> Result<i32, String> {
    let (compare, options) = match action {
        Action::Run(o) => (false, o),
        Action::Compare(o) => (true, o),
    };
    if let Some(path) = &options.chart {
        check_writable(path, "chart")?;
    }
    if let Some(path) = &options.json {
        check_writable(path, "JSON report")?;
    }
    let library =
        preload::library_path().map_err(|e| format!("cannot write out libarenalloc.so: {e}"))?;
    let launch = |label: &str, preload: bool, library_arenas: Vec<String>| Launch {
        command: options.command.clone(),
        preload: preload.then(|| library.clone()),
        library_arenas,
        label: label.to_owned(),
    };
    let mut launches = Vec::new();
    if compare {
        launches.push(launch("glibc", false, Vec::new()));
        launches.push(launch("arenalloc", true, Vec::new()));
        if !options.library_arenas.is_empty() {
            launches.push(launch(
                "arenalloc+routing",
                true,
                options.library_arenas.clone(),
            ));
        }
    } else {
        let label = if options.library_arenas.is_empty() {
            "arenalloc"
        } else {
            "arenalloc+routing"
        };
        launches.push(launch(label, true, options.library_arenas.clone()));
    }
    let mut runs: Vec<Outcome> = Vec::new();
    for l in &launches {
        let outcome = child::run(l)?;
        for line in report::describe(&outcome) {
            eprintln!("{line}");
        }
        runs.push(outcome);
    }
    if compare {
        eprintln!();
        for line in report::comparison(&runs) {
            eprintln!("{line}");
        }
    }
    if let Some(path) = &options.chart {
        let title = format!(
            "RSS of {}",
            options
                .command
                .first()
                .map_or("".into(), |c| c.to_string_lossy())
        );
        std::fs::write(path, chart::render(&title, &runs))
            .map_err(|e| format!("cannot write the chart to {}: {e}", path.display()))?;
        eprintln!("arenalloc: chart written to {}", path.display());
    }
    if let Some(path) = &options.json {
        std::fs::write(path, report::json(&options.command, &runs))
            .map_err(|e| format!("cannot write the JSON report to {}: {e}", path.display()))?;
    }
    // The command's own status: the last run's, unless an earlier one failed.
    let status = runs
        .iter()
        .map(|r| r.exit)
        .find(|e| *e != Exit::Code(0))
        .unwrap_or(Exit::Code(0));
    Ok(status.as_status())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(status) => ExitCode::from(u8::try_from(status).unwrap_or(1)),
        Err(message) => {
            eprintln!("arenalloc: {message}");
            ExitCode::from(2)
        }
    }
}
