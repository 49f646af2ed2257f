"""``hmseg-core export``, ``tune``, ``bench``, ``profile`` and ``agree``: model packages, their latency and agreement.

Importing this module imports neither torch nor TVM nor ONNX Runtime; handlers import them when run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..tensor_layouts import DEFAULT_LAYOUT, LAYOUTS
from . import args as argtypes


def _tuning_db(args: argparse.Namespace) -> Path:
    from ..deploy.records import default_tuning_db

    return Path(args.tuning_db) if args.tuning_db else default_tuning_db()


def cmd_export(args: argparse.Namespace) -> int:
    from ..deploy.export import ExportOptions, export_package
    from ..deploy.tuning import TuningOptions

    options = ExportOptions(
        input_size=args.input_size,
        targets=[] if args.no_tvm else (args.target or ["host"]),
        onnx=not args.no_onnx,
        tuning=TuningOptions(
            trials=args.trials, db_root=_tuning_db(args), shipped=not args.no_shipped_records,
            trials_per_task=args.trials_per_task, retune=args.retune, layout=args.layout,
        ),
        name=args.name,
        overwrite=args.overwrite,
    )
    export_package(args.checkpoint, args.out, options)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from ..deploy.autotune import tune
    from ..deploy.records import prune
    from ..deploy.targets import host_target, isa_family

    if args.minutes <= 0 and args.max_trials is None:
        print("error: give a budget: --minutes N (and/or --max-trials N)", file=sys.stderr)
        return 2
    db = _tuning_db(args)
    state = tune(args.model, args.minutes if args.minutes > 0 else None, db, max_trials=args.max_trials, chunk=args.chunk,
                 input_size=args.input_size, threads=args.threads, build=not args.no_build)
    print(json.dumps({"trials": state["trials"], "spent_min": round(state["spent_s"] / 60, 2), "frame_ms": state["frame_ms"],
                      "final_frame_ms": state.get("final_frame_ms")}, indent=2))
    if args.ship:
        family = isa_family(host_target())
        total, kept = prune(db / family, Path(args.ship) / family)
        print(f"shipped {kept} records (the best of {total}) to {Path(args.ship) / family}", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ..deploy.bench import bench, format_table
    from ..deploy.package import ModelPackage
    from ..runtime import device_fingerprint

    if args.record and args.network_only:
        print("error: --record stores what the runtime does, which runs the whole frame; drop --network-only", file=sys.stderr)
        return 2
    rows = bench(args.packages, args.backends, args.runs, args.warmup, args.threads, args.size,
                 log=lambda s: print(s, file=sys.stderr, flush=True), block=args.block, whole_frame=not args.network_only)
    if args.json:
        print(json.dumps([{"package": r.package, "backend": r.backend, "label": r.label, "size": r.size, **r.stats()} for r in rows], indent=2))
    else:
        print(format_table(rows, args.threads))
    if args.record:
        by_path = {Path(p).name: Path(p) for p in args.packages}
        for r in rows:
            package = ModelPackage.load(by_path[r.package])
            package.record_latency(device_fingerprint(r.backend, threads=args.threads), f"{r.size[0]}x{r.size[1]}", r.stats())
            package.save_metadata()
    return 0


def cmd_agree(args: argparse.Namespace) -> int:
    from ..data.datasets import SegmentationDataset
    from ..deploy.bench import agreement, format_agreement
    from ..machine import set_threads

    set_threads(args.threads)
    data = SegmentationDataset(args.data_root, args.split)
    count = len(data) if args.frames <= 0 else min(args.frames, len(data))
    images = [data[i][0] for i in range(count)]
    rows = agreement(args.package, images, args.backends, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_agreement(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{**r.__dict__, "max_logit_diff": None if math.isnan(r.max_logit_diff) else r.max_logit_diff,
                        "identical_fraction": r.identical_fraction} for r in rows], f, indent=2)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from ..deploy.bench import format_kernels, profile_kernels, profile_onnxruntime, profile_openvino

    profile = {"tvm": profile_kernels, "onnxruntime": profile_onnxruntime, "openvino": profile_openvino}[args.backend]
    frame_ms, kernels = profile(args.package, args.runs, threads=args.threads)
    print(format_kernels(frame_ms, kernels, args.top))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export``, ``tune``, ``bench``, ``profile`` and ``agree`` to ``sub``."""
    e = sub.add_parser("export", help="checkpoint -> model package (TVM libraries per target, ONNX, metadata)")
    e.add_argument("checkpoint")
    e.add_argument("out", help="package directory to create")
    e.add_argument("--input-size", type=argtypes.size, default=(360, 480), metavar="HxW", help="static network input size")
    e.add_argument("--target", action="append", default=None,
                   help="host (default), aarch64, cuda, or a TVM target JSON dict; repeat for several")
    e.add_argument("--trials", type=int, default=0, help="MetaSchedule trial budget (0: apply existing records only)")
    e.add_argument("--trials-per-task", type=int, default=64)
    e.add_argument("--tuning-db", help="your tuning records, one sub-directory per ISA family, reused across exports "
                                       "(default ~/.cache/hmseg/tuning, where `hmseg-core tune` writes)")
    e.add_argument("--no-shipped-records", action="store_true", help="leave out the tuning records that ship with hmseg")
    e.add_argument("--retune", action="store_true", help="tune tasks that already have records, too")
    e.add_argument("--layout", choices=sorted(LAYOUTS), default=DEFAULT_LAYOUT,
                   help=f"activation layout the convolutions are compiled in (default {DEFAULT_LAYOUT}; see docs/DEPLOY.md)")
    e.add_argument("--no-onnx", action="store_true")
    e.add_argument("--no-tvm", action="store_true", help="skip the TVM libraries (ONNX and torch weights only)")
    e.add_argument("--name", help="package name in the metadata (default: the checkpoint's file name)")
    e.add_argument("--overwrite", action="store_true", help="write into a non-empty directory")
    e.set_defaults(func=cmd_export)

    t = sub.add_parser("tune", help="tune a package, checkpoint or zoo for this CPU within a time budget (resumable)")
    t.add_argument("model", help="model package directory, checkpoint, or zoo index (.yaml): its variants are tuned together")
    t.add_argument("--minutes", type=float, default=0, help="wall-time budget, over every run of the same command")
    t.add_argument("--max-trials", type=int, default=None, help="stop after this many trials in all (also over reruns)")
    t.add_argument("--chunk", type=int, default=32, help="trials a task gets per turn (one round of the search)")
    t.add_argument("--tuning-db", help="where the records go, one sub-directory per ISA family (default ~/.cache/hmseg/tuning)")
    t.add_argument("--input-size", type=argtypes.size, default=(360, 480), metavar="HxW", help="input size of checkpoints (packages have theirs)")
    t.add_argument("--threads", type=int, default=None, help="cores the network runs on (default: all of this machine's)")
    t.add_argument("--no-build", action="store_true", help="do not rebuild the libraries with the new records at the end")
    t.add_argument("--ship", metavar="DIR", help="afterwards copy the best record per kernel to DIR/<family>/ (e.g. hmseg_core/zoo/records)")
    t.set_defaults(func=cmd_tune)

    b = sub.add_parser("bench", help="interleaved latency of backends on model packages (median, p95)")
    b.add_argument("packages", nargs="+", help="model package directories (e.g. an untuned and a tuned export)")
    b.add_argument("--backends", nargs="+", default=["tvm", "onnxruntime", "torch"],
                   choices=["tvm", "onnxruntime", "openvino", "openvino-bf16", "torch", "torch.compile"])
    b.add_argument("--runs", type=int, default=50)
    b.add_argument("--warmup", type=int, default=5)
    b.add_argument("--block", type=int, default=10, help="back-to-back timed frames per row in each interleaved sweep")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--size", type=argtypes.size, help="image size HxW (default: each package's input size)")
    b.add_argument("--network-only", action="store_true",
                   help="time the network alone between the runtime's own pre- and post-processing, also where the "
                        "package's TVM library or ONNX model holds the whole frame")
    b.add_argument("--record", action="store_true", help="store the results in each package's metadata under this device")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)

    p = sub.add_parser("profile", help="time of each kernel of a package's TVM library (where tuning pays), or of each "
                                       "node of its ONNX graph on ONNX Runtime or OpenVINO, per frame")
    p.add_argument("package", help="model package directory")
    p.add_argument("--backend", choices=["tvm", "onnxruntime", "openvino"], default="tvm")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=25, help="kernels listed (the rest are summed)")
    p.set_defaults(func=cmd_profile)

    a = sub.add_parser("agree", help="labels and logits of the compiled backends against torch on real frames")
    a.add_argument("package", help="model package directory")
    a.add_argument("--data-root", required=True, help="data set root (CamVid or Cityscapes layout)")
    a.add_argument("--split", default="val")
    a.add_argument("--frames", type=int, default=0, help="first N frames of the split (0: all)")
    a.add_argument("--backends", nargs="+", default=["tvm", "onnxruntime"], choices=["tvm", "onnxruntime", "openvino", "openvino-bf16"])
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--json", help="write the rows here")
    a.set_defaults(func=cmd_agree)

