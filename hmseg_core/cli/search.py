"""``hmseg-core lut build|check|recalibrate`` and ``hmseg-core search``: cost tables and architecture search.

Importing this module imports neither torch nor the search code; handlers import them when run.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..tensor_layouts import DEFAULT_LAYOUT, LAYOUTS
from . import args as argtypes


def _backend(args: argparse.Namespace, name: str):
    """The latency backend ``name`` (torch | tvm) with the command's device/threads/tuning arguments."""
    if name == "tvm":
        from pathlib import Path

        from ..deploy.tuning import TuningOptions
        from ..search.lut import TVMTimer

        trials = getattr(args, "trials_per_part", 0)
        db = getattr(args, "tuning_db", None)
        if trials and not db:
            raise ValueError("--trials-per-part needs --tuning-db DIR (the records the final networks' export reuses)")
        tuning = TuningOptions(trials=trials, trials_per_task=max(1, trials), db_root=Path(db) if db else None,
                               layout=getattr(args, "layout", None) or DEFAULT_LAYOUT)
        return TVMTimer(getattr(args, "target", "host"), args.threads, tuning)
    if name != "torch":
        raise ValueError(f"unknown latency backend {name!r}; use torch or tvm")
    from ..search.lut import TorchTimer

    return TorchTimer(args.device, args.threads)


def _table_backend(args: argparse.Namespace, path: str):
    """The backend a table was measured with, set up like it was (to check and extend it on this device)."""
    from ..search.lut import LatencyTable

    fingerprint = LatencyTable.load(path).fingerprint
    args.layout = fingerprint.get("layout")
    return _backend(args, fingerprint.get("backend", "torch"))


def _table_here(args: argparse.Namespace):
    """``(backend, table, space)``: ``args.table`` loaded for this device, its backend set up as it was
    built, and the O+D+R space around its base."""
    from ..genotype import Genotype
    from ..search.lut import LatencyTable
    from ..search.space import SearchSpace

    backend = _table_backend(args, args.table)
    table = LatencyTable.load(args.table, device=backend.fingerprint())
    return backend, table, SearchSpace.from_genotype(Genotype.parse(table.base), "O+D+R", table.ratio_choices[0])


def cmd_lut_build(args: argparse.Namespace) -> int:
    from ..registry import get_genotype
    from ..search.lut import LatencyTable
    from ..search.space import SearchSpace

    space = SearchSpace.from_genotype(get_genotype(args.base, args.classes), "O+D+R", args.ratios)
    print(space.describe(), file=sys.stderr)
    table = LatencyTable.measure(space, args.input_size, _backend(args, args.backend), args.warmup, args.repeats, progress=True,
                                 calibrate=args.calibrate, passes=args.passes)
    path = table.save(args.out)
    cal = table.calibration
    print(json.dumps({"table": str(path), "entries": len(table.entries), "base_latency_ms": table.predict(space.base),
                      "calibration": {"scale": cal.scale, "offset_ms": cal.offset_ms, "architectures": len(cal.rows)},
                      "fingerprint": table.fingerprint}, indent=2))
    return 0


def cmd_lut_check(args: argparse.Namespace) -> int:
    from ..search.lut import check_fidelity

    backend, table, space = _table_here(args)
    report = check_fidelity(table, space, backend, args.genotypes, args.seed, args.warmup, args.repeats, progress=True)
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report, f, indent=2)
    print(f"{report['count']} genotypes at {table.input_size[0]}x{table.input_size[1]}: LUT vs measured latency, "
          f"median error {100 * report['median_abs_rel_error']:.1f} %, worst {100 * report['worst_abs_rel_error']:.1f} % "
          f"(sum of parts without calibration: {100 * report['uncalibrated_median_abs_rel_error']:.1f} % / "
          f"{100 * report['uncalibrated_worst_abs_rel_error']:.1f} %)")
    return 0


def cmd_lut_recalibrate(args: argparse.Namespace) -> int:
    backend, table, space = _table_here(args)
    before = table.calibration.scale
    count = args.calibrate or len(table.calibration.rows) or 10
    cal = table.calibrate(space, backend, count, args.warmup, args.repeats, progress=True)
    path = table.save(args.out or args.table)
    print(json.dumps({"table": str(path), "scale_before": before, "scale": cal.scale, "architectures": len(cal.rows),
                      "base_latency_ms": table.predict(space.base)}, indent=2))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from ..search.config import load_search_config
    from ..search.lut import LatencyTable
    from ..search.searcher import search

    cfg = load_search_config(
        args.config, args.set, base=args.base, space=args.space, lut=args.lut, metric=args.metric, target=args.target,
        data_root=args.data_root, out_dir=args.out, epochs=args.epochs, warmup_epochs=args.warmup_epochs,
        batch_size=args.batch_size, threads=args.threads,
    )
    # latency is only meaningful on the device it was measured on; MACs and params anywhere
    device = None
    if cfg.metric == "latency_ms" and not args.any_device:
        device = _table_backend(argparse.Namespace(device="cpu", threads=cfg.threads), cfg.lut).fingerprint()
    table = LatencyTable.load(cfg.lut, device=device)
    summary = search(cfg, table, resume=args.resume, stop_at_step=args.max_steps)
    print(json.dumps(summary, indent=2))
    return 0


