#!/usr/bin/env bash
# Installs the allocators the memory-scenario harness compares against
# (Debian packages, preloaded by benches/mem_harness.py). Idempotent: does
# nothing, and touches no network, when they are present. Run as root (or
# with sudo available).
set -euo pipefail

lib=/usr/lib/x86_64-linux-gnu
# file  package
needs=(
    "libjemalloc.so.2 libjemalloc2"
    "libmimalloc.so.2 libmimalloc2.0"
    "libtcmalloc_minimal.so.4 libtcmalloc-minimal4"
)
missing=()
for pair in "${needs[@]}"; do
    file=${pair%% *}
    pkg=${pair##* }
    if [ ! -e "$lib/$file" ]; then
        missing+=("$pkg")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-bench-deps: all comparison allocators are installed"
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "install-bench-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
