"""hmseg_core: HMSeg networks, search, training, evaluation and deployment (no ROS inside)."""

from .genotype import Genotype, GenotypeError, LayerGene
from .model import HMSegNet, build_model
from .registry import create_model, get_genotype, list_models, register_model

__version__ = "0.1.0"

__all__ = [
    "Genotype", "GenotypeError", "LayerGene", "HMSegNet", "build_model",
    "create_model", "get_genotype", "list_models", "register_model", "__version__",
]
