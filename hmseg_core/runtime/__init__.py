"""Deployment runtime: everything the ROS node needs that does not need ROS, tested on plain Python.

* :mod:`.backends`: inference backends by name (torch, tvm, onnxruntime), one lazy registry;
* :mod:`.source`: a checkpoint file or a model package directory, loaded (:class:`ModelSource`);
* :mod:`.segmenter`: :class:`Segmenter`, RGB in, class ids out, with per-stage timings;
* :mod:`.transforms`: :class:`ResizePolicy`, :class:`Timings`, palette images;
* :mod:`.zoo`: :class:`ModelZoo`, the index of deployable variants;
* :mod:`.auto`: what ``backend: auto`` means here, and the device fingerprint;
* :mod:`.budget`: latency measured here (cached per fingerprint) and the variant for a budget;
* :mod:`.stream`: :class:`FrameStream`, the newest-frame worker that a node feeds.

This package re-exports the public names of its modules.
"""

from __future__ import annotations

from ..checkpoint import CheckpointError
from .auto import device_fingerprint, fastest_recorded_backend, resolve_backend
from .backends import AUTO, BACKENDS, Backend, BackendUnavailable, backend_names, create_backend
from .backends.torch_backend import TorchBackend
from .budget import LatencyCache, LatencyStats, Measurement, Selection, measure_latency, measure_zoo, select_variant
from .segmenter import Segmenter
from .source import ModelSource, file_digest, is_package, load_model
from .stream import FrameStream, StreamStats
from .transforms import ResizePolicy, Timings, overlay
from .zoo import ModelZoo, Variant, ZooError, default_zoo_path

__all__ = [
    "AUTO", "BACKENDS", "Backend", "BackendUnavailable", "CheckpointError", "FrameStream", "LatencyCache", "LatencyStats",
    "Measurement", "ModelSource", "ModelZoo", "ResizePolicy", "Segmenter", "Selection", "StreamStats", "Timings",
    "TorchBackend", "Variant", "ZooError", "backend_names", "create_backend", "default_zoo_path", "device_fingerprint",
    "fastest_recorded_backend", "file_digest", "is_package", "load_model", "measure_latency", "measure_zoo", "overlay",
    "resolve_backend", "select_variant",
]
