"""Plots written next to results (PNG, headless)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_log(log_path: Path, out_path: Path) -> Path:
    """Training loss (smoothed) and validation mIoU against step (with a weight average, the trained
    weights' mIoU dashed beside the average's)."""
    steps, losses, vsteps, vmiou, raw = [], [], [], [], []
    for line in Path(log_path).read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            steps.append(rec["step"])
            losses.append(rec["loss"])
        if "val" in rec:
            vsteps.append(rec["step"])
            vmiou.append(100 * rec["val"]["miou"])
            if "val_raw" in rec:
                raw.append((rec["step"], 100 * rec["val_raw"]["miou"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    if losses:
        k = max(1, len(losses) // 100)
        smooth = [sum(losses[max(0, i - k) : i + 1]) / len(losses[max(0, i - k) : i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, color="tab:blue", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss", color="tab:blue")
    if vmiou:
        ax2 = ax.twinx()
        ax2.plot(vsteps, vmiou, "o-", color="tab:red", ms=3, label="weight average" if raw else None)
        if raw:
            ax2.plot(*zip(*raw), "s--", color="tab:orange", ms=2, lw=1, label="trained weights")
            ax2.legend(loc="lower right", fontsize=8)
        ax2.set_ylabel("val mIoU (%)", color="tab:red")
    ax.set_title(Path(log_path).parent.name)
    return _save(fig, out_path)


def plot_pareto(points: Sequence[Tuple[str, float, float]], out_path: Path, xlabel: str = "measured latency (ms)",
                hand_designed: Sequence[str] = ()) -> Path:
    """Validation mIoU against measured latency, one labelled point per ``(name, latency_ms, miou)``;
    the variants no other beats on both (the Pareto front) joined by a line; the ``hand_designed`` ones
    drawn as squares and joined by a dashed line (the line the paper's claim compares against)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = sorted(points, key=lambda p: (p[1], -p[2]))
    front, best = [], -1.0
    for p in pts:
        if p[2] > best:
            front.append(p)
            best = p[2]
    ax.plot([p[1] for p in front], [100 * p[2] for p in front], "-", color="tab:gray", lw=1, zorder=1, label="Pareto front")
    hand = [p for p in pts if p[0] in hand_designed]
    if len(hand) > 1:
        ax.plot([p[1] for p in hand], [100 * p[2] for p in hand], "--", color="tab:green", lw=1, zorder=1, label="hand-designed line")
    for name, ms, miou in pts:
        on = any(f[0] == name for f in front)
        ax.scatter([ms], [100 * miou], color="tab:red" if on else "tab:blue", marker="s" if name in hand_designed else "o", zorder=2)
        ax.annotate(name, (ms, 100 * miou), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("val mIoU (%)")
    ax.set_title("zoo: accuracy against latency (red: Pareto front" + ("; squares: hand-designed)" if hand else ")"))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out_path)


def plot_accuracy_over_time(series: Sequence[Tuple[str, Sequence[float], Sequence[float]]], target: float, out_path: Path) -> Path:
    """Val mIoU (%) against training wall time (h), one line per ``(label, hours, miou %)``, the target dashed."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, hours, miou in series:
        ax.plot(hours, miou, "o-", ms=3, label=label)
    ax.axhline(target, color="tab:gray", lw=0.8, ls="--")
    ax.set_xlabel("training wall time (h)")
    ax.set_ylabel("val mIoU (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, out_path)


def _save(fig, out_path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return Path(out_path)
