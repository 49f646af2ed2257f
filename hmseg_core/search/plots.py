"""Search plots: costs against epoch, and the architecture distribution."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..ops import OP_NAMES  # noqa: E402


def _epochs(log_path: Path) -> List[Dict]:
    return [r for r in map(json.loads, Path(log_path).read_text().splitlines()) if "epoch_end" in r]


def plot_search_log(log_path: Path, out_dir: Path, target: float, metric: str) -> List[Path]:
    """``cost.png`` (expected / sampled / derived cost per epoch, target R) and ``probs.png``."""
    records = _epochs(log_path)
    if not records:
        return []
    out_dir = Path(out_dir)
    x = [r["epoch_end"] for r in records]

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("expected_cost", "-"), ("sampled_cost", "."), ("derived_cost", "--")):
        ys = [np.nan if r.get(key) is None else r[key] for r in records]
        ax.plot(x, ys, style, label=key.replace("_", " "))
    ax.axhline(target, color="k", lw=0.8, label="target R")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.legend()
    fig.tight_layout()
    cost_png = out_dir / "cost.png"
    fig.savefig(cost_png, dpi=110)
    plt.close(fig)

    probs = records[-1]["probabilities"]
    layers = list(probs["ops"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, max(3.0, 0.3 * len(layers) + 1.5)),
                                   gridspec_kw={"width_ratios": [2, 1]})
    if layers:
        grid = np.full((len(layers), len(OP_NAMES)), np.nan)
        for i, name in enumerate(layers):
            for op, p in probs["ops"][name].items():
                grid[i, OP_NAMES.index(op)] = p
        im = ax1.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax1.set_xticks(range(len(OP_NAMES)), OP_NAMES, rotation=60, ha="right")
        ax1.set_yticks(range(len(layers)), layers)
        fig.colorbar(im, ax=ax1, label="p (last epoch)")
    ax1.set_title("operator probabilities")
    for b, name in enumerate(("medium", "low")):
        for ratio in probs["ratios"][b]:
            ax2.plot(x, [r["probabilities"]["ratios"][b][ratio] for r in records], "-" if b == 0 else "--",
                     label=f"{name} {ratio}")
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1)
    ax2.set_title("ratio probabilities")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    probs_png = out_dir / "probs.png"
    fig.savefig(probs_png, dpi=110)
    plt.close(fig)
    return [cost_png, probs_png]
