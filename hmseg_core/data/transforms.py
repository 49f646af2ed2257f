"""Training augmentation and evaluation preprocessing, in torch, driven by explicit seeds.

Every random choice of a training sample comes from a generator seeded by
``(seed, epoch, index)``, so a resumed run sees exactly the samples an uninterrupted run
would have seen, whatever the number of loader workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import IGNORE_INDEX


def seeded_generator(*keys: int) -> torch.Generator:
    g = torch.Generator()
    seed = 0
    for k in keys:
        seed = (seed * 1_000_003 + int(k) + 0x9E3779B9) % (2**63 - 1)
    g.manual_seed(seed)
    return g


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - m) / s


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


@dataclass
class TrainTransform:
    """Random scale, pad + random crop, horizontal flip, photometric jitter, normalisation."""

    crop: Tuple[int, int] = (360, 480)
    scale: Tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    jitter: float = 0.25
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)

    def __call__(self, img: np.ndarray, lbl: np.ndarray, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        x = to_tensor(img)
        y = torch.from_numpy(np.ascontiguousarray(lbl))[None, None].float()
        s = _uniform(gen, *self.scale)
        h, w = x.shape[-2:]
        size = (max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5)))
        if size != (h, w):
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
            y = F.interpolate(y, size=size, mode="nearest")
        y = y[0, 0].to(torch.uint8)
        ch, cw = self.crop
        ph, pw = max(0, ch - size[0]), max(0, cw - size[1])
        if ph or pw:
            # pad the image with the mean colour (0 after normalisation) and labels with ignore
            x = F.pad(x - torch.as_tensor(self.mean).view(3, 1, 1), (0, pw, 0, ph)) + torch.as_tensor(self.mean).view(3, 1, 1)
            y = F.pad(y, (0, pw, 0, ph), value=IGNORE_INDEX)
        top = int(torch.randint(0, x.shape[1] - ch + 1, (), generator=gen))
        left = int(torch.randint(0, x.shape[2] - cw + 1, (), generator=gen))
        x, y = x[:, top : top + ch, left : left + cw], y[top : top + ch, left : left + cw]
        if self.flip and float(torch.rand((), generator=gen)) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if self.jitter > 0:
            j = self.jitter
            x = x * _uniform(gen, 1 - j, 1 + j)  # brightness
            gray = x.mean()
            x = (x - gray) * _uniform(gen, 1 - j, 1 + j) + gray  # contrast
            lum = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
            x = (x - lum) * _uniform(gen, 1 - j, 1 + j) + lum  # saturation
            x = x.clamp_(0.0, 1.0)
        return normalize(x.contiguous(), self.mean, self.std), y.long().contiguous()


@dataclass
class EvalTransform:
    """Deterministic: normalisation only (labels stay at their native size)."""

    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)

    def __call__(self, img: np.ndarray, lbl: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        return normalize(to_tensor(img), self.mean, self.std), torch.from_numpy(np.ascontiguousarray(lbl)).long()


class TrainView(torch.utils.data.Dataset):
    """Indexable by ``(index, epoch)``: augments sample ``index`` with its own seeded generator.

    ``early``: ``(epochs, transform)``, a transform for the first ``epochs`` epochs (smaller crops:
    cheaper steps while the network learns coarse structure); ``transform`` afterwards.
    """

    def __init__(self, dataset, transform: TrainTransform, seed: int, early: Optional[Tuple[int, TrainTransform]] = None) -> None:
        self.dataset, self.transform, self.seed, self.early = dataset, transform, seed, early

    def __len__(self) -> int:
        return len(self.dataset)

    def transform_at(self, epoch: int) -> TrainTransform:
        return self.early[1] if self.early is not None and epoch < self.early[0] else self.transform

    def __getitem__(self, key: Tuple[int, int]):
        index, epoch = key
        img, lbl = self.dataset[index]
        return self.transform_at(epoch)(img, lbl, seeded_generator(self.seed, epoch, index))


class EvalView(torch.utils.data.Dataset):
    def __init__(self, dataset, transform: EvalTransform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.transform(*self.dataset[index])


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of ``(index, epoch)`` for one epoch, shuffled by ``(seed, epoch)``, sharded by rank.

    Each optimizer step consumes ``batch_size * world_size`` samples; rank ``r`` takes its
    slice. ``start_step`` skips the steps already taken (resume in the middle of an epoch).
    """

    def __init__(self, n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world_size: int = 1, start_step: int = 0) -> None:
        self.n, self.batch_size, self.epoch, self.seed = n, batch_size, epoch, seed
        self.rank, self.world_size, self.start_step = rank, world_size, start_step

    @staticmethod
    def steps_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
        return n // (batch_size * world_size)

    def __len__(self) -> int:
        return self.steps_per_epoch(self.n, self.batch_size, self.world_size) - self.start_step

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        perm = torch.randperm(self.n, generator=seeded_generator(self.seed, self.epoch)).tolist()
        global_batch = self.batch_size * self.world_size
        for step in range(self.start_step, self.steps_per_epoch(self.n, self.batch_size, self.world_size)):
            chunk = perm[step * global_batch : (step + 1) * global_batch]
            mine = chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            yield [(i, self.epoch) for i in mine]
