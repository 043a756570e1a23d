#!/usr/bin/env bash
# Optional: the thread-interleaving tests and the stress tests under
# ThreadSanitizer. Needs a nightly toolchain (-Zsanitizer); the standard
# library is not rebuilt with the sanitizer (no rust-src here), so races
# inside std's own channels and thread joins are reported falsely: this
# script counts only reports with an engine frame (arenalloc_engine) in
# them, and fails if there is one. Not part of CI (stable only).
set -euo pipefail
cd "$(dirname "$0")/.."
# `arenalloc_tsan`: the engine uses atomics where its fast paths use
# assembly (the same loads and stores on x86), so that the sanitizer sees
# the happens-before edges they make.
export RUSTFLAGS="-Zsanitizer=thread -Cunsafe-allow-abi-mismatch=sanitizer --cfg arenalloc_tsan"
export CARGO_TARGET_DIR="$PWD/target-tsan"
target=x86_64-unknown-linux-gnu
tests=(races cross_thread_stress purge arena_control)
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
cargo +nightly test -p arenalloc-tests "${args[@]}" --target "$target" --no-run
logs=$(mktemp -d)
export TSAN_OPTIONS="exitcode=0 log_path=$logs/tsan report_signal_unsafe=0"
for t in "${tests[@]}"; do
    bin=$(ls -t "$CARGO_TARGET_DIR/$target/debug/deps/$t"-* | grep -v '\.d$' | head -n 1)
    echo "== $t"
    "$bin" --test-threads=1 2>&1 | grep -E '^test result'
done
python3 - "$logs" <<'PY'
import glob, sys
reports = []
for path in glob.glob(sys.argv[1] + "/tsan*"):
    reports += open(path, errors="replace").read().split("WARNING: ThreadSanitizer")[1:]
engine = [r for r in reports if "arenalloc_engine" in r]
print(f"{len(reports)} ThreadSanitizer reports, {len(engine)} with an engine frame")
for r in engine:
    print(r[:3000])
sys.exit(1 if engine else 0)
PY
