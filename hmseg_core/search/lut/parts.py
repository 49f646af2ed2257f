"""A genotype's inference network cut into parts whose costs add up, and the parts' modules.

The parts are the stem, each backbone layer, the two resolution layers and the head (the
:class:`~hmseg_core.model.SegmentationHead`: fusion, classifier, upsampling to the input size).
A part's cost depends on what it is and on the input shape it sees, so a part is keyed by
exactly that, e.g. ``layer:ir_k5_e3:16>16:s1:d2:23x30``; the shapes seen by the medium and low
branches follow from the upstream resolution choices.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import torch
from torch import nn

from ...genotype import Genotype
from ...model import ResolutionLayer, SegmentationHead
from ...ops import ConvBNAct, build_op
from ..space import SearchSpace

Shape = Tuple[int, int, int]  # (C, H, W), batch 1


def _conv_out(size: int, stride: int) -> int:
    # odd kernels padded by (k-1)//2 * dilation: out = floor((size - 1) / stride) + 1
    return (size - 1) // stride + 1


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def layer_key(op: str, c_in: int, c_out: int, stride: int, dilation: int, hw: Sequence[int]) -> str:
    """Entry key of one backbone layer (channels after the width multiplier)."""
    return f"layer:{op}:{c_in}>{c_out}:s{stride}:d{dilation}:{_fmt(hw)}"


class HeadPart(nn.Module):
    """The network's :class:`~hmseg_core.model.SegmentationHead` at a fixed output size, taking C3,
    C4, C5 as separate tensors: the form a timer runs (and exports) a part in."""

    def __init__(self, genotype: Genotype, in_channels: Sequence[int], size: Tuple[int, int]) -> None:
        super().__init__()
        self.head = SegmentationHead.for_genotype(genotype, in_channels)
        self.size = size

    def forward(self, c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor) -> torch.Tensor:
        return self.head([c3, c4, c5], self.size)


@dataclass(frozen=True)
class Part:
    """One measurable piece of a network: its key, input shapes and a factory for the module."""

    key: str
    kind: str  # stem | layer | resize | head
    inputs: Tuple[Shape, ...]
    build: Callable[[], nn.Module] = field(compare=False, repr=False)


def layer_input_sizes(genotype: Genotype, input_size: Sequence[int]) -> List[Tuple[int, int]]:
    """Spatial size ``(H, W)`` seen by each backbone layer, in :meth:`Genotype.iter_layers` order."""
    hw = (_conv_out(input_size[0], 2), _conv_out(input_size[1], 2))
    sizes = []
    for si, li, _, gene in genotype.iter_layers():
        if li == 0 and si >= 3:  # resolution layer in front of the medium / low branch
            hw = ResolutionLayer.out_size(hw, genotype.ratios[si - 3])
        sizes.append(hw)
        hw = (_conv_out(hw[0], gene.stride), _conv_out(hw[1], gene.stride))
    return sizes


def decompose(genotype: Genotype, input_size: Sequence[int]) -> List[Part]:
    """The parts of ``genotype``'s inference network at ``input_size``; their costs add up."""
    g, (h, w) = genotype, input_size
    stem_c = g.scaled(g.stem_channels)
    parts = [Part(f"stem:{stem_c}:{_fmt((h, w))}", "stem", ((3, h, w),), lambda: ConvBNAct(3, stem_c, 3, stride=2))]
    sizes = layer_input_sizes(g, input_size)
    branch_out: List[Shape] = []
    for (si, li, c_in, gene), hw in zip(g.iter_layers(), sizes):
        cin, cout = g.scaled(c_in), g.scaled(gene.channels)
        if li == 0 and si >= 3:
            prev = branch_out[-1]
            ratio = g.ratios[si - 3]
            parts.append(Part(f"resize:{_fmt(prev)}>{_fmt(hw)}", "resize", (prev,), lambda r=ratio: ResolutionLayer(r)))
        key = layer_key(gene.op, cin, cout, gene.stride, gene.dilation, hw)
        op, s, d = gene.op, gene.stride, gene.dilation
        parts.append(Part(key, "layer", ((cin, *hw),), lambda op=op, a=cin, b=cout, s=s, d=d: build_op(op, a, b, s, d)))
        if li == len(g.stages[si]) - 1 and si >= 2:  # C3, C4, C5
            branch_out.append((cout, _conv_out(hw[0], gene.stride), _conv_out(hw[1], gene.stride)))
    c3, c4, c5 = branch_out
    head_key = (
        f"head:{g.num_classes}:{g.scaled(g.head_channels)}:lcf{int(g.lcf)}:lge{int(g.lge)}:"
        f"{_fmt(c3)}:{_fmt(c4)}:{_fmt(c5)}>{_fmt((h, w))}"
    )
    parts.append(Part(head_key, "head", (c3, c4, c5), lambda: HeadPart(g, (c3[0], c4[0], c5[0]), (h, w))))
    return parts


def space_parts(space: SearchSpace, input_size: Sequence[int]) -> Dict[str, Part]:
    """Every distinct part of every architecture in ``space`` (each layer candidate under each ratio pair)."""
    parts: Dict[str, Part] = {}
    for combo in itertools.product(*(range(len(c)) for c in space.ratio_choices)):
        for k in range(max(len(l.candidates) for l in space.layers)):
            ops = [min(k, len(l.candidates) - 1) for l in space.layers]
            for part in decompose(space.genotype(ops, combo), input_size):
                parts.setdefault(part.key, part)
    return parts


def random_inputs(shapes: Iterable[Shape], seed: int = 0) -> List[torch.Tensor]:
    """Batch-1 normal inputs of the given ``(C, H, W)`` shapes, the same for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, *s, generator=gen) for s in shapes]
