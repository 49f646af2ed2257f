"""Deployment runtime: everything the ROS node needs that does not need ROS, tested on plain Python.

* :mod:`.backends`: inference backends by name (torch, tvm, onnxruntime), one lazy registry;
* :mod:`.source`: a checkpoint file or a model package directory, loaded (:class:`ModelSource`);
* :mod:`.segmenter`: :class:`Segmenter`, RGB in, class ids out, with per-stage timings;
* :mod:`.transforms`: :class:`ResizePolicy`, :class:`Timings`, palette images;
* :mod:`.zoo`: :class:`ModelZoo`, the index of deployable variants;
* :mod:`.latency`: latency statistics, the device fingerprint, the cache of measurements per machine;
* :mod:`.segmenter` also has :func:`choose_backend`: what ``backend: auto`` means (measured here);
* :mod:`.budget`: a zoo's variants measured here (all, or only what a choice needs), and the variant for a budget;
* :mod:`.stream`: :class:`FrameStream`, the newest-frame worker that a node feeds.

This package re-exports the public names of its modules.
"""

from __future__ import annotations

from ..checkpoint import CheckpointError
from .backends import AUTO, BACKENDS, Backend, BackendUnavailable, backend_names, create_backend
from .backends.torch_backend import TorchBackend
from .budget import Measurement, Selection, ZooLatencies, add_overhead, measure_overhead, measure_zoo, select_variant
from .latency import LatencyCache, LatencyStats, device_fingerprint, measure_latency
from .segmenter import AGREEMENT, BackendChoice, BackendTiming, Segmenter, candidate_backends, choose_backend
from .source import ModelSource, file_digest, is_package, load_model
from .stream import FrameStream, StageStats, StreamStats, stage_table
from .transforms import ResizePolicy, Timings, overlay
from .zoo import ModelZoo, Variant, ZooError, default_zoo_path

__all__ = [
    "AGREEMENT", "AUTO", "BACKENDS", "BackendChoice", "BackendTiming", "candidate_backends", "choose_backend", "Backend", "BackendUnavailable", "CheckpointError", "FrameStream", "LatencyCache", "LatencyStats",
    "Measurement", "ModelSource", "ModelZoo", "ResizePolicy", "Segmenter", "Selection", "StreamStats", "Timings",
    "TorchBackend", "Variant", "ZooError", "backend_names", "create_backend", "default_zoo_path", "device_fingerprint",
    "file_digest", "is_package", "load_model", "measure_latency", "measure_zoo", "overlay",
    "select_variant", "add_overhead", "measure_overhead", "StageStats", "stage_table", "ZooLatencies",
]
