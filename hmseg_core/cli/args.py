"""Argument types shared by every ``hmseg-core`` command group (and by extensions).

Each is an ``argparse`` ``type=`` callable: it turns one command-line word into a value or
raises :class:`argparse.ArgumentTypeError`, so argparse reports a bad value as a usage error.
Standard library only: building the parser must stay fast.
"""

from __future__ import annotations

import argparse
from typing import Tuple

Size = Tuple[int, int]

#: the smallest side a network input may have (five stride-2 stages)
MIN_SIDE = 16


def size(text: str) -> Size:
    """``"360x480"`` (or ``"360,480"``) -> ``(360, 480)``, height and width each at least 16."""
    try:
        h, w = (int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HxW (e.g. 360x480)") from None
    if h < MIN_SIDE or w < MIN_SIDE:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be >= {MIN_SIDE}")
    return h, w


def sizes(text: str) -> Tuple[Size, int]:
    """``"HxW@CLASSES"`` -> ``((H, W), CLASSES)``; the class count defaults to 19 (Cityscapes)."""
    hw, _, classes = text.partition("@")
    return size(hw), int(classes or 19)


def ratios(text: str) -> Tuple[float, ...]:
    """``"0.4,0.5,0.6"`` -> ``(0.4, 0.5, 0.6)``: resolution ratio choices."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated ratios (e.g. 0.4,0.5,0.6)") from None
