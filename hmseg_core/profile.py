"""Hardware-agnostic costs: parameters and multiply-accumulates (MACs)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass on a ``(H, W)`` input, batch 1.

    Counts convolutions and linear layers (>99 % of the arithmetic in this family);
    normalisation, activations and bilinear resizing are not counted. Papers in this field,
    HMSeg included, report this quantity as "FLOPs".
    """
    p = next(model.parameters())
    return count_macs_on(model, [torch.zeros(1, 3, *input_size, dtype=p.dtype, device=p.device)])


@torch.no_grad()
def count_macs_on(model: nn.Module, inputs: Sequence[torch.Tensor]) -> int:
    """Multiply-accumulates of ``model(*inputs)`` (any module, any inputs; counted as in :func:`count_macs`)."""
    total = 0

    def conv_hook(m: nn.Conv2d, inp, out) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, inp, out) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        model(*inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total
