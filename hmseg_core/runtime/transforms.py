"""Where the network runs (resize policy), per-stage timings, and the palette images."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np


@dataclass(frozen=True)
class ResizePolicy:
    """Where the network runs: ``native`` (at the camera's size) or ``fixed`` (at ``size``, HxW).

    Either way labels come back at the input image's size (bilinear logits, then argmax).
    """

    mode: str = "native"
    size: Optional[Tuple[int, int]] = None

    def __post_init__(self) -> None:
        if self.mode not in ("native", "fixed"):
            raise ValueError(f"resize policy {self.mode!r}: use 'native' or 'fixed'")
        if self.mode == "fixed":
            if self.size is None or len(self.size) != 2 or min(self.size) < 16:
                raise ValueError(f"resize policy 'fixed' needs a size HxW with both sides >= 16, got {self.size}")
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        elif self.size is not None:
            object.__setattr__(self, "size", None)

    def network_size(self, image_size: Tuple[int, int]) -> Tuple[int, int]:
        return self.size if self.mode == "fixed" else (int(image_size[0]), int(image_size[1]))

    def __str__(self) -> str:
        return f"fixed:{self.size[0]}x{self.size[1]}" if self.mode == "fixed" else "native"


def fit_pixels(size: Tuple[int, int], max_pixels: int) -> Tuple[int, int]:
    """``size`` (H, W) scaled down, aspect ratio kept, to at most ``max_pixels`` pixels (0: no limit)."""
    h, w = int(size[0]), int(size[1])
    if max_pixels <= 0 or h * w <= max_pixels:
        return h, w
    s = math.sqrt(max_pixels / (h * w))
    fh = max(1, int(h * s))
    fw = max(1, min(int(w * s), max_pixels // fh))
    return max(1, min(fh, max_pixels // fw)), fw


def enlarge_nearest(values: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """A (h, w) map enlarged to ``size`` (H, W) by nearest neighbour (class ids cannot be interpolated)."""
    h, w = values.shape[:2]
    rows = ((2 * np.arange(size[0]) + 1) * h) // (2 * size[0])  # the source pixel under each pixel's centre
    cols = ((2 * np.arange(size[1]) + 1) * w) // (2 * size[1])
    return values[rows[:, None], cols[None, :]]


def shrink(rgb: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """RGB uint8 (H, W, 3) scaled down to ``size`` (H, W): bilinear with antialiasing, still uint8."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0)
    y = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).contiguous().numpy()


def labels_and_confidence(logits, size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Logits (1, C, h, w) -> (class ids uint8 (H, W), confidence uint8 (H, W)) at ``size``.

    The class ids are :func:`hmseg_core.evaluate.postprocess`'s (the same bilinear resize of the
    logits, the same first maximum); the confidence is that class's softmax probability as
    ``round(255 * p)`` with ``p = 1 / sum_c exp(l_c - l_max)``: 255 is certain, ``255 / C`` a
    uniform guess."""
    import torch

    from ..model import resize_to

    if tuple(logits.shape[-2:]) != tuple(size):
        logits = resize_to(logits, size)
    top = torch.max(logits, 1)
    p = torch.exp(logits - top.values.unsqueeze(1)).sum(1).reciprocal_()
    confidence = p.mul_(255.0).round_().clamp_(0, 255)[0].to(torch.uint8)
    return top.indices[0].to(torch.uint8).cpu().numpy(), confidence.cpu().numpy()


@dataclass
class Timings:
    """Milliseconds spent in each stage of one frame."""

    preprocess: float
    inference: float
    postprocess: float

    @property
    def total(self) -> float:
        return self.preprocess + self.inference + self.postprocess


def palette_lut(palette) -> np.ndarray:
    """A (256, 3) uint8 lookup table: class id -> RGB (ids past the palette are black)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return lut


def overlay(rgb: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a palette image over the camera image (``alpha`` = weight of the palette)."""
    out = rgb.astype(np.float32) * (1.0 - alpha) + color.astype(np.float32) * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


__all__ = ["ResizePolicy", "Timings", "enlarge_nearest", "fit_pixels", "labels_and_confidence", "overlay", "palette_lut", "shrink"]
