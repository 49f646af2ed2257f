"""Per-frame pre- and post-processing cost on the CPU: the image -> network input and logits -> labels steps
every backend shares (``hmseg_core.evaluate.preprocess`` / ``postprocess``), against the plain PyTorch forms.

    python benchmarks/bench_prepost.py --size 360x480 --classes 11 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from hmseg_core.data.transforms import normalize, to_tensor
from hmseg_core.evaluate import postprocess, preprocess


def median_ms(fn, runs: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="360x480")
    p.add_argument("--classes", type=int, default=11)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=50)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    mean, std = [0.39, 0.40, 0.41], [0.30, 0.31, 0.29]
    logits = torch.randn(1, args.classes, h, w, generator=torch.Generator().manual_seed(0))
    rows = [
        ("preprocess: normalize(to_tensor(rgb)) + contiguous copy", lambda: normalize(to_tensor(rgb), mean, std)[None].contiguous()),
        ("preprocess: hmseg_core (in place, contiguous)", lambda: preprocess(rgb, mean, std)),
        ("labels: logits.argmax(1)", lambda: logits.argmax(1)[0].to(torch.uint8).numpy()),
        ("labels: hmseg_core postprocess (torch.max indices)", lambda: postprocess(logits, (h, w))),
    ]
    # five interleaved sweeps, so a slow spell of the machine does not land on one row only
    sweeps = [[median_ms(fn, max(1, args.runs // 5)) for _, fn in rows] for _ in range(5)]
    print(f"{h}x{w}, {args.classes} classes, {args.threads} threads, {args.runs} runs per step in 5 interleaved sweeps")
    print("| step | median ms |\n|---|---:|")
    for i, (name, _) in enumerate(rows):
        print(f"| {name} | {statistics.median(s[i] for s in sweeps):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
