"""Genotype -> nn.Module: the MRMS encoder, the segmentation head (LCF/LGE) and the boosting heads.

Data flow (paper Fig. 3)::

    image ─ stem(s2) ─ stage1 ─ stage2 ─ stage3 ──────────────────────────── C3  (high branch)
                                            └ resize(r_m) ─ stage4 (dilated) ─ C4  (medium branch)
                                                               └ resize(r_l) ─ stage5 (dilated) ─ C5  (low)
    head:  LCF( C3 + up(C4) + up(LGE(C5)) + GAP(C5) ) ─ classifier ─ up to the input size
    training only:  boosting heads on C4 and C5 (loss l_h + l_m + l_l, Eq. 1)

The branches are one network: each branch consumes the previous branch's features
(shared weights, reused features), not a downscaled copy of the image.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .genotype import Genotype
from .ops import ConvBNAct, build_op

ModelOutput = Union[torch.Tensor, Dict[str, torch.Tensor]]


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ResolutionLayer(nn.Module):
    """Downsamples a branch's input by a fixed ratio (bilinear; 0.5 equals 2x2 averaging)."""

    def __init__(self, ratio: float) -> None:
        super().__init__()
        self.ratio = float(ratio)

    @staticmethod
    def out_size(size: Sequence[int], ratio: float) -> tuple:
        return tuple(max(1, int(s * ratio + 0.5)) for s in size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ratio == 1.0:
            return x
        return resize_to(x, self.out_size(x.shape[-2:], self.ratio))

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}"


class DWSepConv(nn.Sequential):
    """Depthwise-separable conv: kxk depthwise + 1x1 pointwise, each with BN + ReLU6."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3) -> None:
        super().__init__(ConvBNAct(c_in, c_in, kernel, groups=c_in), ConvBNAct(c_in, c_out, 1))


class MRMSEncoder(nn.Module):
    """Multi-resolution backbone; ``forward`` returns ``[C3, C4, C5]``, ``out_channels`` their channels."""

    def __init__(self, genotype: Genotype) -> None:
        super().__init__()
        g = genotype
        self.stem = ConvBNAct(3, g.scaled(g.stem_channels), 3, stride=2)
        stages: List[List[nn.Module]] = [[] for _ in g.stages]
        for si, _, c_in, layer in g.iter_layers():
            stages[si].append(build_op(layer.op, g.scaled(c_in), g.scaled(layer.channels), layer.stride, layer.dilation))
        self.high = nn.Sequential(*(nn.Sequential(*s) for s in stages[:3]))
        self.res_medium = ResolutionLayer(g.ratios[0])
        self.medium = nn.Sequential(*stages[3])
        self.res_low = ResolutionLayer(g.ratios[1])
        self.low = nn.Sequential(*stages[4])
        self.out_channels = tuple(g.scaled(c) for c in g.stage_channels[2:])

    def layers(self) -> List[nn.Module]:
        """The backbone layers in :meth:`Genotype.iter_layers` order (the stem not included)."""
        return [layer for stage in (*self.high, self.medium, self.low) for layer in stage]

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        c3 = self.high(self.stem(x))
        c4 = self.medium(self.res_medium(c3))
        c5 = self.low(self.res_low(c4))
        return [c3, c4, c5]


class LGE(nn.Module):
    """Lightweight Global Enhancement: global average pooling + channel attention."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


