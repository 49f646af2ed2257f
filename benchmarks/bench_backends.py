"""TVM untuned vs TVM tuned vs ONNX Runtime vs PyTorch eager, for mrms_tiny and mrms at two sizes.

Exports the packages (random weights unless --checkpoint NAME=PATH is given; latency does not
depend on the weights), then runs ``hmseg_core.deploy.bench`` on all of them in one process,
interleaved. Tuning records go to --tuning-db and are reused by later runs: with --trials 0 the
tuned packages only apply the records already there (tasks without one keep the default
schedule). Hours of tuning on a 2-core CPU: see docs/DEPLOY.md for the budget.

    python benchmarks/bench_backends.py --out runs/bench --tuning-db runs/tuning --trials 2500
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from hmseg_core.checkpoint import atomic_save, make_checkpoint
from hmseg_core.data.datasets import CAMVID
from hmseg_core.deploy.bench import bench, format_table
from hmseg_core.deploy.export import ExportOptions, export_package
from hmseg_core.deploy.tuning import DEFAULT_LAYOUT, LAYOUTS, TuningOptions
from hmseg_core.registry import create_model

SIZES = [(360, 480), (768, 1536)]
MODELS = ["mrms_tiny", "mrms"]


def random_checkpoint(name: str, path: Path) -> Path:
    torch.manual_seed(0)
    net = create_model(name, CAMVID.num_classes)
    atomic_save(make_checkpoint(net, CAMVID.class_names, CAMVID.palette, CAMVID.mean, CAMVID.std), path)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument("--tuning-db", type=Path, default=Path("runs/tuning"))
    p.add_argument("--trials", type=int, default=2500, help="tuning budget per tuned package (0: apply existing records)")
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--sizes", nargs="+", default=[f"{h}x{w}" for h, w in SIZES])
    p.add_argument("--checkpoint", action="append", default=[], metavar="MODEL=PATH")
    p.add_argument("--tuned", action="append", default=[], metavar="MODEL:HxW",
                   help="only these get a tuned package (default: every model and size)")
    p.add_argument("--layout", choices=sorted(LAYOUTS), default=DEFAULT_LAYOUT, help="layout of the TVM libraries")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backends", nargs="+", default=["tvm", "onnxruntime", "torch", "torch.compile"])
    p.add_argument("--network-only", action="store_true", help="time the network alone, not the whole frame (see docs/DEPLOY.md)")
    args = p.parse_args(argv)
    given = dict(c.split("=", 1) for c in args.checkpoint)
    packages = []
    for model in args.models:
        ckpt = Path(given[model]) if model in given else random_checkpoint(model, args.out / f"{model}.pt")
        for size in args.sizes:
            h, w = (int(v) for v in size.split("x"))
            for tuned in (False, True) if not args.tuned or f"{model}:{h}x{w}" in args.tuned else (False,):
                out = args.out / f"{model}_{h}x{w}_{'tuned' if tuned else 'untuned'}{'' if args.layout == DEFAULT_LAYOUT else '_' + args.layout.lower()}"
                if not (out / "metadata.json").is_file():
                    tuning = TuningOptions(trials=args.trials if tuned else 0, db_root=args.tuning_db if tuned else None, layout=args.layout)
                    export_package(ckpt, out, ExportOptions(input_size=(h, w), onnx=not tuned, tuning=tuning, overwrite=True))
                packages.append(out)
    rows = bench(packages, backends=args.backends, runs=args.runs, threads=args.threads, log=lambda s: print(s, file=sys.stderr),
                 whole_frame=not args.network_only)
    print(format_table(rows, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
