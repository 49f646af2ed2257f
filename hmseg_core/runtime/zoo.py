"""The model zoo: an index file of deployable variants that share one class list."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from ..checkpoint import load_checkpoint
from ..deploy.package import ModelPackage
from ..io import atomic_write_text
from .source import is_package, load_model


class ZooError(ValueError):
    """A model zoo index is missing or malformed; the message names the file and entry."""


#: the keys every index entry has; any others are kept in :attr:`Variant.extra`
ENTRY_KEYS = ("name", "checkpoint", "miou")


@dataclass(frozen=True)
class Variant:
    """One deployable model: a checkpoint and its validation mIoU (0..1), the accuracy to rank by.

    ``extra``: what else the index says about it (a built zoo records genotype, params, MACs and
    measured latencies), read and written back unchanged; it takes no part in equality."""

    name: str
    checkpoint: Path
    miou: float
    extra: Dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def default_zoo_path() -> Path:
    """The zoo that ships with hmseg (trained CamVid variants)."""
    return Path(__file__).resolve().parent.parent / "zoo" / "zoo.yaml"


@dataclass
class ModelZoo:
    """An index of variants that share one class list.

    File format (YAML or JSON; paths relative to the index file). ``checkpoint`` is a checkpoint
    file or a model package directory (``hmseg-core export``; runs on TVM by default)::

        variants:
          - {name: hmseg, checkpoint: hmseg.pt, miou: 0.743}
          - {name: hmseg_tiny, checkpoint: packages/hmseg_tiny, miou: 0.714, genotype: "...", latency_ms: 9.7}

    Keys beyond ``name``, ``checkpoint`` and ``miou`` are kept as they are (:attr:`Variant.extra`).
    """

    variants: List[Variant]
    path: Optional[Path] = None

    def __post_init__(self) -> None:
        where = self.path or "model zoo"
        if not self.variants:
            raise ZooError(f"{where}: lists no variants")
        names = [v.name for v in self.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ZooError(f"{where}: variant names must be unique, repeated: {', '.join(dup)}")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ModelZoo":
        path = Path(path)
        if not path.is_file():
            raise ZooError(f"{path}: model zoo index not found")
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ZooError(f"{path}: not valid YAML/JSON: {e}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("variants"), list):
            raise ZooError(f"{path}: expected a mapping with a 'variants' list")
        variants = []
        for i, entry in enumerate(doc["variants"]):
            if not isinstance(entry, dict) or not {"name", "checkpoint", "miou"} <= set(entry):
                raise ZooError(f"{path}: variant #{i} needs 'name', 'checkpoint' and 'miou', got {entry!r}")
            try:
                miou = float(entry["miou"])
            except (TypeError, ValueError):
                raise ZooError(f"{path}: variant {entry['name']!r}: miou {entry['miou']!r} is not a number") from None
            if not 0.0 <= miou <= 1.0:
                raise ZooError(f"{path}: variant {entry['name']!r}: miou {miou} must be a fraction in [0, 1]")
            ckpt = Path(entry["checkpoint"])
            ckpt = ckpt if ckpt.is_absolute() else path.parent / ckpt
            if not (ckpt.is_file() or is_package(ckpt)):
                raise ZooError(f"{path}: variant {entry['name']!r}: {ckpt} is neither a checkpoint file nor a model package")
            extra = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
            variants.append(Variant(str(entry["name"]), ckpt, miou, extra))
        return cls(variants, path)

    @classmethod
    def single(cls, checkpoint: str | os.PathLike) -> "ModelZoo":
        """A zoo of one checkpoint or package (its recorded mIoU when present, else 0)."""
        if is_package(checkpoint):
            miou = (ModelPackage.load(checkpoint).metadata.get("accuracy") or {}).get("miou")
        else:
            miou = load_checkpoint(checkpoint).get("best_miou")
        return cls([Variant(Path(checkpoint).stem, Path(checkpoint), max(0.0, float(miou or 0.0)))])

    def save(self, path: str | os.PathLike, comment: str = "") -> Path:
        """The index at ``path`` (atomically), checkpoint paths relative to it; ``comment`` as a first ``#`` line."""
        path = Path(path)
        rows = []
        for v in self.variants:
            try:
                ckpt = os.path.relpath(v.checkpoint, path.parent)
            except ValueError:  # another drive on Windows
                ckpt = str(v.checkpoint)
            rows.append({"name": v.name, "checkpoint": ckpt, "miou": v.miou, **{k: x for k, x in v.extra.items() if k not in ENTRY_KEYS}})
        header = "".join(f"# {line}\n" for line in comment.splitlines())
        return atomic_write_text(path, header + yaml.safe_dump({"variants": rows}, sort_keys=False))

    def get(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise ZooError(f"no variant {name!r} in {self.path or 'the model zoo'}; variants: {', '.join(v.name for v in self.variants)}")

    def class_names(self) -> List[str]:
        """Class names shared by every variant (a node cannot swap between different label sets)."""
        names: Optional[List[str]] = None
        for v in self.variants:
            ckpt_names = list(load_model(v.checkpoint)["class_names"])
            if names is None:
                names = ckpt_names
            elif ckpt_names != names:
                raise ZooError(f"variant {v.name!r} predicts {ckpt_names}, the others {names}; a zoo needs one class list")
        return names or []


__all__ = ["ENTRY_KEYS", "ModelZoo", "Variant", "ZooError", "default_zoo_path"]
