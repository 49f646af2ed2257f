"""Inference backends, by name, in one lazy registry.

A backend runs the network of one model: normalised float ``(1, 3, h, w)`` in, logits
``(1, C, h, w)`` out, both torch tensors (:class:`Backend`). Pre- and post-processing stay in
:class:`~hmseg_core.runtime.segmenter.Segmenter`, so every backend produces labels through the
same resize and argmax. A backend whose compiled model also holds the whole frame
(:class:`hmseg_core.deploy.export.FramePath`: the same normalisation and argmax, compiled with the
network) sets ``frame_size`` to the image size it takes and has ``labels(rgb) -> class ids``.

:data:`BACKENDS` maps a name to ``"module:Class"`` (imported on first use, so naming a backend
costs nothing until it runs) or to a class. To add a backend, write a class with the
constructor ``(model: ModelSource, device: str)`` in a module of this package and add its entry.
A backend that runs model packages only sets ``needs_package = True``: a checkpoint given to it
runs as the package exported from it (:mod:`hmseg_core.runtime.derived`).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Dict, List, Protocol, Union

if TYPE_CHECKING:
    import torch

    from ..source import ModelSource

#: ``backend: auto``: the fastest backend measured here that agrees with torch (:func:`hmseg_core.runtime.segmenter.choose_backend`)
AUTO = "auto"


class BackendUnavailable(RuntimeError):
    """A backend cannot run here: its runtime is not installed, or it needs a model package."""


class Backend(Protocol):
    name: str

    def forward(self, x: "torch.Tensor") -> "torch.Tensor": ...


#: name -> "module:Class" (relative to this package) or a class
BACKENDS: Dict[str, Union[str, type]] = {
    "torch": ".torch_backend:TorchBackend",
    "tvm": ".tvm_backend:TVMBackend",
    "onnxruntime": ".onnxruntime_backend:OnnxRuntimeBackend",
    "openvino": ".openvino_backend:OpenVINOBackend",
    "openvino-bf16": ".openvino_backend:OpenVINOBF16Backend",
}
#: the Python module each backend needs, for :func:`installed`
REQUIRES: Dict[str, str] = {"tvm": "tvm", "onnxruntime": "onnxruntime", "openvino": "openvino", "openvino-bf16": "openvino"}


def backend_names() -> List[str]:
    return sorted(BACKENDS)


def installed(name: str) -> bool:
    """Whether the runtime that backend ``name`` needs is importable here (without importing it)."""
    module = REQUIRES.get(name)
    return module is None or importlib.util.find_spec(module) is not None


def backend_class(name: str) -> type:
    """The class registered as ``name``; ValueError naming the choices for an unknown one."""
    entry = BACKENDS.get(name)
    if entry is None:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(backend_names())}")
    if isinstance(entry, str):
        module, _, cls = entry.partition(":")
        entry = getattr(importlib.import_module(module, __name__), cls)
    return entry


def create_backend(name: str, model: "ModelSource", device: str = "cpu") -> Backend:
    """Backend ``name`` running ``model`` on ``device``."""
    return backend_class(name)(model, device)


def require_package(name: str, model: "ModelSource"):
    """The model package a compiled backend runs; :class:`BackendUnavailable` for a plain checkpoint."""
    if model.package is None:
        raise BackendUnavailable(
            f"the {name} backend runs model packages; export one with `hmseg-core export CHECKPOINT OUT_DIR` "
            "and pass the directory"
        )
    return model.package


__all__ = ["AUTO", "BACKENDS", "Backend", "BackendUnavailable", "backend_class", "backend_names", "create_backend", "installed", "require_package"]
