"""Where the network runs (resize policy), per-stage timings, and the palette images."""

from __future__ import annotations

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


__all__ = ["ResizePolicy", "Timings", "overlay", "palette_lut"]
