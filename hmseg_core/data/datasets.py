"""Segmentation datasets in the CamVid and Cityscapes layouts.

Class names, palette and the raw-label -> train-id mapping travel with the
:class:`DatasetSpec`; inside hmseg every label map uses train ids ``0..C-1`` and
``255`` for pixels that are ignored in training and in mIoU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetError(RuntimeError):
    """A dataset is missing or malformed; the message names the file and what was expected."""


@dataclass(frozen=True)
class DatasetSpec:
    """What a model trained on a dataset needs to know about it."""

    name: str
    class_names: Tuple[str, ...]
    palette: Tuple[Tuple[int, int, int], ...]
    # raw label value -> train id; values not listed map to IGNORE_INDEX
    label_map: Dict[int, int] = field(default_factory=dict, hash=False, compare=False)
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def lut(self) -> np.ndarray:
        """A 256-entry lookup table from raw label values to train ids."""
        table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for raw, train_id in self.label_map.items():
            table[raw] = train_id
        return table

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """Train-id map (H, W) -> RGB image (H, W, 3); ignored pixels are black."""
        pal = np.zeros((256, 3), dtype=np.uint8)
        pal[: self.num_classes] = np.asarray(self.palette, dtype=np.uint8)
        return pal[labels]


CAMVID = DatasetSpec(
    name="camvid",
    class_names=(
        "sky", "building", "pole", "road", "sidewalk", "tree",
        "sign", "fence", "car", "pedestrian", "bicyclist",
    ),
    palette=(
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
        (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    ),
    label_map={i: i for i in range(11)},  # 11 = void -> ignored
)

_CITYSCAPES_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES = DatasetSpec(
    name="cityscapes",
    class_names=(
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
        "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
        "motorcycle", "bicycle",
    ),
    palette=(
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
        (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
        (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ),
    label_map={raw: i for i, raw in enumerate(_CITYSCAPES_IDS)},
)

SPECS: Dict[str, DatasetSpec] = {"camvid": CAMVID, "cityscapes": CITYSCAPES}


def get_spec(name: str) -> DatasetSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset layout {name!r}; known: {', '.join(SPECS)}") from None


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"{path}: missing; expected {what}")


def camvid_pairs(root: Path, split: str) -> List[Tuple[Path, Path]]:
    """``root/<split>/*.png`` with labels in ``root/<split>annot/`` (same file names)."""
    img_dir, lbl_dir = root / split, root / f"{split}annot"
    _require_dir(img_dir, f"a folder of CamVid '{split}' images (layout: <root>/{split}/*.png)")
    _require_dir(lbl_dir, f"a folder of CamVid '{split}' label maps (layout: <root>/{split}annot/*.png)")
    listing = root / f"{split}.txt"
    if listing.is_file():
        names = []
        for n, line in enumerate(listing.read_text().splitlines(), 1):
            if not line.strip():
                continue
            first = line.split()[0]
            names.append(os.path.basename(first))
    else:
        names = sorted(p.name for p in img_dir.glob("*.png"))
    if not names:
        raise DatasetError(f"{img_dir}: no .png images found")
    pairs = []
    for name in names:
        img, lbl = img_dir / name, lbl_dir / name
        if not img.is_file():
            raise DatasetError(f"{img}: listed in {listing.name if listing.is_file() else 'the split'} but missing")
        if not lbl.is_file():
            raise DatasetError(f"{lbl}: missing label map for image {img}")
        pairs.append((img, lbl))
    return pairs


def cityscapes_pairs(root: Path, split: str) -> List[Tuple[Path, Path]]:
    """``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with ``gtFine/.../*_gtFine_labelIds.png``."""
    img_root, lbl_root = root / "leftImg8bit" / split, root / "gtFine" / split
    _require_dir(img_root, f"Cityscapes images (layout: <root>/leftImg8bit/{split}/<city>/*_leftImg8bit.png)")
    _require_dir(lbl_root, f"Cityscapes labels (layout: <root>/gtFine/{split}/<city>/*_gtFine_labelIds.png)")
    pairs = []
    for img in sorted(img_root.glob("*/*_leftImg8bit.png")):
        stem = img.name[: -len("_leftImg8bit.png")]
        lbl = lbl_root / img.parent.name / f"{stem}_gtFine_labelIds.png"
        if not lbl.is_file():
            raise DatasetError(f"{lbl}: missing label map for image {img}")
        pairs.append((img, lbl))
    if not pairs:
        raise DatasetError(f"{img_root}: no '*_leftImg8bit.png' images in any city folder")
    return pairs


_PAIRS = {"camvid": camvid_pairs, "cityscapes": cityscapes_pairs}


def detect_layout(root: Path) -> str:
    """Guess the layout from the folders present."""
    if (root / "leftImg8bit").is_dir():
        return "cityscapes"
    if any((root / f"{s}annot").is_dir() for s in ("train", "val", "test")):
        return "camvid"
    raise DatasetError(
        f"{root}: not a dataset root; expected CamVid (<root>/train, <root>/trainannot) "
        f"or Cityscapes (<root>/leftImg8bit, <root>/gtFine) layout"
    )


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3)."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read image ({e})") from None


def read_label(path: Path, lut: np.ndarray) -> np.ndarray:
    """Single-channel label map -> train ids uint8 (H, W)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DatasetError(f"{path}: label map must be single-channel, got mode {im.mode}")
            raw = np.asarray(im)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read label map ({e})") from None
    if raw.max(initial=0) > 255:
        raise DatasetError(f"{path}: label values must be < 256, found {int(raw.max())}")
    return lut[raw.astype(np.uint8)]


class SegmentationDataset:
    """Image/label pairs of one split, read as uint8 arrays (optionally cached in memory).

    ``dataset[i]`` returns ``(image uint8 (H, W, 3), labels uint8 (H, W))`` in train ids;
    augmentation and normalisation live in :mod:`hmseg_core.data.transforms`.
    """

    def __init__(self, root: str | os.PathLike, split: str, layout: Optional[str] = None, cache: bool = False) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset root does not exist")
        self.layout = layout or detect_layout(self.root)
        self.spec = get_spec(self.layout)
        self.split = split
        self.pairs = _PAIRS[self.layout](self.root, split)
        self._lut = self.spec.lut()
        self._cache: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
        self.cache = cache

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return self.pairs[index][0].stem

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        if index in self._cache:
            return self._cache[index]
        img_path, lbl_path = self.pairs[index]
        img, lbl = read_image(img_path), read_label(lbl_path, self._lut)
        if img.shape[:2] != lbl.shape:
            raise DatasetError(f"{lbl_path}: size {lbl.shape[::-1]} differs from its image {img_path} {img.shape[1::-1]}")
        if self.cache:
            self._cache[index] = (img, lbl)
        return img, lbl

    def preload(self) -> "SegmentationDataset":
        """Decode every pair now (so forked loader workers share the cache)."""
        self.cache = True
        for i in range(len(self)):
            self[i]
        return self

    def class_frequencies(self) -> np.ndarray:
        """Fraction of labelled pixels per class over the split."""
        counts = np.zeros(self.spec.num_classes, dtype=np.int64)
        for i in range(len(self)):
            _, lbl = self[i]
            counts += np.bincount(lbl.ravel(), minlength=256)[: self.spec.num_classes]
        return counts / max(1, counts.sum())


def enet_class_weights(freqs: Sequence[float], c: float = 1.02) -> np.ndarray:
    """ENet's weighting ``1 / ln(c + p_class)``: rare classes (poles, signs) weigh more."""
    return (1.0 / np.log(c + np.asarray(freqs, dtype=np.float64))).astype(np.float32)
