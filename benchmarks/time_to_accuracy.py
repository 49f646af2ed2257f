"""Time to accuracy: how long each training run took to reach a val mIoU, from its run folder.

    python benchmarks/time_to_accuracy.py RUN [RUN ...] --target 60 [--plot curves.png] [--json out.json]

A run folder is what ``hmseg-core train --out`` (or a zoo build's ``<runs>/train/<variant>``) writes:
``log.jsonl`` and ``config.yaml``. The time is the training's wall time, summed over its sessions
(``hmseg_core.pipeline.status.validations_over_time``), until the first validation at or above
``--target``; the runs are compared with the first one. Wall time means what it says: compare runs
made on the same machine with nothing else running (a run paused with SIGSTOP, or sharing the CPU,
counts that time too, unless ``--pause-gap S`` says that a gap of more than S seconds between two
steps was a pause). The plot draws val mIoU against hours for every run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from hmseg_core.pipeline.status import read_log, validations_over_time

RECIPE = ("model", "epochs", "crop", "early_crop", "early_epochs", "precision", "channels_last", "eval_every")


def run_summary(folder: Path, target: float, pause_gap: Optional[float] = None) -> Dict[str, Any]:
    log = folder / "log.jsonl"
    if not log.is_file():
        raise FileNotFoundError(f"{folder}: no log.jsonl (give a folder that hmseg-core train wrote)")
    try:
        cfg = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    vals = validations_over_time(read_log(log), pause_gap)
    reached = next(((t, step, m) for t, step, m in vals if 100 * m >= target), None)
    best = max(vals, key=lambda v: v[2], default=None)
    return {
        "run": str(folder), "recipe": {k: cfg.get(k) for k in RECIPE if k in cfg},
        "validations": [{"hours": t / 3600, "step": step, "miou": m} for t, step, m in vals],
        "best_miou": best[2] if best else None, "hours": vals[-1][0] / 3600 if vals else None,
        "target": target, "hours_to_target": reached[0] / 3600 if reached else None,
        "step_at_target": reached[1] if reached else None,
    }


def _recipe(r: Dict[str, Any]) -> str:
    rec = dict(r["recipe"])
    crop = "x".join(map(str, rec.pop("crop", []) or []))
    early = rec.pop("early_crop", None)
    if early:
        crop = f"{'x'.join(map(str, early))} for {rec.pop('early_epochs', '?')} ep, then {crop}"
    rec.pop("early_epochs", None)
    return ", ".join([f"{rec.pop('model', '?')}", f"{rec.pop('epochs', '?')} ep", crop] + [f"{k} {v}" for k, v in rec.items()])


def _num(value, fmt: str, missing: str = "") -> str:
    return missing if value is None else format(value, fmt)


def format_table(rows: List[Dict[str, Any]]) -> str:
    first = rows[0]["hours_to_target"]
    lines = [f"| run | recipe | validations | best val mIoU % | hours (last validation) | hours to {rows[0]['target']:g} % | less time than the first |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        h = r["hours_to_target"]
        best = None if r["best_miou"] is None else 100 * r["best_miou"]
        lines.append(f"| {Path(r['run']).name} | {_recipe(r)} | {len(r['validations'])} | {_num(best, '.2f')} | "
                     f"{_num(r['hours'], '.2f')} | {_num(h, '.2f', 'not reached')} | "
                     f"{f'{first / h:.2f}x' if h and first else ''} |")
    return "\n".join(lines)


def plot(rows: List[Dict[str, Any]], out: Path) -> Path:
    from hmseg_core.plots import plot_accuracy_over_time

    series = [(f"{Path(r['run']).name}: {_recipe(r)}", [v["hours"] for v in r["validations"]], [100 * v["miou"] for v in r["validations"]])
              for r in rows]
    return plot_accuracy_over_time(series, rows[0]["target"], out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="training run folders (log.jsonl, config.yaml)")
    p.add_argument("--target", type=float, default=60.0, help="val mIoU in %% (default 60)")
    p.add_argument("--plot", type=Path, help="PNG of val mIoU against wall time")
    p.add_argument("--pause-gap", type=float, metavar="S",
                   help="count a gap of more than S seconds between two steps (a SIGSTOP pause) as one step")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    try:
        rows = [run_summary(folder, args.target, args.pause_gap) for folder in args.runs]
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if args.plot:
        plot(rows, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
