#!/usr/bin/env python3
"""Memory scenarios under every allocator: one table and one SVG chart.

Runs `mem_scenario <scenario>` (benches/src/bin/mem_scenario.rs) as a fresh
process per (scenario, allocator), the allocator chosen with LD_PRELOAD,
samples the child's RSS from /proc/<pid>/statm every 100 ms, and prints a
markdown table of what the child and the samples say: peak RSS, RSS when
the workload has freed its memory, RSS 1 s later, the live bytes the
workload keeps, and (burst) the time the burst took. Writes an SVG chart of
RSS over time, one panel per scenario.

Usage:
    python3 benches/mem_harness.py [--scenarios burst,small,...]
        [--allocators glibc,arenalloc,...] [--repeat N] [--idle S]
        [--delays 10,100,...] [--svg target/mem-harness.svg]

`--delays` adds arenalloc runs with those purge delays (how the default
delay was chosen; see the README).

It builds what it runs (cargo, release) and installs the comparison
allocators first (scripts/install-bench-deps.sh). Standard library only.
"""

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = "/usr/lib/x86_64-linux-gnu"
SCENARIOS = ["burst", "small", "small-keep", "threads", "idle"]

# name: (LD_PRELOAD or None, extra environment)
ALLOCATORS = {
    "glibc": (None, {}),
    "glibc+trim100ms": (None, {"MEM_SCENARIO_TRIM_MS": "100"}),
    "jemalloc": (f"{LIB}/libjemalloc.so.2", {}),
    "jemalloc+bg": (
        f"{LIB}/libjemalloc.so.2",
        {"MALLOC_CONF": "background_thread:true,dirty_decay_ms:1000"},
    ),
    "mimalloc": (f"{LIB}/libmimalloc.so.2", {}),
    "tcmalloc": (f"{LIB}/libtcmalloc_minimal.so.4", {}),
    "arenalloc": (os.path.join(ROOT, "target/release/libarenalloc.so"), {}),
    "arenalloc-nobg": (
        os.path.join(ROOT, "target/release/libarenalloc.so"),
        {"ARENALLOC_BACKGROUND": "0"},
    ),
}
COLOURS = {
    "glibc": "#7f7f7f",
    "glibc+trim100ms": "#bcbd22",
    "jemalloc": "#1f77b4",
    "jemalloc+bg": "#17becf",
    "mimalloc": "#ff7f0e",
    "tcmalloc": "#9467bd",
    "arenalloc": "#d62728",
    "arenalloc-nobg": "#e377c2",
}
SAMPLE_S = 0.1


def build():
    subprocess.run(["bash", os.path.join(ROOT, "scripts/install-bench-deps.sh")], check=True)
    # Two commands: with `--bin`, cargo builds only that binary, not the
    # capi package's library.
    subprocess.run(["cargo", "build", "--release", "-p", "arenalloc-capi"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "-p", "arenalloc-benches", "--bin",
                    "mem_scenario"], cwd=ROOT, check=True)


def statm(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            vsz, rss = f.read().split()[:2]
        return int(rss) * 4, int(vsz) * 4
    except (OSError, ValueError):
        return None


def run_one(scenario, allocator, idle_s):
    preload, extra = ALLOCATORS[allocator]
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env.update(extra)
    if preload:
        env["LD_PRELOAD"] = preload
    exe = os.path.join(ROOT, "target/release/mem_scenario")
    start = time.monotonic()
    child = subprocess.Popen([exe, scenario, str(idle_s)], env=env, stdout=subprocess.PIPE,
                             text=True)
    samples = []

    def sample():
        while child.poll() is None:
            s = statm(child.pid)
            if s and s[0] > 0:
                samples.append((time.monotonic() - start, s[0], s[1]))
            time.sleep(SAMPLE_S)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, _ = child.communicate(timeout=600)
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"{scenario} under {allocator} exited {child.returncode}")
    marks, values = {}, {}
    for line in out.splitlines():
        f = line.split()
        if f[:1] == ["mark"]:
            marks[f[1]] = (int(f[2]) / 1000, int(f[3]), int(f[4]))
        elif f[:1] == ["value"]:
            values[f[1]] = int(f[2])
    return {"samples": samples, "marks": marks, "values": values}


def mib(kib):
    return kib / 1024


def row(scenario, allocator, runs):
    run = runs[0]
    m, v = run["marks"], run["values"]
    peak = max(s[1] for s in run["samples"]) if run["samples"] else 0
    start = m["start"][1]
    freed = m["freed"][1]
    idle1 = m["idle_1s"][1]
    live = v.get("live_bytes", 0) / 1024
    cells = [scenario, allocator, f"{mib(start):.1f}", f"{mib(peak):.1f}", f"{mib(freed):.1f}",
             f"{mib(idle1):.1f}", f"{mib(live):.1f}", f"{mib(idle1 - live):+.1f}"]
    if scenario == "burst":
        times = [r["values"]["burst_ms"] for r in runs]
        cells.append(f"{statistics.median(times):.0f} ms median of {len(times)} runs "
                     f"({min(times)}-{max(times)})")
    elif scenario.startswith("periodic-"):
        works = [r["values"]["work_ms"] for r in runs]
        rss = [statistics.mean(x[1] for x in r["samples"]) for r in runs if r["samples"]]
        cells.append(f"work {statistics.median(works):.0f} ms median of {len(works)} runs "
                     f"({min(works)}-{max(works)}); mean RSS {mib(statistics.median(rss)):.1f} MiB")
    elif scenario == "threads":
        parked = m["parked_idle"]
        exited = m["exited"]
        cells.append(f"parked: {parked[1] / 256:.0f} KiB RSS, {parked[2] / 256:.0f} KiB VSZ"
                     f" per thread; exited: {mib(exited[1]):.1f} MiB")
    elif scenario == "idle":
        ticks = v.get("idle_cpu_ticks", 0)
        hz = v.get("ticks_per_s", 100)
        cells.append(f"{ticks * 1000 // hz} ms CPU over the idle time")
    else:
        cells.append("")
    return cells


