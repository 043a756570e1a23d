//! `libarenalloc.so` loaded with `dlopen` after start-up rather than
//! preloaded. Its thread state is initial-exec TLS (allocator/src/tls.rs),
//! which the dynamic linker must then place in the static TLS of every
//! thread, including one that was already running: `tests/c/dlopen_late.c`
//! allocates, checks and frees blocks across such threads through the
//! library's own `malloc` and `free`.

#[path = "support/native.rs"]
mod native;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use native::{capi_libs, compile_with, run_with_limit};

#[test]
fn the_library_dlopened_after_start_up_serves_threads_started_before_and_after() {
    let libs = capi_libs();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_dlopen");
    fs::create_dir_all(&dir).expect("create the output directory");
    let exe = dir.join("dlopen_late");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("c/dlopen_late.c");
    compile_with(
        "cc",
        &[
            "-std=c11",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pthread",
            "-o",
            exe.to_str().expect("a UTF-8 path"),
            source.to_str().expect("a UTF-8 path"),
            "-ldl",
        ],
        "dlopen_late.c",
    );
    let run = run_with_limit(Command::new(&exe).arg(&libs.so), Duration::from_secs(60));
    let report = format!(
        "{}\n--- stdout:\n{}--- stderr:\n{}",
        run.describe_status(),
        run.stdout_text(),
        run.stderr_text()
    );
    assert!(run.status.success(), "{report}");
    assert!(run.stdout_text().contains("dlopen_late: ok"), "{report}");
}
