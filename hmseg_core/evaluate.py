"""Evaluation: confusion-matrix mIoU on a split, no test-time augmentation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .checkpoint import model_from_checkpoint
from .data.datasets import DatasetSpec, SegmentationDataset
from .metrics import ConfusionMatrix, format_table
from .model import resize_to


def preprocess(
    image: np.ndarray, mean: Sequence[float], std: Sequence[float], input_size: Optional[Tuple[int, int]] = None
) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> normalised, contiguous (1, 3, h, w) network input, resized to ``input_size`` if given.

    The arithmetic of ``normalize(to_tensor(image))`` (divide by 255, subtract the mean, divide
    by the std), done in place on one contiguous buffer."""
    x = torch.empty((1, 3, *image.shape[:2]), dtype=torch.float32)
    x[0].copy_(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    x.div_(255.0).sub_(torch.as_tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)).div_(torch.as_tensor(std, dtype=x.dtype).view(1, -1, 1, 1))
    if input_size is not None and tuple(input_size) != tuple(x.shape[-2:]):
        x = resize_to(x, input_size)
    return x


def postprocess(logits: torch.Tensor, size: Sequence[int]) -> np.ndarray:
    """Logits (1, C, h, w) -> class ids uint8 (H, W) at the image size ``size``.

    ``torch.max(..., 1).indices`` rather than ``argmax(1)``: the same first-maximum indices,
    but PyTorch's CPU argmax over the channel dimension of an NCHW tensor is a slow strided
    reduction (32 ms against 2.8 ms for 11 x 360 x 480 on 2 threads, see docs/RESULTS.md)."""
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = resize_to(logits, size)
    return torch.max(logits, 1).indices[0].to(torch.uint8).cpu().numpy()


@torch.no_grad()
def predict(model: torch.nn.Module, image: np.ndarray, mean: Sequence[float], std: Sequence[float], input_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> class ids uint8 (H, W) at the image's own size."""
    p = next(model.parameters())
    x = preprocess(image, mean, std, input_size).to(p.device, p.dtype)
    return postprocess(model(x), image.shape[:2])


def evaluate(
    model: torch.nn.Module,
    dataset: SegmentationDataset,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: Optional[Tuple[int, int]] = None,
    save_dir: Optional[Path] = None,
    palette_spec: Optional[DatasetSpec] = None,
    progress: bool = True,
) -> ConfusionMatrix:
    """Run ``model`` over every image of ``dataset``; optionally write colourised predictions."""
    was_training = model.training
    model.eval()
    spec = palette_spec or dataset.spec
    cm = ConfusionMatrix(spec.num_classes)
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(len(dataset)), desc="eval", unit="img", disable=not progress, leave=False):
        img, lbl = dataset[i]
        pred = predict(model, img, mean, std, input_size)
        cm.update(torch.from_numpy(pred), torch.from_numpy(lbl))
        if save_dir is not None:
            Image.fromarray(spec.colorize(pred)).save(save_dir / f"{dataset.name(i)}.png")
    model.train(was_training)
    return cm


def evaluate_checkpoint(
    checkpoint: str | Path,
    data_root: str | Path,
    split: str = "val",
    layout: Optional[str] = None,
    input_size: Optional[Tuple[int, int]] = None,
    save_dir: Optional[Path] = None,
    report_path: Optional[Path] = None,
    threads: int = 0,
) -> Dict[str, Any]:
    """Evaluate a checkpoint on a data set split and return (and optionally write) a JSON report."""
    if threads:
        torch.set_num_threads(threads)
    model, ckpt = model_from_checkpoint(checkpoint)
    dataset = SegmentationDataset(data_root, split, layout or None)
    if dataset.spec.num_classes != model.num_classes:
        raise ValueError(
            f"{checkpoint}: model predicts {model.num_classes} classes, data set {dataset.layout} has {dataset.spec.num_classes}"
        )
    cm = evaluate(model, dataset, ckpt["mean"], ckpt["std"], input_size, save_dir)
    report = cm.report(ckpt["class_names"])
    report.update(
        checkpoint=str(checkpoint),
        genotype=ckpt["genotype"],
        data_root=str(data_root),
        split=split,
        images=len(dataset),
        input_size=list(input_size) if input_size else None,
        confusion_matrix=cm.matrix.tolist(),
        step=ckpt.get("step"),
    )
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=2))
    return report


__all__ = ["predict", "evaluate", "evaluate_checkpoint", "format_table"]
