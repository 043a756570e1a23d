#!/usr/bin/env bash
# The whole test suite: lint, unit and integration tests, the C ABI tests and
# real programs under LD_PRELOAD. Installs what it needs (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh
# tests/library_routing.rs routes real libraries (libcurl, GnuTLS) as the demo does.
bash scripts/install-demo-deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

# The C tests link libarenalloc.a and preload libarenalloc.so: build them first.
cargo build --release -p arenalloc-capi

cargo test --workspace
# The workspace build unifies features, so the engine above keeps its thread
# state the way the C ABI crate asks (initial-exec TLS); its unit tests once
# more on their own cover the `thread_local!` model Rust programs get.
cargo test -p arenalloc-engine --lib
