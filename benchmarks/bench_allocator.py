"""PyTorch eager inference with freed memory kept in the process (``retain_freed_memory``) and
with glibc's default ``malloc`` behaviour, which hands large freed blocks back to the kernel.

The setting is process-wide, so each configuration runs in a child process of its own; the
children alternate (system, retained, system, retained, ...) so a slow spell of a shared
machine falls on both. Each child times every network after a warm-up and reports the median
latency and the minor page faults per frame.

    python benchmarks/bench_allocator.py --models mrms_tiny mrms --sizes 360x480 768x1536 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, statistics, sys, time, torch
from hmseg_core.machine import allocator
from hmseg_core.registry import create_model
models, sizes, threads, runs = json.loads(sys.argv[1])
torch.set_num_threads(threads)
out = {"allocator": allocator(), "rows": []}
with torch.inference_mode():
    for name in models:
        torch.manual_seed(0)
        net = create_model(name, 11, boosting=False).eval()
        for h, w in sizes:
            x = torch.randn(1, 3, h, w)
            for _ in range(5):
                net(x)
            times, faults = [], 0
            for _ in range(runs):
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t0 = time.perf_counter()
                net(x)
                times.append(1e3 * (time.perf_counter() - t0))
                faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
            out["rows"].append({"model": name, "size": f"{h}x{w}", "ms": statistics.median(times), "faults": faults / runs})
out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["mrms_tiny", "mrms"])
    p.add_argument("--sizes", nargs="+", default=["360x480", "768x1536"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20, help="timed frames per network in each child")
    p.add_argument("--rounds", type=int, default=2, help="children per configuration, alternating")
    args = p.parse_args(argv)
    sizes = [[int(v) for v in s.split("x")] for s in args.sizes]
    spec = json.dumps([args.models, sizes, args.threads, args.runs])
    results = {"system": [], "retain-freed": []}
    for _ in range(args.rounds):
        for setting, env in (("system", "0"), ("retain-freed", "1")):
            out = subprocess.run([sys.executable, "-c", CHILD, spec], capture_output=True, text=True, check=True,
                                 env={**os.environ, "HMSEG_RETAIN_FREED_MEMORY": env})
            child = json.loads(out.stdout)
            if child["allocator"] != setting:
                raise SystemExit(f"expected allocator {setting!r} in the child, got {child['allocator']!r} (not glibc?)")
            results[setting].append(child)
            print(f"{setting}: " + ", ".join(f"{r['model']} {r['size']} {r['ms']:.1f} ms" for r in child["rows"]), file=sys.stderr)

    print(f"PyTorch eager, {args.threads} threads, median over {args.rounds} alternating children x {args.runs} frames")
    print("| model | size | system malloc ms | faults/frame | retained ms | faults/frame | speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for i, row in enumerate(results["system"][0]["rows"]):
        sys_ms = statistics.median(c["rows"][i]["ms"] for c in results["system"])
        ret_ms = statistics.median(c["rows"][i]["ms"] for c in results["retain-freed"])
        sys_f = statistics.median(c["rows"][i]["faults"] for c in results["system"])
        ret_f = statistics.median(c["rows"][i]["faults"] for c in results["retain-freed"])
        print(f"| {row['model']} | {row['size']} | {sys_ms:.1f} | {sys_f:.0f} | {ret_ms:.1f} | {ret_f:.0f} | {sys_ms / ret_ms:.2f}x |")
    for setting, children in results.items():
        print(f"peak RSS, {setting}: {max(c['max_rss_mb'] for c in children):.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
