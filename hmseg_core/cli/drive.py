"""``hmseg-core bag make`` and ``bag info``: rosbag2 drives (``zoo measure`` lives in :mod:`.zoo`).

Importing this module imports neither rosbags nor torch; handlers import them when run.
:func:`add_source_args` and :func:`source_frames` are public: the ``replay-eval`` extension
(:mod:`hmseg_ros.cli`) builds its drive with the same arguments.
"""

from __future__ import annotations

import argparse
import json

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


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bag make|info`` to ``sub``."""
    b = sub.add_parser("bag", help="rosbag2 drives with ground truth (make, info)")
    bsub = b.add_subparsers(dest="bag_command", metavar="ACTION", required=True)
    m = bsub.add_parser("make", help="write a drive (images + GT labels) as rosbag2, mcap or sqlite3")
    m.add_argument("--out", required=True, help="new bag folder")
    add_source_args(m)
    m.set_defaults(func=cmd_bag_make)
    i = bsub.add_parser("info", help="print a drive's description")
    i.add_argument("bag")
    i.set_defaults(func=cmd_bag_info)
