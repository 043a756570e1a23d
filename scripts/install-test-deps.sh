#!/usr/bin/env bash
# Installs the programs the test suite runs (Debian/Ubuntu, apt-get):
#   - a C compiler and the C library headers: tests/c_abi.rs compiles
#     tests/c/c_contract.c with `cc` (gcc, libc6-dev); g++ for C++ users;
#   - python3, git, sqlite3, perl, bash, coreutils (sha256sum), sed:
#     tests/real_programs.rs runs them with and without LD_PRELOAD.
#
# Idempotent: when everything is present it changes nothing and does not
# touch the network; otherwise it runs `apt-get update` once and installs
# only what is missing, without prompts. Run as root (or with sudo
# available).
set -euo pipefail

# command  package
needs=(
    "cc gcc"
    "gcc gcc"
    "g++ g++"
    "python3 python3"
    "git git"
    "sqlite3 sqlite3"
    "perl perl"
    "bash bash"
    "sha256sum coreutils"
    "sed sed"
)

missing=()
for pair in "${needs[@]}"; do
    cmd=${pair%% *}
    pkg=${pair##* }
    if ! command -v "$cmd" >/dev/null 2>&1; then
        echo "install-test-deps: '$cmd' is missing (package $pkg)"
        missing+=("$pkg")
    fi
done

# The C library headers (a compiler can be present without them).
if command -v cc >/dev/null 2>&1; then
    if ! printf '#include <stdio.h>\n#include <malloc.h>\nint main(void){return 0;}\n' |
        cc -x c -o /dev/null - >/dev/null 2>&1; then
        echo "install-test-deps: cc cannot build a C program (packages libc6-dev, binutils)"
        missing+=("libc6-dev" "binutils")
    fi
else
    missing+=("libc6-dev" "binutils")
fi

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-test-deps: all test dependencies are installed"
    exit 0
fi

# De-duplicate, keep order.
declare -A seen=()
packages=()
for p in "${missing[@]}"; do
    if [ -z "${seen[$p]:-}" ]; then
        seen[$p]=1
        packages+=("$p")
    fi
done

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: no apt-get here; install these packages yourself: ${packages[*]}" >&2
    exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo=(sudo -n)
    else
        echo "install-test-deps: run as root to install: ${packages[*]}" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-test-deps: installing ${packages[*]}"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${packages[@]}"

# Check again: fail loudly if something is still missing.
for pair in "${needs[@]}"; do
    cmd=${pair%% *}
    if ! command -v "$cmd" >/dev/null 2>&1; then
        echo "install-test-deps: '$cmd' is still missing after installing" >&2
        exit 1
    fi
done
echo "install-test-deps: done"
