"""Batch-norm folding: the deployed network is FP32 convolutions with BN folded into their weights."""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every ``Conv2d`` -> ``BatchNorm2d`` pair fused into one conv.

    Pairs are found as consecutive children of ``nn.Sequential`` containers (how ``ConvBNAct``
    is built). A batch norm that does not follow a conv cannot be folded and is an error, so
    the exported graph never carries a normalisation op.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for conv_name, bn_name in zip(names, names[1:]):
            conv, bn = module._modules[conv_name], module._modules[bn_name]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
                module._modules[bn_name] = nn.Identity()
    left = [name for name, m in folded.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise ValueError(f"batch norm not preceded by a conv, cannot fold: {', '.join(left)}")
    return folded