def _add_measure_args(p: argparse.ArgumentParser, repeats: int) -> None:
    p.add_argument("--device", default="cpu", help="torch device to measure on (cpu, cuda)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (part of the fingerprint)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=repeats, help="timed runs per candidate; the median is kept")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``lut build|check|recalibrate`` and ``search`` to ``sub``."""
    lut = sub.add_parser("lut", help="cost lookup table of a search space (latency, MACs, params)")
    lsub = lut.add_subparsers(dest="lut_command", required=True)
    b = lsub.add_parser("build", help="measure every candidate of the O+D+R space around a base genotype")
    b.add_argument("--base", default="mrms_tiny", help="registered model or genotype string")
    b.add_argument("--classes", type=int, default=11)
    b.add_argument("--input-size", type=argtypes.size, default=(360, 480), help="deployment input HxW")
    b.add_argument("--ratios", type=argtypes.ratios, default=(0.4, 0.5, 0.6), help="resolution ratio choices")
    b.add_argument("--out", required=True, help="table file (JSON)")
    b.add_argument("--passes", type=int, default=3, help="sweeps over all parts; each part keeps the median over sweeps")
    b.add_argument("--calibrate", type=int, default=10, metavar="N",
                   help="random architectures measured end to end to fit the latency calibration (0: none)")
    _add_measure_args(b, 20)
    b.add_argument("--backend", choices=["torch", "tvm"], default="torch",
                   help="measure in PyTorch eager or compiled by TVM for --target (the deployment path)")
    b.add_argument("--target", default="host", help="TVM target: host or a JSON target dict (tvm backend)")
    b.add_argument("--trials-per-part", type=int, default=0,
                   help="MetaSchedule trials per part (tvm backend; 0: apply the records in --tuning-db only)")
    b.add_argument("--tuning-db", help="tuning records directory shared with `hmseg-core export --tuning-db`")
    b.add_argument("--layout", choices=sorted(LAYOUTS), help="tvm backend: the layout the networks will be exported in")
    b.set_defaults(func=cmd_lut_build)
    c = lsub.add_parser("check", help="LUT-predicted vs measured end-to-end latency of random architectures")
    c.add_argument("--table", required=True)
    c.add_argument("--genotypes", type=int, default=10)
    c.add_argument("--seed", type=int, default=0, help="draws the architectures (not the table's calibration seed)")
    c.add_argument("--report", help="write the JSON report here")
    c.add_argument("--tuning-db", help="tvm tables: the records directory the table was built with")
    _add_measure_args(c, 20)
    c.set_defaults(func=cmd_lut_check)

    r = lsub.add_parser("recalibrate", help="re-fit the latency calibration to how fast this machine runs now (parts kept)")
    r.add_argument("--table", required=True)
    r.add_argument("--out", help="write the recalibrated table here (default: in place; the old calibration is kept in it)")
    r.add_argument("--calibrate", type=int, default=0, metavar="N", help="architectures to measure (default: as many as before)")
    r.add_argument("--tuning-db", help="tvm tables: the records directory the table was built with")
    _add_measure_args(r, 20)
    r.set_defaults(func=cmd_lut_recalibrate)

    s = sub.add_parser("search", help="Gumbel-softmax architecture search against a cost target")
    s.add_argument("--config", help="YAML file (config/search_camvid.yaml)")
    s.add_argument("-o", "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    s.add_argument("--base")
    s.add_argument("--space", help="O, D, O+R, D+R or O+D+R (paper Table 6)")
    s.add_argument("--lut", help="latency table (hmseg-core lut build)")
    s.add_argument("--metric", choices=["latency_ms", "macs", "params"])
    s.add_argument("--target", type=float, help="cost target R in the metric's unit")
    s.add_argument("--data-root")
    s.add_argument("--out")
    s.add_argument("--epochs", type=int)
    s.add_argument("--warmup-epochs", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--threads", type=int)
    s.add_argument("--resume", action="store_true", help="continue the search in --out from last.pt")
    s.add_argument("--max-steps", type=int, help="stop (with a checkpoint) after this many steps; resume later")
    s.add_argument("--any-device", action="store_true", help="accept a latency table measured on another device")
    s.set_defaults(func=cmd_search)

