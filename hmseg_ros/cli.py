"""``hmseg-core replay-eval``: the ROS 2 subcommand, an extension of the ``hmseg-core`` command.

``setup.py`` advertises :func:`register` under the entry-point group ``hmseg_core.commands``,
so :mod:`hmseg_core` (which imports no ROS) adds the command without knowing about it.
Importing this module imports neither rclpy nor rosbags nor torch; the handler does when run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from hmseg_core.cli import args as argtypes
from hmseg_core.cli.drive import add_source_args, source_frames


def cmd_replay_eval(args: argparse.Namespace) -> int:
    """Build the drive when no ``--bag`` is given, run the pipeline, print the report.

    Bad input anywhere on the way (a missing or damaged model, zoo or bag, a parameter the nodes
    refuse) ends in one line naming it and exit status 2, and leaves no report folder behind."""
    try:
        from .node_main import STARTUP_ERRORS, one_line
        from .replay_eval import run_replay_eval
    except ImportError as e:
        print(f"hmseg-core replay-eval: needs ROS 2 (rclpy): {e}\n  on plain Python: pip install 'hmseg_ros[ros]'", file=sys.stderr)
        return 2
    out = Path(args.out)
    created = not out.exists()
    try:
        return _replay_eval(run_replay_eval, out, args)
    except STARTUP_ERRORS + (FileExistsError,) as e:
        print(f"hmseg-core replay-eval: error: {one_line(e)}", file=sys.stderr)
        return 2
    finally:
        # a failed run (an error, Ctrl-C) leaves no half-written report folder; a report that
        # was written stays, and so does a folder that was there before
        if created and out.exists() and not (out / "replay_eval.json").exists():
            shutil.rmtree(out, ignore_errors=True)


def _replay_eval(run_replay_eval, out: Path, args: argparse.Namespace) -> int:
    from hmseg_core.bag import make_bag
    from hmseg_core.runtime import default_zoo_path

    # the model: --zoo, else --checkpoint, else the zoo shipped with hmseg (as the node does)
    zoo = args.zoo or ("" if args.checkpoint else str(default_zoo_path()))
    bag, scratch = args.bag, None
    if bag is None:  # build the drive from a data set or the synthetic street
        spec, frames = source_frames(args)
        if args.keep_drive:
            out.mkdir(parents=True, exist_ok=True)
            bag = out / "drive"
        else:  # data set frames do not stay behind in the report folder unless asked for
            scratch = tempfile.TemporaryDirectory(prefix="hmseg_drive_")
            bag = Path(scratch.name) / "drive"
        try:
            summary = make_bag(bag, frames, spec, args.storage, args.rate)
        except BaseException:
            if scratch is not None:
                scratch.cleanup()
            raise
        print(f"drive: {summary['frames']} frames {summary['size'][0]}x{summary['size'][1]} ({args.storage})")
    try:
        rep = _run(run_replay_eval, bag, out, zoo, args)
    finally:
        if scratch is not None:
            scratch.cleanup()
    return _print_report(rep, args)


def _run(run_replay_eval, bag, out, zoo: str, args):
    return run_replay_eval(
        bag, out, zoo=zoo, model=args.checkpoint or "", budget_ms=args.budget, backend=args.backend,
        mode=args.mode, rate_scale=args.rate_scale, resize_policy="fixed" if args.network_size else "native",
        network_size=args.network_size, threads=args.threads, latency_cache=args.cache or "",
        offline_check=not args.no_offline_check,
        log=lambda s: print(s, file=sys.stderr),
    )


def _print_report(rep, args) -> int:
    from hmseg_core.metrics import format_table

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
    """Add ``replay-eval`` to ``sub`` (the ``hmseg_core.commands`` entry point)."""
    r = sub.add_parser("replay-eval", help="replay -> ROS 2 segmentation node -> evaluator in one process; mIoU and latency report")
    r.add_argument("--bag", help="rosbag2 drive; default: built from --data-root or the synthetic street")
    r.add_argument("--zoo", help="model zoo index (default: the zoo shipped with hmseg, unless --checkpoint is given)")
    r.add_argument("--checkpoint", help="a single checkpoint (instead of --zoo)")
    r.add_argument("--budget", type=float, default=0.0, help="latency budget in ms (0: the most accurate variant)")
    r.add_argument("--backend", default="auto", help="auto (default): the fastest backend measured here whose labels agree with torch (checkpoints run on the compiled backends as their package, exported once into ~/.cache/hmseg)")
    r.add_argument("--mode", choices=["lockstep", "recorded"], default="lockstep",
                   help="lockstep: every frame waits for its prediction (exact mIoU); recorded: the bag's rate (stale frames drop)")
    r.add_argument("--rate-scale", type=float, default=1.0, help="recorded mode: playback speed factor")
    r.add_argument("--network-size", type=argtypes.size, help="run the network at HxW (default: the image size)")
    r.add_argument("--threads", type=int, default=0)
    r.add_argument("--cache", help="latency cache file")
    r.add_argument("--no-offline-check", action="store_true", help="skip the offline evaluation of the same frames")
    r.add_argument("--out", default="runs/replay_eval", help="report folder")
    r.add_argument("--keep-drive", action="store_true", help="keep the generated bag as <out>/drive")
    add_source_args(r)
    r.set_defaults(func=cmd_replay_eval)
