"""Self-describing checkpoints, written atomically.

A checkpoint holds everything needed to rebuild and use the network from the file alone:
genotype string, class names, palette, normalisation, the resolved training config and
progress, next to the weights (and the optimizer state for resuming).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from .genotype import Genotype, GenotypeError
from .io import atomic_write
from .model import HMSegNet, build_model

FORMAT = "hmseg-checkpoint"
VERSION = 1
REQUIRED = ("format", "version", "genotype", "class_names", "palette", "mean", "std", "model")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or not an hmseg checkpoint."""


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` written whole or not at all (:func:`hmseg_core.io.atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


#: Renamed state-dict prefixes, old -> new: checkpoints written before the classifier moved
#: into the segmentation head (``SegmentationHead``) keep loading.
RENAMED_PREFIXES = {"classifier.": "head.classifier."}


def migrate_state_dict(state: Dict[str, Any]) -> Dict[str, Any]:
    """``state`` with the keys of older checkpoints renamed to the network's current ones
    (:data:`RENAMED_PREFIXES`); current keys stay as they are."""
    out = {}
    for key, value in state.items():
        for old, new in RENAMED_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def make_checkpoint(
    model: HMSegNet,
    class_names,
    palette,
    mean,
    std,
    config: Optional[Dict[str, Any]] = None,
    **extra: Any,
) -> Dict[str, Any]:
    state = {k: v for k, v in model.state_dict().items()}
    return {
        "format": FORMAT,
        "version": VERSION,
        "genotype": model.genotype.format(),
        "class_names": list(class_names),
        "palette": [list(map(int, c)) for c in palette],
        "mean": list(map(float, mean)),
        "std": list(map(float, std)),
        "config": config or {},
        "model": state,
        **extra,
    }


#: entries of a training checkpoint that only resuming training needs
TRAINING_STATE = ("optimizer", "scheduler", "scaler")


def inference_checkpoint(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """``ckpt`` as shipped: weights and description only, without the optimizer state and the
    training-only boosting heads (a third of the file and more)."""
    slim = {k: v for k, v in ckpt.items() if k not in TRAINING_STATE}
    slim["model"] = {k: v for k, v in ckpt["model"].items() if not k.startswith("boost.")}
    return slim


def load_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    """Load and validate a checkpoint (weights under the current state-dict keys, :func:`migrate_state_dict`);
    every failure is a :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/corrupt zip archives
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {type(e).__name__}: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an hmseg checkpoint (no 'format': '{FORMAT}' entry)")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')!r}, this hmseg reads version {VERSION}")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    if not isinstance(ckpt["model"], dict):
        raise CheckpointError(f"{path}: 'model' is not a state dict")
    ckpt["model"] = migrate_state_dict(ckpt["model"])
    return ckpt


def model_from_checkpoint(ckpt: Dict[str, Any] | str | os.PathLike, boosting: bool = False) -> Tuple[HMSegNet, Dict[str, Any]]:
    """Rebuild the network (in eval mode) from a checkpoint alone; returns ``(model, checkpoint)``."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    try:
        genotype = Genotype.parse(ckpt["genotype"])
    except GenotypeError as e:
        raise CheckpointError(f"checkpoint genotype is invalid: {e}") from None
    model = build_model(genotype, boosting=boosting)
    state = migrate_state_dict(ckpt["model"])
    if not boosting:
        state = {k: v for k, v in state.items() if not k.startswith("boost.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not match its genotype: {e}") from None
    return model.eval(), ckpt
