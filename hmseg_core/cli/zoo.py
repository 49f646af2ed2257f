"""``hmseg-core zoo build|status|publish|pareto|measure``: the model zoo as one resumable pipeline, and its latency here.

Importing this module imports neither torch nor the pipeline; handlers import them when run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..pipeline import STAGES
from . import args as argtypes


def stages(text: str) -> list:
    """``"train,eval"`` -> ``["train", "eval"]``, each a stage of the build."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in STAGES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: stages are {', '.join(STAGES)}")
    return names


def _build(args: argparse.Namespace, log=None):
    """The :class:`~hmseg_core.pipeline.build.ZooBuild` of the command's config, run folder and overrides."""
    from ..pipeline.build import ZooBuild
    from ..pipeline.config import load_zoo_config, runs_dir

    cfg = load_zoo_config(args.config, args.set, data_root=args.data_root)
    build = ZooBuild(cfg, runs_dir(cfg, args.runs))
    if log is not None:
        build.log = log
    return build


def cmd_zoo_build(args: argparse.Namespace) -> int:
    from ..pipeline.build import select_stages

    build = _build(args)
    chosen = select_stages(args.only, args.until)
    build.log(f"config {build.cfg.path}, runs {build.runs}, stages {', '.join(chosen)}{' (dry run)' if args.dry_run else ''}")
    states = build.build(chosen, dry_run=args.dry_run, redo=args.redo)
    if not args.dry_run and not any(s.state == "waiting" for s in states) and "index" in chosen:
        build.log(f"zoo index: {build.runs / 'zoo.yaml'}")
    return 0


def cmd_zoo_status(args: argparse.Namespace) -> int:
    from ..pipeline.status import collect_plots, format_status, status

    build = _build(args, log=lambda s: None)
    rows = status(build)
    print(json.dumps({"name": build.cfg.name, "config": str(build.cfg.path), "runs": str(build.runs), "steps": rows}, indent=2)
          if args.json else format_status(build, rows))
    if args.plots:
        for path in collect_plots(build, Path(args.plots)):
            print(f"plot: {path}", file=sys.stderr)
    return 0


def cmd_zoo_publish(args: argparse.Namespace) -> int:
    from ..pipeline.publish import publish

    build = _build(args)
    report = publish(build, Path(args.to), args.allow_synthetic, log=lambda s: print(s, file=sys.stderr))
    print(json.dumps(report, indent=2))
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


def cmd_zoo_pareto(args: argparse.Namespace) -> int:
    from ..pipeline.pareto import format_report, pareto_report
    from ..runtime.zoo import ModelZoo, default_zoo_path

    zoo = ModelZoo.load(args.zoo or default_zoo_path())
    report = pareto_report(zoo, args.backend, args.stat)
    if not report["rows"]:
        raise ValueError(f"{zoo.path}: no variant has a {args.stat} latency measured on {args.backend!r} "
                         "(run the zoo build's measure stage, or pick --backend)")
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if args.plot:
        from ..plots import plot_pareto

        rows = report["rows"]
        path = plot_pareto([(r["name"], r["latency_ms"], r["miou"]) for r in rows], Path(args.plot),
                           f"measured latency, end-to-end {args.stat} on {args.backend} (ms)",
                           [r["name"] for r in rows if r["hand_designed"]])
        print(f"plot: {path}", file=sys.stderr)
    return 0


def _add_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="config/zoo_camvid.yaml", help="zoo config (YAML; default %(default)s)")
    p.add_argument("--runs", help="run folder (default: $HMSEG_RUNS, else ~/.cache/hmseg/zoo/<name>)")
    p.add_argument("--data-root", help="data set root (overrides the config's data_root; empty: generated scenes)")
    p.add_argument("-o", "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a zoo config key, e.g. -o train.overrides.epochs=3 (value read as YAML)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``zoo build|status|publish|pareto|measure`` to ``sub``."""
    z = sub.add_parser("zoo", help="model zoo: build it (resumable pipeline), its status, publish, measure")
    zsub = z.add_subparsers(dest="zoo_command", metavar="ACTION", required=True)

    b = zsub.add_parser("build", help="latency table -> searches -> training -> eval -> packages -> latency -> zoo index")
    _add_build_args(b)
    b.add_argument("--only", type=stages, metavar="STAGE[,STAGE]", help=f"run only these stages ({', '.join(STAGES)})")
    b.add_argument("--until", choices=STAGES, help="stop after this stage")
    b.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    b.add_argument("--redo", action="append", default=[], metavar="STAGE[:ITEM]",
                   help="set a step's old result aside and run it again (e.g. train:mrms_tiny, or search for every budget)")
    b.set_defaults(func=cmd_zoo_build)

    s = zsub.add_parser("status", help="every stage and variant: state, epochs, best val mIoU, s/step, ETA")
    _add_build_args(s)
    s.add_argument("--json", action="store_true")
    s.add_argument("--plots", metavar="DIR", help="also write every variant's training curves and the Pareto plot here")
    s.set_defaults(func=cmd_zoo_status)

    p = zsub.add_parser("publish", help="copy finished variants into a shipped zoo as weights only, update its index")
    _add_build_args(p)
    p.add_argument("--to", default="hmseg_core/zoo", help="zoo folder with zoo.yaml (default %(default)s)")
    p.add_argument("--allow-synthetic", action="store_true", help="publish models trained on generated scenes")
    p.set_defaults(func=cmd_zoo_publish)

    pa = zsub.add_parser("pareto", help="accuracy against measured latency: the Pareto front, and the searched variants "
                                        "against the hand-designed line (the paper's claim)")
    pa.add_argument("zoo", nargs="?", help="model zoo index (default: the shipped zoo)")
    pa.add_argument("--backend", default="onnxruntime", help="whose measured latency (default %(default)s)")
    pa.add_argument("--stat", choices=("p50", "p95"), default="p95", help="latency statistic (default %(default)s)")
    pa.add_argument("--plot", metavar="PNG", help="also draw it")
    pa.add_argument("--json", action="store_true")
    pa.set_defaults(func=cmd_zoo_pareto)

    zm = zsub.add_parser("measure", help="time every variant on this machine and show the choice for a budget")
    zm.add_argument("zoo", help="model zoo index (YAML/JSON)")
    zm.add_argument("--budget", type=float, default=0.0, help="latency budget in ms (0: none)")
    zm.add_argument("--size", type=argtypes.size, default=(360, 480), help="camera image size HxW")
    zm.add_argument("--network-size", type=argtypes.size, help="run the network at HxW (resize policy fixed)")
    zm.add_argument("--backend", default="auto", help="auto (default): what backend auto means here (docs/DEPLOY.md)")
    zm.add_argument("--device", default="cpu")
    zm.add_argument("--iterations", type=int, default=20)
    zm.add_argument("--threads", type=int, default=0)
    zm.add_argument("--cache", help="latency cache file (default ~/.cache/hmseg/latency.json)")
    zm.add_argument("--no-cache", action="store_true", help="measure again, do not read or write the cache")
    zm.set_defaults(func=cmd_zoo_measure)
