"""``hmseg-core`` subcommands for drives and deployment: ``bag make``, ``bag info``, ``zoo measure``
and ``replay-eval``.

Registered through :data:`hmseg_core.cli._PLUGINS`. Importing this module imports neither
rosbags nor rclpy; ``replay-eval`` imports the ROS 2 nodes (:mod:`hmseg_ros`) inside its handler.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from . import cli


def _source_frames(args: argparse.Namespace):
    """(spec, frames) for a data set split, or the built-in synthetic drive."""
    from .bag import dataset_drive, synthetic_drive
    from .data.datasets import CAMVID

    if args.data_root:
        return dataset_drive(args.data_root, args.split, args.layout, args.frames)
    return CAMVID, synthetic_drive(args.frames or 60, tuple(args.size), args.seed, args.speed)


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="data set (CamVid or Cityscapes layout); default: the built-in synthetic drive")
    p.add_argument("--split", default="val")
    p.add_argument("--layout", choices=["camvid", "cityscapes"])
    p.add_argument("--frames", type=int, default=0, help="number of frames (synthetic default 60; data set default: all)")
    p.add_argument("--size", type=cli._size, default=(360, 480), help="synthetic frame size HxW")
    p.add_argument("--seed", type=int, default=0, help="synthetic street")
    p.add_argument("--speed", type=float, default=0.01, help="synthetic motion, image widths per frame")
    p.add_argument("--rate", type=float, default=10.0, help="frame rate of the stamps in Hz")
    p.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")


def cmd_bag_make(args: argparse.Namespace) -> int:
    from .bag import make_bag

    spec, frames = _source_frames(args)
    summary = make_bag(args.out, frames, spec, args.storage, args.rate)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_bag_info(args: argparse.Namespace) -> int:
    from .bag import read_info

    info = read_info(args.bag)
    info.pop("names", None)
    print(json.dumps(info, indent=2) if info else f"{args.bag}: no hmseg drive description (not written by 'bag make')")
    return 0


def cmd_zoo_measure(args: argparse.Namespace) -> int:
    from .runtime import LatencyCache, ModelZoo, ResizePolicy, measure_zoo, select_variant

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    zoo = ModelZoo.load(args.zoo)
    resize = ResizePolicy("fixed", args.network_size) if args.network_size else ResizePolicy()
    size = args.network_size or args.size
    cache = None if args.no_cache else LatencyCache(args.cache or LatencyCache.default_path())
    ms = measure_zoo(zoo, size, args.backend, resize, args.device, cache, args.iterations, log=lambda s: print(s, file=sys.stderr))
    print(select_variant(ms, args.budget).describe())
    return 0


def cmd_replay_eval(args: argparse.Namespace) -> int:
    try:
        from hmseg_ros.replay_eval import run_replay_eval
    except ImportError as e:
        print(f"hmseg-core replay-eval: needs ROS 2 (rclpy): {e}\n  on plain Python: pip install 'hmseg_ros[ros]'", file=sys.stderr)
        return 2
    from .bag import make_bag

    if not args.zoo and not args.checkpoint:
        raise ValueError("give --zoo (a model zoo index) or --checkpoint (train one with 'hmseg-core demo')")
    out = Path(args.out)
    bag, scratch = args.bag, None
    if bag is None:  # build the drive from a data set or the synthetic street
        spec, frames = _source_frames(args)
        out.mkdir(parents=True, exist_ok=True)
        if args.keep_drive:
            bag = out / "drive"
        else:  # data set frames do not stay behind in the report folder unless asked for
            scratch = tempfile.TemporaryDirectory(prefix="hmseg_drive_")
            bag = Path(scratch.name) / "drive"
        summary = make_bag(bag, frames, spec, args.storage, args.rate)
        print(f"drive: {summary['frames']} frames {summary['size'][0]}x{summary['size'][1]} ({args.storage})")
    try:
        rep = _run(run_replay_eval, bag, out, args)
    finally:
        if scratch is not None:
            scratch.cleanup()
    return _print_report(rep, args)


def _run(run_replay_eval, bag, out, args):
    return run_replay_eval(
        bag, out, zoo=args.zoo or "", model=args.checkpoint or "", budget_ms=args.budget, backend=args.backend,
        mode=args.mode, rate_scale=args.rate_scale, resize_policy="fixed" if args.network_size else "native",
        network_size=args.network_size, threads=args.threads, latency_cache=args.cache or "",
        offline_check=not args.no_offline_check,
        log=lambda s: print(s, file=sys.stderr),
    )


def _print_report(rep, args) -> int:
    from .metrics import format_table

    lat, seg = rep["latency_ms"] or {}, rep["segmenter"]
    print(rep["selection"])
    if rep["frames_evaluated"]:
        print(format_table(rep))
    print(
        f"\n{rep['frames_evaluated']}/{rep['frames_with_truth']} frames evaluated ({rep['frames_without_prediction']} without prediction, "
        f"{seg['dropped']} dropped by the node); mIoU {100 * rep['miou']:.2f} % with {rep['variant']} ({rep['backend']})"
    )
    if lat:
        print(f"latency stamp -> prediction: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, max {lat['max']:.1f} ms; "
              f"node p95 {seg['latency_p95_ms'] or float('nan'):.1f} ms")
    if "matches_offline" in rep:
        print(f"offline mIoU on the same frames {100 * rep['offline_miou']:.2f} %: {'identical' if rep['matches_offline'] else 'DIFFERENT'}")
    print(f"report: {rep['report_files']['markdown']}")
    return 0 if rep.get("matches_offline", True) or args.mode != "lockstep" else 1


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bag", help="rosbag2 drives with ground truth (make, info)")
    bsub = b.add_subparsers(dest="bag_command", metavar="ACTION", required=True)
    m = bsub.add_parser("make", help="write a drive (images + GT labels) as rosbag2, mcap or sqlite3")
    m.add_argument("--out", required=True, help="new bag folder")
    _add_source_args(m)
    m.set_defaults(func=cmd_bag_make)
    i = bsub.add_parser("info", help="print a drive's description")
    i.add_argument("bag")
    i.set_defaults(func=cmd_bag_info)

    z = sub.add_parser("zoo", help="model zoo tools")
    zsub = z.add_subparsers(dest="zoo_command", metavar="ACTION", required=True)
    zm = zsub.add_parser("measure", help="time every variant on this machine and show the choice for a budget")
    zm.add_argument("zoo", help="model zoo index (YAML/JSON)")
    zm.add_argument("--budget", type=float, default=0.0, help="latency budget in ms (0: none)")
    zm.add_argument("--size", type=cli._size, default=(360, 480), help="camera image size HxW")
    zm.add_argument("--network-size", type=cli._size, help="run the network at HxW (resize policy fixed)")
    zm.add_argument("--backend", default="auto", help="auto: packages on tvm, checkpoints on torch")
    zm.add_argument("--device", default="cpu")
    zm.add_argument("--iterations", type=int, default=20)
    zm.add_argument("--threads", type=int, default=0)
    zm.add_argument("--cache", help="latency cache file (default ~/.cache/hmseg/latency.json)")
    zm.add_argument("--no-cache", action="store_true", help="measure again, do not read or write the cache")
    zm.set_defaults(func=cmd_zoo_measure)

    r = sub.add_parser("replay-eval", help="replay -> ROS 2 segmentation node -> evaluator in one process; mIoU and latency report")
    r.add_argument("--bag", help="rosbag2 drive; default: built from --data-root or the synthetic street")
    r.add_argument("--zoo", help="model zoo index")
    r.add_argument("--checkpoint", help="a single checkpoint (instead of --zoo)")
    r.add_argument("--budget", type=float, default=0.0, help="latency budget in ms (0: the most accurate variant)")
    r.add_argument("--backend", default="auto", help="auto: packages on tvm, checkpoints on torch")
    r.add_argument("--mode", choices=["lockstep", "recorded"], default="lockstep",
                   help="lockstep: every frame waits for its prediction (exact mIoU); recorded: the bag's rate (stale frames drop)")
    r.add_argument("--rate-scale", type=float, default=1.0, help="recorded mode: playback speed factor")
    r.add_argument("--network-size", type=cli._size, help="run the network at HxW (default: the image size)")
    r.add_argument("--threads", type=int, default=0)
    r.add_argument("--cache", help="latency cache file")
    r.add_argument("--no-offline-check", action="store_true", help="skip the offline evaluation of the same frames")
    r.add_argument("--out", default="runs/replay_eval", help="report folder")
    r.add_argument("--keep-drive", action="store_true", help="keep the generated bag as <out>/drive")
    _add_source_args(r)
    r.set_defaults(func=cmd_replay_eval)


cli._PLUGINS.append(register)
