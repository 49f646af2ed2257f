"""The one table of candidate operators.

Every searchable layer of the MRMS family picks one entry of :data:`OPS`. Each entry
has the same factory signature ``(c_in, c_out, stride, dilation) -> nn.Module`` so the
builder, the supernet and the latency table all construct layers the same way.

Operator keys:
    ``ir_k{k}_e{e}``  inverted residual (MobileNetV2) with kernel ``k`` and expansion ``e``
    ``skip``          identity; only legal where ``c_in == c_out`` and ``stride == 1``
                      (choosing it removes the layer: that is the depth search)
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
from torch import nn

KERNELS: Tuple[int, ...] = (3, 5, 7)
EXPANSIONS: Tuple[int, ...] = (1, 3, 6)
SKIP = "skip"


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10 %."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


class ConvBNAct(nn.Sequential):
    """Conv2d + BatchNorm + optional ReLU6; the conv has no bias so BN folds into it."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 1,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        padding = (kernel - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, kxk depthwise (strided/dilated), 1x1 linear project."""

    def __init__(self, c_in: int, c_out: int, stride: int, dilation: int, kernel: int, expansion: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.use_residual = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNAct(c_in, hidden, 1))
        layers += [
            ConvBNAct(hidden, hidden, kernel, stride, dilation, groups=hidden),
            ConvBNAct(hidden, c_out, 1, act=False),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class Identity(nn.Module):
    """The ``skip`` operator (kept as a class so it shows by name in module trees)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


OpFactory = Callable[[int, int, int, int], nn.Module]


def _ir(kernel: int, expansion: int) -> OpFactory:
    def factory(c_in: int, c_out: int, stride: int, dilation: int) -> nn.Module:
        return InvertedResidual(c_in, c_out, stride, dilation, kernel, expansion)

    return factory


def _skip(c_in: int, c_out: int, stride: int, dilation: int) -> nn.Module:
    if c_in != c_out or stride != 1:
        raise ValueError(f"'skip' needs c_in == c_out and stride 1, got c_in={c_in}, c_out={c_out}, stride={stride}")
    return Identity()


OPS: Dict[str, OpFactory] = {f"ir_k{k}_e{e}": _ir(k, e) for e in EXPANSIONS for k in KERNELS}
OPS[SKIP] = _skip

#: Operator keys in table order (the supernet's alpha vectors follow this order).
OP_NAMES: Tuple[str, ...] = tuple(OPS)


def op_allowed(op: str, c_in: int, c_out: int, stride: int) -> bool:
    """Whether ``op`` may be used for a layer with this shape (identity needs equal shapes)."""
    if op not in OPS:
        return False
    return op != SKIP or (c_in == c_out and stride == 1)


def candidate_ops(c_in: int, c_out: int, stride: int, allow_skip: bool = True) -> Tuple[str, ...]:
    """Operator keys legal for a layer: every inverted residual, plus ``skip`` where shapes allow."""
    return tuple(
        op for op in OP_NAMES if op_allowed(op, c_in, c_out, stride) and (allow_skip or op != SKIP)
    )


def build_op(op: str, c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Module:
    """Instantiate one operator of the table."""
    try:
        factory = OPS[op]
    except KeyError:
        raise ValueError(f"unknown operator {op!r}; allowed: {', '.join(OP_NAMES)}") from None
    return factory(c_in, c_out, stride, dilation)
