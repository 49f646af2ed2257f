"""``zoo status``: every step of a build with its state and progress, as a table or JSON, and the curves.

Progress of training comes from the run folder: steps and epochs from ``last.pt`` (read lazily,
``mmap``), seconds per step from the ``time`` field of ``log.jsonl`` (median over the last steps of
the newest session), the time a validation pass takes from the gaps around its log lines. The ETA
is the remaining steps at that pace plus the remaining validations; a search's pace is its
recorded wall time over its steps. Nothing is written, except the plots with ``--plots``.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .build import StepState, ZooBuild


def _checkpoint_head(path: Path) -> Optional[Dict[str, Any]]:
    """The bookkeeping entries of a ``last.pt`` (the tensors stay on disk), or ``None``."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 (missing, being replaced, foreign: no progress to show)
        return None
    return {k: ckpt.get(k) for k in ("step", "epoch", "total_steps", "best_miou", "wall_s", "config")}


def read_log(path: Path) -> List[Dict[str, Any]]:
    """The records of a ``log.jsonl``; unreadable lines (a line cut by a kill) are left out."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def training_pace(records: List[Dict[str, Any]]) -> Dict[str, Optional[float]]:
    """Median seconds per step and per validation pass over the newest session of a training log."""
    steps = [r for r in records if "loss" in r and "time" in r]
    gaps = [b["time"] - a["time"] for a, b in zip(steps, steps[1:]) if b["step"] == a["step"] + 1 and b["time"] > a["time"]]
    s_step = statistics.median(gaps[-100:]) if gaps else None
    evals = []
    by_step = {r["step"]: r for r in steps}
    for r in records:
        if "val" in r and r["step"] in by_step and r["step"] + 1 in by_step and s_step is not None:
            gap = by_step[r["step"] + 1]["time"] - by_step[r["step"]]["time"]
            if gap > 0:
                evals.append(max(0.0, gap - s_step))
    return {"s_per_step": s_step, "s_per_eval": statistics.median(evals) if evals else None}


def validations_over_time(records: List[Dict[str, Any]], pause_gap: Optional[float] = None) -> List[Tuple[float, int, float]]:
    """``(seconds, step, mIoU)`` of every validation of a training log: the training's wall time when
    that validation had finished, summed over its sessions.

    A step's ``time`` counts from its process's start, so a step whose time is below its predecessor's
    opens a new session (a resume) and adds its whole time (set-up included). A validation ends one
    step time (the median) before the next step's line; the last one of a session takes the median
    validation.
    ``pause_gap``: a gap between two steps longer than this many seconds (a run stopped with SIGSTOP
    for a while) counts as a median step, plus a median validation where one sat in it."""
    steps = [r for r in records if "loss" in r and "time" in r]
    pace = training_pace(records)
    s_step, s_eval = pace["s_per_step"] or 0.0, pace["s_per_eval"] or 0.0
    validated = {r["step"] for r in records if "val" in r}
    wall, opens, total, prev = {}, set(), 0.0, None
    for r in steps:
        if prev is None or r["time"] < prev:
            opens.add(r["step"])
            gap = r["time"]
        else:
            gap = r["time"] - prev
            if pause_gap is not None and gap > pause_gap:
                gap = s_step + (s_eval if r["step"] - 1 in validated else 0.0)
        total += gap
        wall[r["step"]], prev = total, r["time"]
    out = []
    for r in records:
        step = r["step"]
        if "val" in r and step in wall:
            done = wall[step + 1] - s_step if step + 1 in wall and step + 1 not in opens else wall[step] + s_eval
            out.append((max(done, wall[step]), step, r["val"]["miou"]))
    return out


#: the states of a step the build runs (a stale one stops it until --redo; a done one is skipped)
RUNNABLE = ("partial", "ready")


def _train_progress(build: ZooBuild, st: StepState) -> Dict[str, Any]:
    folder = build.folder("train", st.item)
    head = _checkpoint_head(folder / "last.pt") if (folder / "last.pt").exists() else None
    records = read_log(folder / "log.jsonl")
    cfg = (st.inputs or {}).get("train") or (head or {}).get("config") or {}
    epochs, eval_every = cfg.get("epochs"), cfg.get("eval_every") or 0
    step = (head or {}).get("step") or max([r["step"] for r in records if "loss" in r], default=0)
    total = (head or {}).get("total_steps")
    best = max([r["val"]["miou"] for r in records if "val" in r], default=None)
    if st.marker:
        best = st.marker["result"].get("best_miou", best)
    pace = training_pace(records[-400:])
    out: Dict[str, Any] = {"step": step, "total_steps": total, "epochs_total": epochs, "best_miou": best, **pace}
    if total and epochs:
        spe = total / epochs
        out["epochs_done"] = step / spe
        if pace["s_per_step"] and st.state in RUNNABLE:
            evals_left = ((epochs - int(step // spe)) // eval_every) if eval_every else 0
            out["eta_s"] = (total - step) * pace["s_per_step"] + evals_left * (pace["s_per_eval"] or 0.0)
    return out


def _search_progress(build: ZooBuild, st: StepState) -> Dict[str, Any]:
    folder = build.folder("search", st.item)
    head = _checkpoint_head(folder / "last.pt") if (folder / "last.pt").exists() else None
    records = read_log(folder / "search_log.jsonl")
    ends = [r for r in records if "epoch_end" in r]
    epochs = ((st.inputs or {}).get("search") or {}).get("epochs")
    step = (head or {}).get("step") or 0
    out: Dict[str, Any] = {"step": step, "epochs_total": epochs}
    if ends and epochs:
        spe = ends[0]["step"] / ends[0]["epoch_end"]
        out.update(total_steps=int(spe * epochs), epochs_done=step / spe)
        if head and head.get("wall_s") and step:
            out["s_per_step"] = head["wall_s"] / step
            if st.state in RUNNABLE:
                out["eta_s"] = (spe * epochs - step) * out["s_per_step"]
    return out


def _summary(st: StepState) -> str:
    """What a done step produced, in a few words."""
    r = (st.marker or {}).get("result", {})
    if st.stage == "lut":
        return f"{r.get('entries')} entries; {r.get('base')} measured {r.get('base_measured_ms', 0):.2f} ms"
    if st.stage in ("train", "search") and r.get("adopted"):
        return f"adopted {r['adopted']}"
    if st.stage == "search":
        return f"R {r.get('target_ms', 0):.2f} ms, fitted {r.get('predicted_ms', 0):.2f} ms{'' if r.get('in_band') else ' (out of band)'}"
    if st.stage == "eval":
        return f"val mIoU {100 * r.get('miou', 0):.2f} % on {r.get('images')} images"
    if st.stage == "export":
        return r.get("package", "")
    if st.stage == "measure":
        b = r["backends"][0]
        return f"{b}: " + ", ".join(f"{v} {lat.get(b, {}).get('total_p95_ms', float('nan')):.1f}" for v, lat in r.get("latency", {}).items()) + " ms p95"
    if st.stage == "index":
        return r.get("index", "")
    return ""


def status(build: ZooBuild) -> List[Dict[str, Any]]:
    """One row per step: stage, item, state, detail and, for training and search, progress and ETA."""
    rows = []
    for stage, item in build.steps():
        st = build.state(stage, item)
        row: Dict[str, Any] = {"stage": stage, "item": item, "state": st.state,
                               "detail": _summary(st) if st.state == "done" else st.detail}
        adopted = st.state == "done" and bool(st.marker["result"].get("adopted"))
        if stage == "train" and adopted:  # trained elsewhere: no run here to show the progress of
            row["best_miou"] = st.marker["result"].get("best_miou")
        elif stage == "train" and st.state != "waiting":
            row.update(_train_progress(build, st))
        elif stage == "search" and st.state != "waiting" and not adopted:
            row.update(_search_progress(build, st))
        elif stage == "eval" and st.state == "done":
            row["best_miou"] = st.marker["result"]["miou"]
        rows.append(row)
    return rows


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    m = int(seconds // 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{int(seconds % 60):02d}s"


def format_status(build: ZooBuild, rows: List[Dict[str, Any]]) -> str:
    lines = [f"zoo {build.cfg.name!r} ({build.cfg.path}), runs {build.runs}",
             "| stage | item | state | progress | best mIoU | s/step | ETA | note |", "|---|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        progress = ""
        if r.get("epochs_total"):
            done = r.get("epochs_done")
            if done is not None:
                progress = f"{done:.1f}/{r['epochs_total']} ep"
            else:
                progress = f"step {r['step']} of {r['epochs_total']} ep" if r.get("step") else f"0/{r['epochs_total']} ep"
            if r.get("total_steps"):
                progress += f" ({r['step']}/{r['total_steps']} steps)"
        best = f"{100 * r['best_miou']:.2f} %" if r.get("best_miou") is not None and r["best_miou"] >= 0 else ""
        pace = f"{r['s_per_step']:.2f}" if r.get("s_per_step") else ""
        note = r["detail"].replace("|", "/")
        lines.append(f"| {r['stage']} | {r['item']} | {r['state']} | {progress} | {best} | {pace} | {_duration(r.get('eta_s'))} | {note} |")
    eta = sum(r.get("eta_s") or 0 for r in rows)
    todo = sum(r["state"] != "done" for r in rows)
    lines.append(f"{len(rows) - todo}/{len(rows)} steps done" + (f"; known ETA of the running steps {_duration(eta)}" if eta else ""))
    return "\n".join(lines)


def collect_plots(build: ZooBuild, out: Path) -> List[Path]:
    """Training curves of every variant (drawn from its log, so running ones too) and the Pareto plot, into ``out``."""
    from ..plots import plot_training_log

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for v in build.cfg.variants():
        log = build.folder("train", v) / "log.jsonl"
        if log.is_file() and log.stat().st_size:
            written.append(plot_training_log(log, out / f"{v}_curves.png"))
    pareto = build.runs / "pareto.png"
    if pareto.is_file():
        written.append(Path(shutil.copy2(pareto, out / "pareto.png")))
    return written


__all__ = ["collect_plots", "format_status", "read_log", "status", "training_pace", "validations_over_time"]
