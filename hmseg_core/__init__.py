"""hmseg_core: HMSeg networks, search, training, evaluation and deployment (no ROS inside).

The public names below are loaded on first use (PEP 562), so ``import hmseg_core`` (and with it
every ``hmseg_core.*`` import, such as the ``hmseg-core`` command's parser) imports no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

__version__ = "0.1.0"

# public name -> the submodule that defines it
_LAZY: Dict[str, str] = {
    "Genotype": "genotype",
    "GenotypeError": "genotype",
    "LayerGene": "genotype",
    "HMSegNet": "model",
    "build_model": "model",
    "create_model": "registry",
    "get_genotype": "registry",
    "list_models": "registry",
    "register_model": "registry",
}

__all__ = [
    "Genotype", "GenotypeError", "LayerGene", "HMSegNet", "build_model",
    "create_model", "get_genotype", "list_models", "register_model", "__version__",
]

if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from .genotype import Genotype, GenotypeError, LayerGene
    from .model import HMSegNet, build_model
    from .registry import create_model, get_genotype, list_models, register_model


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first access, and keep the value."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
