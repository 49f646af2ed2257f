"""Evaluate a stream of predictions against ground truth matched by header stamp. No ROS inside.

The ROS evaluator node feeds messages in as they arrive (in any order between the two
topics); this class keeps the confusion matrix, stamp-to-prediction latency, running mIoU
and the frames that never got a prediction, and writes the JSON / Markdown / plot report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .metrics import ConfusionMatrix, format_table
from .runtime.stream import stage_table


@dataclass
class FrameRecord:
    stamp_ns: int
    latency_ms: float
    running_miou: float


class StreamEvaluator:
    """Matches predictions to ground truth by stamp; every frame is counted exactly once."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = list(class_names)
        self.cm = ConfusionMatrix(len(self.class_names))
        self._truth: Dict[int, np.ndarray] = {}
        self._pending: Dict[int, tuple] = {}  # predictions whose truth has not arrived yet
        self._seen_truth: set = set()
        self.records: List[FrameRecord] = []
        self.size_mismatches = 0
        self.duplicate_predictions = 0

    def add_truth(self, stamp_ns: int, labels: np.ndarray) -> Optional[FrameRecord]:
        if stamp_ns in self._seen_truth:
            return None
        self._seen_truth.add(stamp_ns)
        self._truth[stamp_ns] = labels
        if stamp_ns in self._pending:
            pred, received_ns = self._pending.pop(stamp_ns)
            return self._match(stamp_ns, pred, received_ns)
        return None

    def add_prediction(self, stamp_ns: int, labels: np.ndarray, received_ns: int) -> Optional[FrameRecord]:
        """``received_ns`` on the clock of the stamps: latency = received - stamp."""
        if stamp_ns in self._truth:
            return self._match(stamp_ns, labels, received_ns)
        if stamp_ns in self._seen_truth or stamp_ns in self._pending:
            self.duplicate_predictions += 1
            return None
        self._pending[stamp_ns] = (labels, received_ns)
        return None

    def _match(self, stamp_ns: int, pred: np.ndarray, received_ns: int) -> Optional[FrameRecord]:
        truth = self._truth.pop(stamp_ns)
        if pred.shape != truth.shape:
            self.size_mismatches += 1
            return None
        self.cm.update(torch.from_numpy(np.ascontiguousarray(pred)), torch.from_numpy(np.ascontiguousarray(truth)))
        rec = FrameRecord(stamp_ns, (received_ns - stamp_ns) / 1e6, self.cm.miou())
        self.records.append(rec)
        return rec

    @property
    def frames_without_prediction(self) -> int:
        return len(self._truth)

    @property
    def predictions_without_truth(self) -> int:
        return len(self._pending)

    def report(self) -> Dict:
        rep = self.cm.report(self.class_names)
        lat = np.array([r.latency_ms for r in self.records], dtype=np.float64)
        rep.update(
            frames_with_truth=len(self._seen_truth),
            frames_evaluated=len(self.records),
            frames_without_prediction=self.frames_without_prediction,
            predictions_without_truth=self.predictions_without_truth,
            size_mismatches=self.size_mismatches,
            duplicate_predictions=self.duplicate_predictions,
            latency_ms=(
                {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)), "mean": float(lat.mean()), "max": float(lat.max())}
                if lat.size else None
            ),
            confusion_matrix=self.cm.matrix.tolist(),
            frames=[{"stamp_ns": r.stamp_ns, "latency_ms": r.latency_ms, "running_miou": r.running_miou} for r in self.records],
        )
        return rep


def markdown_report(rep: Dict, title: str = "Replay evaluation") -> str:
    lat = rep.get("latency_ms")
    lines = [f"# {title}", ""]
    for key in ("bag", "variant", "backend"):
        if rep.get(key) is not None:
            lines.append(f"- {key}: `{rep[key]}`")
    lines += [
        f"- frames with ground truth: {rep['frames_with_truth']}, evaluated: {rep['frames_evaluated']}, "
        f"without prediction: {rep['frames_without_prediction']}",
        f"- mIoU: **{100 * rep['miou']:.2f} %**" if rep["frames_evaluated"] else "- mIoU: n/a (no frame evaluated)",
    ]
    if rep.get("offline_miou") is not None:
        lines.append(f"- offline mIoU on the same frames: {100 * rep['offline_miou']:.2f} % (equal: {rep['matches_offline']})")
    if lat:
        lines.append(f"- latency stamp -> prediction: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, max {lat['max']:.1f} ms")
    if rep.get("stages_ms"):
        lines += ["", "Per-stage time in the segment node (p50/p95 over the run):", "", stage_table(rep["stages_ms"])]
    if rep.get("plot"):
        lines += ["", f"![latency and running mIoU]({Path(rep['plot']).name})"]
    lines += ["", format_table(rep) if rep["frames_evaluated"] else "", ""]
    return "\n".join(lines)


def plot_stream(rep: Dict, out_path: Path) -> Path:
    """Per-frame latency and running mIoU against frame index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = rep["frames"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([f["latency_ms"] for f in frames], color="tab:blue", lw=1)
    ax.set_xlabel("evaluated frame")
    ax.set_ylabel("latency stamp -> prediction (ms)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot([100 * f["running_miou"] for f in frames], color="tab:red", lw=1)
    ax2.set_ylabel("running mIoU (%)", color="tab:red")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def write_report(rep: Dict, out_dir: str | Path, stem: str = "replay_eval") -> Dict[str, Path]:
    """``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    if rep["frames"]:
        paths["plot"] = plot_stream(rep, out / f"{stem}.png")
        rep["plot"] = str(paths["plot"])
    paths["json"].write_text(json.dumps(rep, indent=2))
    paths["markdown"].write_text(markdown_report(rep))
    return paths
