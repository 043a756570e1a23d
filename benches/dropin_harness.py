#!/usr/bin/env python3
"""arenalloc as a drop-in malloc: C workload programs under every allocator.

Builds the workload programs of benches/dropin/ (one C file each, modeled on
the classic allocator benchmarks; see benches/dropin/README.md) and runs
each as a fresh process under glibc and, with LD_PRELOAD, under arenalloc
and the Debian jemalloc, mimalloc and tcmalloc. Runs go round the
allocators and workloads (A B C ... A B C ...), so a slow spell of this
shared machine does not land on one allocator's runs; every figure is the
median of `--repeat` runs. Per run: wall time (a monotonic clock around the
child), page faults (minor + major) and peak RSS (the kernel's accounting of
the reaped child, wait4, read by a small C program that forks it: a child
of Python would count Python's pages in its peak). Prints markdown tables (time, faults, peak RSS;
ratios to mimalloc; geometric means; arenalloc against the best peer of each
workload) and writes them with an SVG chart to target/dropin/.

Usage:
    python3 benches/dropin_harness.py [--workloads larson,xmalloc,...]
        [--allocators glibc,arenalloc,...] [--repeat N] [--scale N]
        [--also NAME=/path/to/lib.so ...] [--no-build]

`--also` adds an allocator by its shared library, e.g. an older build of
arenalloc to compare against. It installs the comparison allocators
(scripts/install-bench-deps.sh) and builds libarenalloc.so (cargo, release)
first. Standard library only.
"""

import argparse
import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = "/usr/lib/x86_64-linux-gnu"
SOURCES = os.path.join(ROOT, "benches/dropin")
OUT = os.path.join(ROOT, "target/dropin")

ALLOCATORS = {
    "glibc": None,
    "arenalloc": os.path.join(ROOT, "target/release/libarenalloc.so"),
    "jemalloc": f"{LIB}/libjemalloc.so.2",
    "mimalloc": f"{LIB}/libmimalloc.so.2",
    "tcmalloc": f"{LIB}/libtcmalloc_minimal.so.4",
}
PEERS = ["glibc", "jemalloc", "mimalloc", "tcmalloc"]
COLOURS = {
    "glibc": "#7f7f7f",
    "arenalloc": "#d62728",
    "jemalloc": "#1f77b4",
    "mimalloc": "#ff7f0e",
    "tcmalloc": "#9467bd",
}
EXTRA_COLOURS = ["#2ca02c", "#8c564b", "#e377c2", "#17becf"]
RUN_LIMIT_S = 300


def workloads_available():
    return sorted(f[:-2] for f in os.listdir(SOURCES) if f.endswith(".c"))


