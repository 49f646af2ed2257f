"""Segmentation loss with intermediate boosting (Eq. 1), class weighting and OHEM."""

from __future__ import annotations

from typing import Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .data.datasets import IGNORE_INDEX


class SegLoss(nn.Module):
    """``L = l_h + w_aux * (l_m + l_l)``; with ``w_aux = 1`` this is the paper's Eq. 1.

    ``ohem_thresh``: keep only pixels whose true-class probability is below the threshold,
    but at least ``ohem_min_kept`` of the hardest pixels per batch (online hard example mining).
    """

    def __init__(
        self,
        class_weights: Optional[torch.Tensor] = None,
        aux_weight: float = 1.0,
        ohem_thresh: Optional[float] = None,
        ohem_min_kept: int = 100_000,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        self.register_buffer("class_weights", class_weights if class_weights is not None else None)
        self.aux_weight, self.ohem_thresh, self.ohem_min_kept = aux_weight, ohem_thresh, ohem_min_kept
        self.ignore_index = ignore_index

    def single(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # bf16 logits from autocast: the loss is always taken in fp32
        pixel = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index, reduction="none")
        valid = target != self.ignore_index
        if self.ohem_thresh is None:
            if self.class_weights is None:
                return pixel.sum() / valid.sum().clamp(min=1)
            w = self.class_weights[target.clamp(max=logits.shape[1] - 1)] * valid
            return pixel.sum() / w.sum().clamp(min=1e-12)
        pixel = pixel[valid]
        if pixel.numel() == 0:
            return logits.sum() * 0.0
        with torch.no_grad():
            prob = torch.softmax(logits, 1).gather(1, target.clamp(max=logits.shape[1] - 1)[:, None])[:, 0][valid]
            hard = prob < self.ohem_thresh
            if int(hard.sum()) < min(self.ohem_min_kept, pixel.numel()):
                k = min(self.ohem_min_kept, pixel.numel())
                hard = torch.zeros_like(hard)
                hard[torch.topk(pixel, k).indices] = True
        return pixel[hard].mean()

    def forward(self, outputs: Union[torch.Tensor, Dict[str, torch.Tensor]], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.single(outputs, target)
        loss = self.single(outputs["out"], target)
        for key, value in outputs.items():
            if key != "out":
                loss = loss + self.aux_weight * self.single(value, target)
        return loss


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, temperature: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """``T² · KL(softmax(teacher / T) || softmax(student / T))`` per pixel, averaged over labelled pixels.

    Knowledge distillation as FasterSeg trains its student (Hinton et al.: the ``T²`` keeps the
    gradient's scale independent of the temperature). Pixels labelled ``ignore_index`` (void) are
    left out, as in the label loss: the teacher's guess there was never supervised. Taken in fp32."""
    log_s = F.log_softmax(student.float() / temperature, 1)
    log_t = F.log_softmax(teacher.float() / temperature, 1)
    kl = (log_t.exp() * (log_t - log_s)).sum(1)
    valid = (target != ignore_index).to(kl.dtype)
    return (kl * valid).sum() / valid.sum().clamp(min=1) * temperature**2
