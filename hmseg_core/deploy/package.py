"""The model package: one directory that a robot needs to run a network.

Layout::

    <package>/
      metadata.json      format version, genotype, classes, palette, normalisation, input size,
                         accuracy, per-library target / TVM version / CPU features, file digests,
                         measured latency per device fingerprint
      checkpoint.pt      the source checkpoint, inference weights only (torch backend)
      params.npz         BN-folded weights in the compiled function's parameter order (TVM)
      model.onnx         the BN-folded network for ONNX Runtime (optional)
      labels.onnx        the whole frame, RGB uint8 in, class ids out, for ONNX Runtime (with model.onnx)
      lib/<target>.so    one compiled TVM library per target: ``main`` (the network) and
                         ``labels`` (the whole frame), each with its ``*_transform_params``

Every file is listed in ``metadata["files"]`` with its SHA-256, so a truncated or replaced
file is reported as such before it is loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..checkpoint import CheckpointError, load_checkpoint
from ..io import atomic_write_json, digest
from ..machine import fingerprint_key

FORMAT = "hmseg-package"
FORMAT_VERSION = 2  # 2: libraries carry main_transform_params, called once at load
METADATA = "metadata.json"
CHECKPOINT = "checkpoint.pt"
PARAMS = "params.npz"
ONNX = "model.onnx"
ONNX_LABELS = "labels.onnx"
FRAME_FUNCTION = "labels"  # a library's whole-frame function: RGB uint8 (1, H, W, 3) -> class ids uint8 (1, H, W)
REQUIRED = ("format", "format_version", "genotype", "class_names", "palette", "mean", "std", "input_size", "files")


class PackageError(ValueError):
    """A model package cannot be used here (missing, damaged, or built for another machine or TVM);
    the message names the file and the fix."""


class ModelPackage:
    """A package directory and its metadata; files are checked against their digests on use."""

    def __init__(self, root: str | os.PathLike, metadata: Dict[str, Any]) -> None:
        self.root = Path(root)
        self.metadata = metadata

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, root: str | os.PathLike) -> "ModelPackage":
        root = Path(root)
        meta_path = root / METADATA
        if not root.is_dir():
            raise PackageError(f"{root}: model package directory not found (create one with `hmseg-core export`)")
        if not meta_path.is_file():
            raise PackageError(f"{meta_path}: missing; not a model package (create one with `hmseg-core export`)")
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as e:
            raise PackageError(f"{meta_path}: not valid JSON ({e}); export the package again") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise PackageError(f"{meta_path}: not an hmseg model package (no 'format': '{FORMAT}')")
        if meta.get("format_version") != FORMAT_VERSION:
            raise PackageError(
                f"{meta_path}: package format version {meta.get('format_version')!r}, this hmseg reads version "
                f"{FORMAT_VERSION}; export the package again with this hmseg, or use the hmseg that wrote it"
            )
        missing = [k for k in REQUIRED if k not in meta]
        if missing:
            raise PackageError(f"{meta_path}: lacks {', '.join(missing)}; export the package again")
        return cls(root, meta)

    def save_metadata(self) -> None:
        atomic_write_json(self.root / METADATA, self.metadata)

    # ------------------------------------------------------------------ files
    def path(self, name: str) -> Path:
        """A package file, verified: it exists and its digest matches the metadata."""
        path = self.root / name
        expected = self.metadata["files"].get(name)
        if expected is None:
            raise PackageError(f"{self.root}: the package lists no file {name!r}; export the package again")
        if not path.is_file():
            raise PackageError(f"{path}: missing from the model package; copy the whole directory or export it again")
        if digest(path) != expected:
            raise PackageError(
                f"{path}: contents do not match the package metadata (truncated or corrupt copy?); "
                "copy the package again or export it again"
            )
        return path

    def add_file(self, name: str) -> None:
        """Record a file written into the package (its digest)."""
        self.metadata["files"][name] = digest(self.root / name)

    # ------------------------------------------------------------------ contents
    @property
    def input_size(self) -> Tuple[int, int]:
        h, w = self.metadata["input_size"]
        return int(h), int(w)

    @property
    def libraries(self) -> List[Dict[str, Any]]:
        return list(self.metadata.get("libraries", []))

    @property
    def onnx(self) -> Optional[Dict[str, Any]]:
        return self.metadata.get("onnx")

    def checkpoint(self) -> Dict[str, Any]:
        """The source checkpoint (what the torch backend runs).

        Metadata wins over the checkpoint for what the package states (classes, palette,
        normalisation), so a package is described by its metadata alone.
        """
        path = self.path(CHECKPOINT)
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as e:
            raise PackageError(f"{e}; export the package again") from None
        for key in ("genotype", "class_names", "palette", "mean", "std"):
            ckpt[key] = self.metadata[key]
        return ckpt

    def record_latency(self, fingerprint: Dict[str, object], key: str, stats: Dict[str, float]) -> None:
        """Store a latency measurement under its device fingerprint (:func:`hmseg_core.machine.fingerprint`)."""
        group = self.metadata.setdefault("latency", {}).setdefault(
            fingerprint_key(fingerprint), {"fingerprint": fingerprint, "entries": {}}
        )
        group["entries"][key] = stats

    def recorded_latency(self, fingerprint: Dict[str, object], key: str) -> Optional[Dict[str, float]]:
        """The measurement :meth:`record_latency` stored under ``fingerprint`` and ``key``, or None."""
        group = (self.metadata.get("latency") or {}).get(fingerprint_key(fingerprint)) or {}
        entry = (group.get("entries") or {}).get(key)
        return entry if isinstance(entry, dict) else None

    def describe(self) -> str:
        m = self.metadata
        libs = ", ".join(f"{lib['target_key']} ({lib.get('tuning', {}).get('trials', 0)} trials)" for lib in self.libraries) or "none"
        acc = m.get("accuracy") or {}
        return (
            f"{self.root}: {m.get('name', '?')} {self.input_size[0]}x{self.input_size[1]}, "
            f"{len(m['class_names'])} classes, TVM libraries: {libs}, ONNX: {'yes' if self.onnx else 'no'}"
            + (f", mIoU {100 * acc['miou']:.1f} %" if acc.get("miou") is not None else "")
        )

