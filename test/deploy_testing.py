"""Small networks the deployment tests compile (a TVM lowering of a full model takes much longer)."""

import torch
from torch import nn


class TwoConvs(nn.Module):
    """conv 3x3 -> ReLU -> conv 1x1: two kernels, enough for tuning, records and targets."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))
