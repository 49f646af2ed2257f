"""Procedural street scenes with exact labels: the built-in default data set.

Used where no real data is at hand (the demo, the tests, a drive for the ROS replay).
Scenes follow the CamVid class list; writers produce the CamVid or the Cityscapes layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import numpy as np
from PIL import Image

from .datasets import CAMVID

# CamVid train ids, by name
SKY, BUILDING, POLE, ROAD, SIDEWALK, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = range(11)
VOID = 11
# the same classes as Cityscapes labelIds (void -> 0 'unlabeled')
CITYSCAPES_RAW = np.array([23, 11, 17, 7, 8, 21, 20, 13, 26, 24, 25, 0], dtype=np.uint8)

_BASE_COLORS = np.array(
    [
        (135, 170, 210), (150, 110, 90), (90, 90, 90), (80, 80, 85), (170, 160, 150), (60, 120, 50),
        (220, 200, 40), (120, 100, 80), (180, 30, 30), (200, 150, 120), (40, 90, 200),
    ],
    dtype=np.float32,
)


def render_street(rng: np.random.Generator, height: int = 360, width: int = 480, shift: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """One street scene: RGB uint8 (H, W, 3) and CamVid train ids uint8 (H, W) with 11 = void.

    ``shift`` slides the scene sideways (in image widths) so consecutive values make a drive.
    """
    h, w = height, width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    lbl = np.full((h, w), SKY, dtype=np.uint8)
    horizon = h * rng.uniform(0.38, 0.5)
    vx = w * (0.5 + rng.uniform(-0.08, 0.08))

    # buildings: a skyline of blocks standing on the horizon line and below it
    x = -w * (shift % 1.0)
    while x < w:
        bw = w * rng.uniform(0.12, 0.3)
        top = h * rng.uniform(0.05, 0.3)
        lbl[(xx >= x) & (xx < x + bw) & (yy >= top) & (yy < horizon + h * 0.08)] = BUILDING
        x += bw + w * rng.uniform(0.0, 0.05)

    # ground: road in a trapezoid to the vanishing point, sidewalks beside it, fences beyond
    below = yy > horizon
    depth = np.clip((yy - horizon) / max(1.0, h - horizon), 0.0, 1.0)
    half_road = depth * w * rng.uniform(0.45, 0.7)
    half_walk = half_road + depth * w * rng.uniform(0.2, 0.35)
    dx = np.abs(xx - vx)
    lbl[below & (dx >= half_walk)] = FENCE
    lbl[below & (dx < half_walk)] = SIDEWALK
    lbl[below & (dx < half_road)] = ROAD

    def at_depth(d: float) -> Tuple[float, float]:
        """Image row and scale for an object standing at relative depth d in (0, 1]."""
        return horizon + d * (h - horizon), d

    # trees and poles (with signs) on the sidewalks
    for _ in range(rng.integers(1, 4)):
        d = rng.uniform(0.15, 0.6)
        base, s = at_depth(d)
        side = rng.choice([-1, 1])
        cx = vx + side * (d * w * 0.6 + d * w * 0.12)
        r = max(3.0, s * h * rng.uniform(0.25, 0.4))
        lbl[(np.abs(xx - cx) < r * 0.12) & (yy < base) & (yy > base - r * 1.6)] = TREE
        lbl[((xx - cx) ** 2 + (yy - (base - r * 1.8)) ** 2) < r**2] = TREE
    for _ in range(rng.integers(1, 4)):
        d = rng.uniform(0.2, 0.9)
        base, s = at_depth(d)
        side = rng.choice([-1, 1])
        cx = vx + side * (d * w * 0.55 + d * w * 0.1)
        ph, pw = s * h * 0.9, max(1.5, s * w * 0.012)
        lbl[(np.abs(xx - cx) < pw) & (yy < base) & (yy > base - ph)] = POLE
        if rng.random() < 0.6:
            sz = max(3.0, s * h * 0.08)
            lbl[(np.abs(xx - cx) < sz) & (np.abs(yy - (base - ph + sz)) < sz * 0.8)] = SIGN

    # road users: cars on the road, pedestrians on the sidewalk, bicyclists at the road edge
    for d in sorted(rng.uniform(0.15, 1.0, size=rng.integers(1, 4))):
        base, s = at_depth(d)
        cx = vx + rng.uniform(-0.35, 0.35) * d * w
        cw, chh = s * w * 0.28, s * h * 0.32
        body = (np.abs(xx - cx) < cw / 2) & (yy < base) & (yy > base - chh)
        lbl[body] = CAR
    for _ in range(rng.integers(0, 3)):
        d = rng.uniform(0.3, 1.0)
        base, s = at_depth(d)
        cx = vx + rng.choice([-1, 1]) * d * w * rng.uniform(0.7, 0.85)
        ph = s * h * 0.55
        lbl[(((xx - cx) / (ph * 0.15)) ** 2 + ((yy - (base - ph / 2)) / (ph / 2)) ** 2) < 1] = PEDESTRIAN
    if rng.random() < 0.5:
        d = rng.uniform(0.4, 1.0)
        base, s = at_depth(d)
        cx = vx + rng.choice([-1, 1]) * d * w * 0.5
        bh = s * h * 0.5
        lbl[(np.abs(xx - cx) < bh * 0.3) & (yy < base) & (yy > base - bh)] = BICYCLIST

    # a few unlabelled patches, as real annotations have
    for _ in range(rng.integers(0, 3)):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, 8)
        lbl[((xx - cx) ** 2 + (yy - cy) ** 2) < r**2] = VOID

    # colours: per-scene tint per class, vertical shading, texture noise
    tint = _BASE_COLORS * rng.uniform(0.8, 1.2, size=(11, 1)).astype(np.float32)
    palette = np.concatenate([tint, rng.uniform(0, 255, size=(1, 3)).astype(np.float32)])
    img = palette[lbl]
    img *= (1.0 - 0.25 * (yy / h))[..., None] if rng.random() < 0.5 else 1.0
    windows = (lbl == BUILDING) & ((xx.astype(int) // 9) % 3 == 0) & ((yy.astype(int) // 11) % 3 == 0)
    img[windows] *= 0.55
    img += rng.normal(0.0, 10.0, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), lbl


def write_dataset(
    root: str | Path,
    layout: str = "camvid",
    splits: Dict[str, int] | None = None,
    size: Tuple[int, int] = (360, 480),
    seed: int = 0,
) -> Path:
    """Write synthetic scenes as a data set in the CamVid or Cityscapes layout; returns ``root``."""
    root = Path(root)
    splits = splits or {"train": 32, "val": 8}
    rng = np.random.default_rng(seed)
    for split, n in splits.items():
        for i in range(n):
            img, lbl = render_street(rng, *size)
            if layout == "camvid":
                name = f"synth_{i:05d}.png"
                paths = root / split / name, root / f"{split}annot" / name
                raw = lbl
            elif layout == "cityscapes":
                stem = f"synth_{i:06d}_000019"
                paths = (
                    root / "leftImg8bit" / split / "synth" / f"{stem}_leftImg8bit.png",
                    root / "gtFine" / split / "synth" / f"{stem}_gtFine_labelIds.png",
                )
                raw = CITYSCAPES_RAW[lbl]
            else:
                raise ValueError(f"unknown layout {layout!r}; use 'camvid' or 'cityscapes'")
            for p in paths:
                p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(paths[0])
            Image.fromarray(raw).save(paths[1])
    return root


assert len(_BASE_COLORS) == CAMVID.num_classes