def svg(results, path):
    scenarios = list(dict.fromkeys(s for s, _ in results))
    w, h, pad = 520, 260, 48
    cols = 2
    rows = (len(scenarios) + cols - 1) // cols
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w * cols}" '
           f'height="{h * rows + 40}" font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>']
    allocators = list(dict.fromkeys(a for _, a in results))
    for i, a in enumerate(allocators):
        out.append(f'<rect x="{10 + i * 125}" y="8" width="12" height="12" fill="{COLOURS[a]}"/>'
                   f'<text x="{26 + i * 125}" y="18">{a}</text>')
    for k, scenario in enumerate(scenarios):
        ox, oy = (k % cols) * w, 30 + (k // cols) * h
        series = [(a, results[(scenario, a)][0]["samples"]) for a in allocators
                  if (scenario, a) in results]
        tmax = max((s[-1][0] for _, s in series if s), default=1)
        rmax = max((x[1] for _, s in series for x in s), default=1) / 1024
        out.append(f'<text x="{ox + pad}" y="{oy + 14}" font-weight="bold">{scenario}: RSS (MiB) '
                   f'over time (s)</text>')
        x0, y0, x1, y1 = ox + pad, oy + h - 30, ox + w - 12, oy + 24
        out.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/>'
                   f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>')
        for j in range(5):
            v = rmax * j / 4
            y = y0 - (y0 - y1) * j / 4
            out.append(f'<text x="{x0 - 4}" y="{y + 4}" text-anchor="end">{v:.0f}</text>')
            t = tmax * j / 4
            x = x0 + (x1 - x0) * j / 4
            out.append(f'<text x="{x}" y="{y0 + 14}" text-anchor="middle">{t:.1f}</text>')
        for a, s in series:
            pts = " ".join(f"{x0 + (x1 - x0) * t / tmax:.1f},{y0 - (y0 - y1) * r / 1024 / rmax:.1f}"
                           for t, r, _ in s)
            out.append(f'<polyline fill="none" stroke="{COLOURS[a]}" stroke-width="1.5" '
                       f'points="{pts}"/>')
    out.append("</svg>")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(out))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--allocators", default=",".join(ALLOCATORS))
    p.add_argument("--repeat", type=int, default=3, help="runs of burst (median time)")
    p.add_argument("--idle", type=int, default=3, help="idle seconds after the workload")
    p.add_argument("--svg", default=os.path.join(ROOT, "target/mem-harness.svg"))
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--delays", default="",
                   help="also run arenalloc with these purge delays (ms, comma-separated)")
    args = p.parse_args()
    allocators = args.allocators.split(",")
    for ms in filter(None, args.delays.split(",")):
        name = f"arenalloc-delay{ms}ms"
        ALLOCATORS[name] = (ALLOCATORS["arenalloc"][0], {"ARENALLOC_PURGE_DELAY_MS": ms})
        COLOURS[name] = f"#{(int(ms) * 2654435761) % 0xffffff:06x}"
        allocators.append(name)
    if not args.no_build:
        build()
    results = {}
    for scenario in args.scenarios.split(","):
        n = args.repeat if scenario == "burst" or scenario.startswith("periodic-") else 1
        idle = 10 if scenario == "idle" else args.idle
        # Repeats go round the allocators (A B C A B C ...), so a slow spell
        # of this shared machine does not land on one allocator's runs.
        for _ in range(n):
            for allocator in allocators:
                print(f"running {scenario} under {allocator} ...", file=sys.stderr)
                runs = results.setdefault((scenario, allocator), [])
                runs.append(run_one(scenario, allocator, idle))
    header = ["scenario", "allocator", "start", "peak", "at free", "free+1 s", "live",
              "1 s: RSS-live", "other"]
    print("RSS in MiB, sampled every 100 ms; 'at free' and 'free+1 s' are read by the process "
          "itself; no explicit trim call (except glibc+trim100ms's thread).\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for (scenario, allocator), runs in results.items():
        cells = row(scenario, allocator, runs)
        if scenario == "idle":
            ticks = runs[0]["values"].get("idle_cpu_ticks", 0)
            hz = runs[0]["values"].get("ticks_per_s", 100)
            cells[-1] = f"{ticks * 1000 // hz} ms CPU over 10 s idle"
            hk = runs[0]["values"].get("housekeeper_idle_cpu_ticks")
            if hk is not None:
                cells[-1] += f", of it the housekeeper thread {hk * 1000 // hz} ms"
        print("| " + " | ".join(cells) + " |")
    svg(results, args.svg)
    print(f"\nChart: {args.svg}")


if __name__ == "__main__":
    main()
