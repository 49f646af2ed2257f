"""Registry of named variants: ``create_model("mrms_tiny", num_classes=11)``.

Entries are functions that return a fresh :class:`Genotype`; genotypes are frozen, so a
lookup can never hand out a shared mutable object.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Union

from .genotype import Genotype, GenotypeError, LayerGene
from .model import HMSegNet, build_model

GenotypeFn = Callable[..., Genotype]
_REGISTRY: Dict[str, GenotypeFn] = {}


def register_model(fn: GenotypeFn) -> GenotypeFn:
    """Register a genotype function under its own name."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"model {fn.__name__!r} is already registered")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> List[str]:
    return sorted(_REGISTRY)


def _layers(op: str, channels: int, n: int, stride: int = 1, dilation: int = 1, first_dilation: int | None = None):
    first = LayerGene(op, channels, stride, dilation if first_dilation is None else first_dilation)
    return (first,) + tuple(LayerGene(op, channels, 1, dilation) for _ in range(n - 1))


@register_model
def mrms(num_classes: int = 19, lcf: bool = True, lge: bool = True) -> Genotype:
    """The hand-designed MRMS (paper Fig. 3): MobileNetV2 layers on three resolution branches.

    Stages 1-3 (16/24/32 channels) run at 1/2-1/8 of the input, stage 4 (64, 96) at 1/16 and
    stage 5 (160, 320) at 1/32; stages 4-5 downsample by resolution layers and use dilation 2.
    """
    ir = "ir_k3_e6"
    return Genotype(
        stages=(
            _layers("ir_k3_e1", 16, 1),
            _layers(ir, 24, 2, stride=2),
            _layers(ir, 32, 3, stride=2),
            _layers(ir, 64, 4, dilation=2, first_dilation=1) + _layers(ir, 96, 3, dilation=2),
            _layers(ir, 160, 3, dilation=2, first_dilation=1) + _layers(ir, 320, 1, dilation=2),
        ),
        ratios=(0.5, 0.5),
        num_classes=num_classes,
        width=1.0,
        stem_channels=32,
        head_channels=128,
        lcf=lcf,
        lge=lge,
    )


@register_model
def mrms_tiny(num_classes: int = 19, lcf: bool = True, lge: bool = True) -> Genotype:
    """TinyMRMS: MRMS with half the channels everywhere."""
    return mrms(num_classes, lcf, lge).replace(width=0.5)


#: class count of a registered variant when none is given (Cityscapes)
DEFAULT_CLASSES = 19


def get_genotype(name: str, num_classes: Optional[int] = None, **switches: Any) -> Genotype:
    """Genotype of a registered variant, or parse a genotype string (anything containing '=').

    ``num_classes=None`` means: a registered variant gets :data:`DEFAULT_CLASSES`, a genotype string
    keeps the class count written in it (so a string round-trips unchanged); a number given
    replaces either.
    """
    if "=" in name:
        g = Genotype.parse(name)
        changes = dict(switches)
        if num_classes is not None and num_classes != g.num_classes:
            changes["num_classes"] = num_classes
        return g.replace(**changes) if changes else g
    try:
        fn = _REGISTRY[name]
    except KeyError:
        raise GenotypeError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None
    return fn(num_classes=DEFAULT_CLASSES if num_classes is None else num_classes, **switches)


def create_model(
    name: Union[str, Genotype], num_classes: Optional[int] = None, boosting: bool = True, **switches: Any
) -> HMSegNet:
    """Build a network from a registered name, a genotype string, or a :class:`Genotype`
    (class count as in :func:`get_genotype`; a :class:`Genotype` is built as it is)."""
    g = name if isinstance(name, Genotype) else get_genotype(name, num_classes, **switches)
    return build_model(g, boosting=boosting)
