"""How much one runtime's idle thread pool slows the next: each backend of a package on its own, then
two backends alternating frame by frame in one process, with ONNX Runtime's spinning workers on
(its default) and off (what hmseg's backend sets).

    python benchmarks/bench_interference.py runs/bench/mrms_tiny_360x480_untuned --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np


def segmenter(package: str, backend: str, ort_spin: bool):
    from hmseg_core.runtime import Segmenter

    seg = Segmenter(package, backend=backend)
    if backend == "onnxruntime" and ort_spin:  # ONNX Runtime's own default, for comparison
        import onnxruntime as ort

        from hmseg_core.deploy.package import ModelPackage

        old, pkg = seg.backend.session, ModelPackage.load(package)
        options = ort.SessionOptions()
        options.intra_op_num_threads = old.get_session_options().intra_op_num_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        seg.backend.session = ort.InferenceSession(str(pkg.path(pkg.onnx["file"])), options, providers=old.get_providers())
    return seg


def alternate(segs, rgb, runs: int, warmup: int = 5):
    """Median inference ms of each segmenter, running them in turn, one frame each."""
    times = [[] for _ in segs]
    for i in range(warmup + runs):
        for t, seg in zip(times, segs):
            _, timings = seg.segment(rgb)
            if i >= warmup:
                t.append(timings.inference)
    return [statistics.median(t) for t in times]


def main(argv=None) -> int:
    from hmseg_core.machine import set_threads
    from hmseg_core.deploy.package import ModelPackage

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("package", help="a package with a TVM library and an ONNX model")
    p.add_argument("--backends", nargs="+", default=["torch", "onnxruntime", "tvm"])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    set_threads(args.threads)
    h, w = ModelPackage.load(args.package).input_size
    rgb = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    print(f"median inference ms, {args.threads} threads, {h}x{w}, {args.runs} frames each")
    print("| runs alongside | ORT workers spin | " + " | ".join(args.backends) + " |")
    print("|---|---|" + "---:|" * len(args.backends))
    for spin in (True, False):
        segs = {b: segmenter(args.package, b, spin) for b in args.backends}
        alone = {b: alternate([segs[b]], rgb, args.runs)[0] for b in args.backends}
        print(f"| nothing | {'yes' if spin else 'no'} | " + " | ".join(f"{alone[b]:.2f}" for b in args.backends) + " |")
        for other in args.backends:
            cells = []
            for b in args.backends:
                cells.append("" if b == other else f"{alternate([segs[other], segs[b]], rgb, args.runs)[1]:.2f}")
            print(f"| {other}, frame by frame | {'yes' if spin else 'no'} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
