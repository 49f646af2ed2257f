"""Confusion-matrix segmentation metrics (ignore label excluded)."""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch

from .data.datasets import IGNORE_INDEX


class ConfusionMatrix:
    """Accumulates ``matrix[true, pred]`` over pixels whose label is not ``ignore_index``."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred, target = torch.as_tensor(pred).reshape(-1).long(), torch.as_tensor(target).reshape(-1).long()
        if pred.shape != target.shape:
            raise ValueError(f"prediction has {pred.numel()} pixels, target {target.numel()}")
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.numel() and (int(target.max()) >= self.num_classes or int(target.min()) < 0):
            raise ValueError(f"target holds class ids outside [0, {self.num_classes}) besides ignore={self.ignore_index}")
        n = self.num_classes
        self.matrix += torch.bincount(target * n + pred.clamp(0, n - 1), minlength=n * n).reshape(n, n).cpu()

    def all_reduce(self) -> None:
        """Sum the matrix over a torch.distributed process group."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix)

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for classes absent from both target and prediction."""
        m = self.matrix.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan"))).numpy()

    def miou(self) -> float:
        return float(np.nanmean(self.iou())) if not np.all(np.isnan(self.iou())) else float("nan")

    def pixel_accuracy(self) -> float:
        total = int(self.matrix.sum())
        return float(self.matrix.diag().sum()) / total if total else float("nan")

    def report(self, class_names: Sequence[str]) -> Dict:
        iou = self.iou()
        return {
            "miou": self.miou(),
            "pixel_accuracy": self.pixel_accuracy(),
            "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(class_names, iou)},
            "pixels": int(self.matrix.sum()),
        }


def format_table(report: Dict) -> str:
    """Per-class IoU table as Markdown."""
    lines = ["| class | IoU (%) |", "| --- | ---: |"]
    for name, v in report["per_class_iou"].items():
        lines.append(f"| {name} | {'n/a' if v is None else f'{100 * v:.2f}'} |")
    lines.append(f"| **mean** | **{100 * report['miou']:.2f}** |")
    lines.append(f"| pixel accuracy | {100 * report['pixel_accuracy']:.2f} |")
    return "\n".join(lines)
