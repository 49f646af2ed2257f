"""PyTorch eager, in inference mode: runs a checkpoint or a package's source checkpoint."""

from __future__ import annotations

import torch

from ...checkpoint import model_from_checkpoint
from ..source import ModelSource


class TorchBackend:
    name = "torch"

    def __init__(self, model: ModelSource, device: str = "cpu") -> None:
        net, _ = model_from_checkpoint(model.checkpoint)
        self.model = net.eval().to(device)
        self.device = torch.device(device)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device))
