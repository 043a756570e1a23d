#!/usr/bin/env bash
# The whole test suite: lint, unit and integration tests, the C ABI tests and
# real programs under LD_PRELOAD. Installs what it needs (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

# The C tests link libarenalloc.a and preload libarenalloc.so: build them first.
cargo build --release -p arenalloc-capi

cargo test --workspace
