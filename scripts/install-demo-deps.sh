#!/usr/bin/env bash
# What the demonstration (cargo run --release -p arenalloc-demo) needs beyond
# Rust: a C compiler, GnuTLS's and libcurl's development files (Debian's
# libcurl built on GnuTLS) and the system CA bundle the trust store loads.
set -euo pipefail
packages=(gcc libc6-dev libgnutls28-dev libcurl4-gnutls-dev ca-certificates)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "installing: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
