"""What a model path names: a checkpoint file or a model package directory, loaded once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from ..checkpoint import load_checkpoint
from ..deploy.package import METADATA, ModelPackage
from ..io import digest


def is_package(path: str | os.PathLike) -> bool:
    """A model package directory (``hmseg-core export``) rather than a checkpoint file."""
    return Path(path).is_dir() and (Path(path) / METADATA).is_file()


@dataclass
class ModelSource:
    """A model as the runtime runs it: the checkpoint dict (genotype, classes, palette,
    normalisation, weights) and, when it came from a model package, the package (what the
    compiled backends run)."""

    checkpoint: Dict[str, Any]
    package: Optional[ModelPackage] = None
    path: Optional[Path] = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ModelSource":
        """A checkpoint file, or a model package directory (its metadata is checked, its files on use)."""
        path = Path(path)
        if path.is_dir():
            package = ModelPackage.load(path)
            return cls(package.checkpoint(), package, path)
        return cls(load_checkpoint(path), None, path)


def load_model(path: str | os.PathLike) -> Dict[str, Any]:
    """The checkpoint dict of a checkpoint file or of a model package directory."""
    return ModelSource.load(path).checkpoint


def file_digest(path: str | os.PathLike) -> str:
    """Content digest of a checkpoint, or of a package's metadata (which lists every file's SHA-256)."""
    return digest(Path(path) / METADATA if is_package(path) else path, 16)


__all__ = ["ModelSource", "file_digest", "is_package", "load_model"]
