"""Deployment: BN folding, export to TVM and ONNX, model packages, and their runtime backends.

Importing this package imports neither TVM nor ONNX Runtime; the backends do when created.
"""

from __future__ import annotations

from typing import Dict

from ..runtime import Backend, BackendUnavailable


def create_backend(name: str, ckpt: Dict, device: str = "cpu") -> Backend:
    """A ``tvm`` or ``onnxruntime`` backend for a checkpoint dict loaded from a model package."""
    package = ckpt.get("package")
    if package is None:
        raise BackendUnavailable(
            f"the {name} backend runs model packages; export one with `hmseg-core export CHECKPOINT OUT_DIR` "
            "and pass the directory"
        )
    if name == "tvm":
        from .tvm_backend import TVMBackend

        return TVMBackend(package, device)
    if name == "onnxruntime":
        from .onnx_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(package, device)
    raise ValueError(f"unknown deployment backend {name!r}")


__all__ = ["create_backend"]
