"""Plots written next to results (PNG, headless)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_log(log_path: Path, out_path: Path) -> Path:
    """Training loss (smoothed) and validation mIoU against step."""
    steps, losses, vsteps, vmiou = [], [], [], []
    for line in Path(log_path).read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            steps.append(rec["step"])
            losses.append(rec["loss"])
        if "val" in rec:
            vsteps.append(rec["step"])
            vmiou.append(100 * rec["val"]["miou"])
    fig, ax = plt.subplots(figsize=(7, 4))
    if losses:
        k = max(1, len(losses) // 100)
        smooth = [sum(losses[max(0, i - k) : i + 1]) / len(losses[max(0, i - k) : i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, color="tab:blue", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss", color="tab:blue")
    if vmiou:
        ax2 = ax.twinx()
        ax2.plot(vsteps, vmiou, "o-", color="tab:red", ms=3)
        ax2.set_ylabel("val mIoU (%)", color="tab:red")
    ax.set_title(Path(log_path).parent.name)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return Path(out_path)
