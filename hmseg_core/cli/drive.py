"""``hmseg-core bag make``, ``bag info`` and ``zoo measure``: rosbag2 drives and the model zoo.

Importing this module imports neither rosbags nor torch; handlers import them when run.
:func:`add_source_args` and :func:`source_frames` are public: the ``replay-eval`` extension
(:mod:`hmseg_ros.cli`) builds its drive with the same arguments.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import args as argtypes


def source_frames(args: argparse.Namespace):
    """(spec, frames) for a data set split, or the built-in synthetic drive."""
    from ..bag import dataset_drive, synthetic_drive
    from ..data.datasets import CAMVID

    if args.data_root:
        return dataset_drive(args.data_root, args.split, args.layout, args.frames)
    return CAMVID, synthetic_drive(args.frames or 60, tuple(args.size), args.seed, args.speed)


def add_source_args(p: argparse.ArgumentParser) -> None:
    """The arguments :func:`source_frames` reads, and the bag's frame rate and storage."""
    p.add_argument("--data-root", help="data set (CamVid or Cityscapes layout); default: the built-in synthetic drive")
    p.add_argument("--split", default="val")
    p.add_argument("--layout", choices=["camvid", "cityscapes"])
    p.add_argument("--frames", type=int, default=0, help="number of frames (synthetic default 60; data set default: all)")
    p.add_argument("--size", type=argtypes.size, default=(360, 480), help="synthetic frame size HxW")
    p.add_argument("--seed", type=int, default=0, help="synthetic street")
    p.add_argument("--speed", type=float, default=0.01, help="synthetic motion, image widths per frame")
    p.add_argument("--rate", type=float, default=10.0, help="frame rate of the stamps in Hz")
    p.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")


def cmd_bag_make(args: argparse.Namespace) -> int:
    from ..bag import make_bag

    spec, frames = source_frames(args)
    summary = make_bag(args.out, frames, spec, args.storage, args.rate)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_bag_info(args: argparse.Namespace) -> int:
    from ..bag import read_info

    info = read_info(args.bag)
    info.pop("names", None)
    print(json.dumps(info, indent=2) if info else f"{args.bag}: no hmseg drive description (not written by 'bag make')")
    return 0


def cmd_zoo_measure(args: argparse.Namespace) -> int:
    from ..runtime import LatencyCache, ModelZoo, ResizePolicy, measure_zoo, select_variant

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


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bag make|info`` and ``zoo measure`` to ``sub``."""
    b = sub.add_parser("bag", help="rosbag2 drives with ground truth (make, info)")
    bsub = b.add_subparsers(dest="bag_command", metavar="ACTION", required=True)
    m = bsub.add_parser("make", help="write a drive (images + GT labels) as rosbag2, mcap or sqlite3")
    m.add_argument("--out", required=True, help="new bag folder")
    add_source_args(m)
    m.set_defaults(func=cmd_bag_make)
    i = bsub.add_parser("info", help="print a drive's description")
    i.add_argument("bag")
    i.set_defaults(func=cmd_bag_info)

    z = sub.add_parser("zoo", help="model zoo tools")
    zsub = z.add_subparsers(dest="zoo_command", metavar="ACTION", required=True)
    zm = zsub.add_parser("measure", help="time every variant on this machine and show the choice for a budget")
    zm.add_argument("zoo", help="model zoo index (YAML/JSON)")
    zm.add_argument("--budget", type=float, default=0.0, help="latency budget in ms (0: none)")
    zm.add_argument("--size", type=argtypes.size, default=(360, 480), help="camera image size HxW")
    zm.add_argument("--network-size", type=argtypes.size, help="run the network at HxW (resize policy fixed)")
    zm.add_argument("--backend", default="auto", help="auto: packages on tvm, checkpoints on torch")
    zm.add_argument("--device", default="cpu")
    zm.add_argument("--iterations", type=int, default=20)
    zm.add_argument("--threads", type=int, default=0)
    zm.add_argument("--cache", help="latency cache file (default ~/.cache/hmseg/latency.json)")
    zm.add_argument("--no-cache", action="store_true", help="measure again, do not read or write the cache")
    zm.set_defaults(func=cmd_zoo_measure)
