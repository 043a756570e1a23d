#!/usr/bin/env python3
"""Print a markdown table comparing allocators from criterion's output.

Reads target/criterion/<group>/<function>/<baseline>/estimates.json (as
written by `cargo bench -p arenalloc-benches`): one row per group (workload),
one column per function (allocator) with the median time per iteration,
then the ratios arenalloc/mimalloc and arenalloc/glibc (below 1: arenalloc
is faster). Ratios above --flag (default 1.5) are printed in bold.

Usage:
    python3 benches/compare_table.py [--criterion-dir DIR] [--baseline new]
                                     [--stat median|mean] [--flag 1.5]

Standard library only.
"""

import argparse
import json
import os
import re
import sys

ALLOCATORS = ["glibc", "arenalloc", "mimalloc", "jemalloc"]
RATIOS = [("arenalloc", "mimalloc"), ("arenalloc", "glibc")]
# Workload families in the order the suite runs them.
FAMILIES = ["malloc_free", "batch", "realloc", "xthread", "large", "thread"]
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20}


def default_criterion_dir():
    target = os.environ.get("CARGO_TARGET_DIR")
    if not target:
        here = os.path.dirname(os.path.abspath(__file__))
        target = os.path.join(os.path.dirname(here), "target")
    return os.path.join(target, "criterion")


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def collect(root, baseline, stat):
    """Returns {group: {function: nanoseconds}}."""
    results = {}
    if not os.path.isdir(root):
        return results
    for group_dir in sorted(os.listdir(root)):
        group_path = os.path.join(root, group_dir)
        if group_dir == "report" or not os.path.isdir(group_path):
            continue
        for func_dir in sorted(os.listdir(group_path)):
            base = os.path.join(group_path, func_dir, baseline)
            estimates = read_json(os.path.join(base, "estimates.json"))
            if not estimates or stat not in estimates:
                continue
            meta = read_json(os.path.join(base, "benchmark.json")) or {}
            group = meta.get("group_id") or group_dir
            func = meta.get("function_id") or func_dir
            value = meta.get("value_str")
            if value:
                func = f"{func}/{value}"
            results.setdefault(group, {})[func] = estimates[stat]["point_estimate"]
    return results


def row_key(group):
    family = next(
        (i for i, f in enumerate(FAMILIES) if group.startswith(f)), len(FAMILIES)
    )
    m = re.search(r"(\d+)(MiB|KiB|B)\b", group)
    size = int(m.group(1)) * UNITS[m.group(2)] if m else 0
    return (family, size, group)


def fmt_time(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def fmt_ratio(num, den, flag):
    if num is None or den is None or den == 0:
        return "–"
    r = num / den
    text = f"{r:.2f}"
    return f"**{text}**" if r > flag else text


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--criterion-dir", default=default_criterion_dir())
    parser.add_argument("--baseline", default="new")
    parser.add_argument("--stat", default="median", choices=["median", "mean"])
    parser.add_argument("--flag", type=float, default=1.5)
    args = parser.parse_args()

    results = collect(args.criterion_dir, args.baseline, args.stat)
    if not results:
        print(f"no criterion results under {args.criterion_dir}", file=sys.stderr)
        return 1

    seen = {f for funcs in results.values() for f in funcs}
    columns = [a for a in ALLOCATORS if a in seen]
    columns += sorted(seen - set(columns))
    ratios = [(a, b) for a, b in RATIOS if a in seen and b in seen]

    header = ["workload"] + columns + [f"{a}/{b}" for a, b in ratios]
    print(f"{args.stat.capitalize()} time per iteration (criterion, '{args.baseline}').")
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|")
    for group in sorted(results, key=row_key):
        funcs = results[group]
        cells = [group]
        cells += [fmt_time(funcs[c]) if c in funcs else "–" for c in columns]
        cells += [fmt_ratio(funcs.get(a), funcs.get(b), args.flag) for a, b in ratios]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