class SegmentationHead(nn.Module):
    """Features ``[C3, C4, C5]`` -> logits at the input size: LCF fusion (by addition) with LGE on
    the upper (C5) branch, the classifier, and the upsampling.

    ``lcf=False`` falls back to the plain fusion of the paper's Table 4 (a)/(b): C3 plus the
    upsampled C5, no C4, no global context, no fusion conv. The final network, the supernet and
    the latency table's head part are all this module.
    """

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int, lcf: bool = True, lge: bool = True) -> None:
        super().__init__()
        c3, c4, c5 = in_channels
        self.proj_high = ConvBNAct(c3, channels, 1)
        self.proj_low = DWSepConv(c5, channels) if lcf else ConvBNAct(c5, channels, 1)
        self.lge = LGE(channels) if lge else None
        self.lcf = lcf
        if lcf:
            self.proj_medium = DWSepConv(c4, channels)
            # Global context: runs on a 1x1 map, so no BatchNorm (undefined for batch size 1).
            self.proj_global = nn.Sequential(nn.Conv2d(c5, channels, 1), nn.ReLU6(inplace=True))
            self.fuse = DWSepConv(channels, channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    @classmethod
    def for_genotype(cls, genotype: Genotype, in_channels: Sequence[int]) -> "SegmentationHead":
        """The head ``genotype`` asks for (width-scaled channels, classes, LCF/LGE switches) on ``in_channels``."""
        g = genotype
        return cls(in_channels, g.scaled(g.head_channels), g.num_classes, g.lcf, g.lge)

    def forward(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        c3, c4, c5 = features
        fused_size = c3.shape[-2:]
        upper = self.proj_low(c5)
        if self.lge is not None:
            upper = self.lge(upper)
        x = self.proj_high(c3) + resize_to(upper, fused_size)
        if self.lcf:
            x = x + resize_to(self.proj_medium(c4), fused_size) + self.proj_global(c5.mean((2, 3), keepdim=True))
            x = self.fuse(x)
        return resize_to(self.classifier(x), size)


class BoostingHead(nn.Sequential):
    """Auxiliary classifier on an intermediate branch (training only)."""

    def __init__(self, c_in: int, channels: int, num_classes: int) -> None:
        super().__init__(DWSepConv(c_in, channels), nn.Conv2d(channels, num_classes, 1))

    @property
    def classifier(self) -> nn.Conv2d:
        return self[-1]


class BoostingHeads(nn.ModuleDict):
    """The boosting heads on C4 (``aux_medium``) and C5 (``aux_low``); their logits at the input size."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int) -> None:
        _, c4, c5 = in_channels
        super().__init__({"aux_medium": BoostingHead(c4, channels, num_classes), "aux_low": BoostingHead(c5, channels, num_classes)})

    @classmethod
    def for_genotype(cls, genotype: Genotype, in_channels: Sequence[int]) -> "BoostingHeads":
        return cls(in_channels, genotype.scaled(genotype.head_channels), genotype.num_classes)

    def forward(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> Dict[str, torch.Tensor]:
        _, c4, c5 = features
        return {"aux_medium": resize_to(self["aux_medium"](c4), size), "aux_low": resize_to(self["aux_low"](c5), size)}


class HMSegNet(nn.Module):
    """A network of the MRMS family, built from its genotype alone: encoder + segmentation head
    (+ boosting heads in training).

    In training mode with ``boosting=True`` the forward pass returns
    ``{"out": logits, "aux_medium": ..., "aux_low": ...}`` (all at the input size); in eval
    mode it returns the logits tensor ``(N, classes, H, W)`` and the boosting heads never run.
    """

    def __init__(self, genotype: Genotype, boosting: bool = True) -> None:
        super().__init__()
        self.genotype = genotype
        self.encoder = MRMSEncoder(genotype)
        self.head = SegmentationHead.for_genotype(genotype, self.encoder.out_channels)
        self.boost = BoostingHeads.for_genotype(genotype, self.encoder.out_channels) if boosting else None
        init_weights(self)

    @property
    def num_classes(self) -> int:
        return self.genotype.num_classes

    def forward(self, x: torch.Tensor) -> ModelOutput:
        size = x.shape[-2:]
        features = self.encoder(x)
        logits = self.head(features, size)
        if not (self.training and self.boost is not None):
            return logits
        return {"out": logits, **self.boost(features, size)}

    def for_inference(self) -> "HMSegNet":
        """An eval-mode copy without the training-only boosting heads (what export sees)."""
        net = copy.deepcopy(self)
        net.boost = None
        return net.eval()


def init_weights(module: nn.Module) -> None:
    """He-normal convolutions and identity BatchNorm throughout ``module``, then small classifiers
    (segmentation and boosting heads): every class starts near equal probability."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, (SegmentationHead, BoostingHead)):
            nn.init.normal_(m.classifier.weight, std=0.01)


def build_model(genotype: Genotype, boosting: bool = True) -> HMSegNet:
    """The one builder: genotype -> network."""
    return HMSegNet(genotype, boosting=boosting)