# Runs one command and reports its wall time, page faults and peak RSS.
# A child forked from this Python process would count Python's own pages
# in its peak RSS (ru_maxrss covers the process before exec too), so the
# workload is forked from this small program instead.
MEASURE_C = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    (void)argc;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    pid_t pid = fork();
    if (pid == 0) { execv(argv[1], argv + 1); _exit(127); }
    int status; struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0) return 126;
    clock_gettime(CLOCK_MONOTONIC, &b);
    fprintf(stderr, "measure: %.6f %ld %ld %d\n",
            (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9,
            ru.ru_minflt + ru.ru_majflt, ru.ru_maxrss,
            WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    return 0;
}
"""


def build(workloads, no_build):
    if not no_build:
        subprocess.run(["bash", os.path.join(ROOT, "scripts/install-bench-deps.sh")], check=True)
        subprocess.run(["cargo", "build", "--release", "-p", "arenalloc-capi"], cwd=ROOT,
                       check=True)
    os.makedirs(OUT, exist_ok=True)
    measure = os.path.join(OUT, "measure")
    with open(measure + ".c", "w") as f:
        f.write(MEASURE_C)
    subprocess.run(["cc", "-O2", "-o", measure, measure + ".c"], check=True)
    for w in workloads:
        # Always rebuilt (a second each): a workload includes common.h, and
        # larson_sized.c includes larson.c.
        src, exe = os.path.join(SOURCES, f"{w}.c"), os.path.join(OUT, w)
        subprocess.run(["cc", "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread",
                        "-o", exe, src], check=True)


def run_one(workload, preload, scale):
    """One run: (wall s, page faults, peak RSS KiB); raises if it failed."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if preload:
        env["LD_PRELOAD"] = preload
    run = subprocess.run([os.path.join(OUT, "measure"), os.path.join(OUT, workload), str(scale)],
                         env=env, capture_output=True, timeout=RUN_LIMIT_S)
    err = run.stderr.decode(errors="replace")
    line = [l for l in err.splitlines() if l.startswith("measure: ")]
    if not line:
        raise RuntimeError(f"{workload} under {preload or 'glibc'}: no measurement: {err[-500:]}")
    wall, faults, peak_kib, code = line[-1].split()[1:]
    if int(code) != 0 or b": ok" not in run.stdout:
        raise RuntimeError(f"{workload} under {preload or 'glibc'} failed ({code}): {err[-500:]}")
    return float(wall), int(faults), int(peak_kib)


def geomean(values):
    values = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def tables(results, workloads, allocators):
    """The markdown report: one table per measure, ratios to mimalloc."""
    med = {k: [statistics.median(x[i] for x in runs) for i in range(3)]
           for k, runs in results.items()}
    lines = []
    for title, i, fmt in [("Wall time (s)", 0, "{:.3f}"), ("Page faults (thousands)", 1, None),
                          ("Peak RSS (MiB)", 2, None)]:
        lines.append(f"### {title}, median of the runs; in brackets: ratio to mimalloc\n")
        head = ["workload"] + allocators
        if "arenalloc" in allocators:
            head.append("arenalloc / best peer")
        # How far arenalloc's own runs spread (max - min over the median):
        # on a shared machine a ratio is worth no more than this.
        spread = i == 0 and "arenalloc" in allocators
        if spread:
            head.append("arenalloc spread")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|---" + "|---:" * (len(head) - 1) + "|")
        ratios = {a: [] for a in allocators}
        envelope = []
        for w in workloads:
            base = med.get((w, "mimalloc"), [None] * 3)[i]
            cells = [w]
            for a in allocators:
                v = med[(w, a)][i]
                shown = (fmt.format(v) if fmt else
                         f"{v / 1000:.1f}" if i == 1 else f"{v / 1024:.1f}")
                if base:
                    ratios[a].append(v / base)
                    shown += f" ({v / base:.2f})"
                cells.append(shown)
            if "arenalloc" in allocators:
                best = min(med[(w, p)][i] for p in PEERS if p in allocators)
                envelope.append(med[(w, "arenalloc")][i] / best)
                cells.append(f"{envelope[-1]:.2f}")
            if spread:
                own = [x[i] for x in results[(w, "arenalloc")]]
                cells.append(f"{(max(own) - min(own)) / med[(w, 'arenalloc')][i]:.0%}")
            lines.append("| " + " | ".join(cells) + " |")
        cells = ["geometric mean of the ratios to mimalloc"]
        cells += [f"{geomean(ratios[a]):.2f}" for a in allocators]
        if "arenalloc" in allocators:
            cells.append(f"{geomean(envelope):.2f} (worst {max(envelope):.2f})")
        if spread:
            cells.append("")
        lines.append("| " + " | ".join(cells) + " |\n")
    return "\n".join(lines), med


def svg(med, workloads, allocators, path, colours):
    """Time ratio to mimalloc per workload, one bar per allocator, log scale."""
    bar, gap, h, pad = 8, 14, 320, 60
    group = bar * len(allocators) + gap
    w = pad + group * len(workloads) + 20
    lo, hi = math.log(0.25), math.log(4.0)

    def y(ratio):
        r = min(max(math.log(ratio), lo), hi)
        return 30 + (h - 60) * (hi - r) / (hi - lo)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 70}" '
           'font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{pad}" y="16" font-weight="bold">Wall time relative to mimalloc '
           '(log scale; lower is faster), median of the runs</text>']
    for tick in [0.25, 0.5, 1, 2, 4]:
        out.append(f'<line x1="{pad}" y1="{y(tick):.1f}" x2="{w - 10}" y2="{y(tick):.1f}" '
                   f'stroke="{"black" if tick == 1 else "#ddd"}"/>'
                   f'<text x="{pad - 4}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick}</text>')
    for k, wl in enumerate(workloads):
        x0 = pad + k * group
        base = med[(wl, "mimalloc")][0] if (wl, "mimalloc") in med else None
        for j, a in enumerate(allocators):
            if not base:
                continue
            r = med[(wl, a)][0] / base
            top, one = y(max(r, 1)), y(min(r, 1))
            out.append(f'<rect x="{x0 + j * bar}" y="{top:.1f}" width="{bar - 1}" '
                       f'height="{max(one - top, 1):.1f}" fill="{colours[a]}"/>')
        out.append(f'<text transform="translate({x0 + group / 2 - 4},{h - 22}) rotate(40)" '
                   f'font-size="10">{wl}</text>')
    for i, a in enumerate(allocators):
        out.append(f'<rect x="{pad + i * 110}" y="{h + 48}" width="12" height="12" '
                   f'fill="{colours[a]}"/><text x="{pad + 16 + i * 110}" y="{h + 58}">{a}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workloads", default=",".join(workloads_available()))
    p.add_argument("--allocators", default=",".join(ALLOCATORS))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--scale", type=int, default=1)
    p.add_argument("--also", action="append", default=[], metavar="NAME=LIB.so")
    p.add_argument("--no-build", action="store_true")
    args = p.parse_args()
    workloads = args.workloads.split(",")
    allocators = args.allocators.split(",")
    colours = dict(COLOURS)
    for k, extra in enumerate(args.also):
        name, lib = extra.split("=", 1)
        ALLOCATORS[name] = os.path.abspath(lib)
        colours[name] = EXTRA_COLOURS[k % len(EXTRA_COLOURS)]
        allocators.append(name)
    build(workloads, args.no_build)
    results = {}
    started = time.monotonic()
    for rep in range(args.repeat):
        for w in workloads:
            for a in allocators:
                print(f"[{time.monotonic() - started:6.0f} s] run {rep + 1}/{args.repeat}: "
                      f"{w} under {a}", file=sys.stderr)
                results.setdefault((w, a), []).append(run_one(w, ALLOCATORS[a], args.scale))
    report, med = tables(results, workloads, allocators)
    header = (f"Drop-in harness: {len(workloads)} workloads x {len(allocators)} allocators, "
              f"median of {args.repeat} interleaved runs, scale {args.scale}, "
              f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print(header)
    print(report)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "report.md"), "w") as f:
        f.write(header + "\n" + report)
    svg(med, workloads, allocators, os.path.join(OUT, "dropin.svg"), colours)
    print(f"Report: {OUT}/report.md; chart: {OUT}/dropin.svg")


if __name__ == "__main__":
    main()
