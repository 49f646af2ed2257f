"""Which backend ``backend: auto`` runs a model on here, and the fingerprint latencies are kept under."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

from ..deploy.package import ModelPackage, PackageError
from ..machine import fingerprint, torch_target
from .backends import AUTO, installed


def device_fingerprint(backend: str, device: str = "cpu", threads: Optional[int] = None) -> Dict[str, object]:
    """:func:`hmseg_core.machine.fingerprint` of ``backend`` on a torch ``device`` string."""
    return fingerprint(backend, torch_target(device), threads)


def resolve_backend(backend: Optional[str], model: str | os.PathLike, device: str = "cpu") -> str:
    """``backend``, or for ``None`` / ``"auto"`` the default for ``model``: torch for a checkpoint; for a package
    directory the backend with the lowest inference latency recorded for this device (``hmseg-core bench
    --record``), else tvm."""
    if backend not in (None, AUTO):
        return backend
    if not Path(model).is_dir():
        return "torch"
    return fastest_recorded_backend(model, device) or "tvm"


def fastest_recorded_backend(package: str | os.PathLike, device: str = "cpu") -> Optional[str]:
    """The installed backend with the lowest median inference time that ``hmseg-core bench --record`` stored in the
    package for this device, thread count and software at the package's input size; None when nothing matches.

    Only the metadata is read: a damaged package fails later, in its backend, with the error that names the fix."""
    try:
        pkg = ModelPackage.load(package)
        size = "x".join(str(int(v)) for v in pkg.input_size)
    except (PackageError, ValueError, TypeError):
        return None
    recorded = {}
    for name in ("tvm", "onnxruntime", "torch"):
        if not installed(name):
            continue
        entry = pkg.recorded_latency(device_fingerprint(name, device), size)
        if entry is not None and isinstance(entry.get("median_ms"), (int, float)):
            recorded[name] = float(entry["median_ms"])
    return min(recorded, key=recorded.get) if recorded else None


__all__ = ["device_fingerprint", "fastest_recorded_backend", "resolve_backend"]
