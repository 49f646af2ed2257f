"""A model loaded for inference: ``labels = segmenter(rgb)``."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Literal, Optional, Sequence, Tuple, Union, overload

import numpy as np
import torch

from ..data.synthetic import render_street
from ..deploy.package import ModelPackage, PackageError
from ..evaluate import postprocess, preprocess
from ..machine import retain_freed_memory
from .backends import AUTO, REQUIRES, BackendUnavailable, backend_class, create_backend, installed
from .latency import LatencyCache, LatencyStats, device_fingerprint, measure_latency
from .derived import can_export, derived_package
from .source import ModelSource, is_package, load_model
from .transforms import ResizePolicy, Timings, enlarge_nearest, fit_pixels, labels_and_confidence, palette_lut, shrink

#: share of labels a backend must give exactly as torch does, on probe street scenes, to stand in
#: for it under ``auto`` (FP32 backends give 100 %; OpenVINO's bf16 about 99 %, so it never does)
AGREEMENT = 0.999


def _network_size(resize: ResizePolicy, size: Optional[Tuple[int, int]]) -> Optional[Tuple[int, int]]:
    """The network's input size for frames of ``size`` (None: the native policy and no size given)."""
    return resize.size if resize.mode == "fixed" else (None if size is None else resize.network_size(size))


def runnable_model(model: str | os.PathLike, backend: str, resize: ResizePolicy = ResizePolicy(),
                   size: Optional[Tuple[int, int]] = None, log: Optional[Callable[[str], None]] = None) -> Path:
    """What ``backend`` runs for ``model``: the model itself, or for a checkpoint file on a compiled
    backend the package exported from it at its network size (the fixed policy's, else ``size``'s)."""
    model = Path(model)
    if not getattr(backend_class(backend), "needs_package", False) or is_package(model) or not model.is_file():
        return model
    network = _network_size(resize, size)
    if network is None:
        raise ValueError(f"{model}: the {backend} backend runs a model package exported at the network's input size; "
                         f"give the frame size, a fixed resize policy, or a package (`hmseg-core export`)")
    if not installed(backend):  # before exporting anything
        raise BackendUnavailable(f"the {backend} backend needs the Python package {REQUIRES[backend]}, which is not installed here")
    if not can_export():
        raise BackendUnavailable(f"{model}: running a checkpoint on {backend} needs its ONNX export: pip install 'hmseg[onnx]'")
    return derived_package(model, network, log)


class Segmenter:
    """RGB uint8 (H, W, 3) -> class ids uint8 (H, W) at the input's size, with per-stage timings,
    and on request each pixel's confidence.

    Its output equals :func:`hmseg_core.evaluate.predict` bit for bit, so on-robot and offline
    mIoU agree (frames over ``max_pixels`` excepted, see :meth:`segment`)."""

    def __init__(
        self,
        checkpoint: str | os.PathLike | Dict,
        backend: Optional[str] = None,
        resize: ResizePolicy = ResizePolicy(),
        device: str = "cpu",
        name: Optional[str] = None,
        fallback: bool = False,
        whole_frame: bool = True,
        latency_cache: Optional[LatencyCache] = None,
        max_pixels: int = 0,
        size: Optional[Tuple[int, int]] = None,
        log: Optional[Callable[[str], None]] = None,
    ) -> None:
        """``checkpoint``: a checkpoint file or dict, or a model package directory (``hmseg-core export``).
        ``backend`` (``None`` or ``"auto"``): the fastest backend measured on this machine whose labels agree
        with torch's (:func:`choose_backend`, at a package's input size, else at ``size``; measured once, then read
        from ``latency_cache``, by default :meth:`LatencyCache.default_path`); torch for a checkpoint given with
        no ``size`` (nor a fixed resize policy). A checkpoint file on a compiled backend (ONNX Runtime, OpenVINO,
        TVM) runs as the package exported from it at its network size (:func:`~.derived.derived_package`,
        cached; ``size`` is the frames' size, needed under the native resize policy; ``log`` hears about a
        first export or compile). With
        ``fallback`` a backend that cannot run here (not installed, or a library that does not fit this
        machine) is replaced by torch, with a warning.
        ``whole_frame``: let a backend that can run pre-processing, network and argmax in one call do so
        for images of its size (``False`` times the network alone between this class's pre- and post-processing).
        ``max_pixels``: the largest frame, in pixels, processed at its own size (0: no limit); a larger
        frame is scaled down first (:meth:`segment`), so one huge frame never costs gigabytes."""
        if max_pixels < 0:
            raise ValueError(f"max_pixels must be >= 0 (0: no limit), got {max_pixels}")
        retain_freed_memory()
        if backend in (None, AUTO):
            package = not isinstance(checkpoint, dict) and is_package(checkpoint)
            frame = ModelPackage.load(checkpoint).input_size if package else (size or _network_size(resize, size))
            if isinstance(checkpoint, dict) or frame is None:
                backend = "torch"
            else:
                cache = latency_cache or LatencyCache(LatencyCache.default_path())
                backend = choose_backend(checkpoint, frame, AUTO, resize, device, cache, log=log or (lambda s: None)).backend
        backend_class(backend)  # an unknown name fails before anything is loaded
        if not isinstance(checkpoint, dict):
            checkpoint = runnable_model(checkpoint, backend, resize, size, log)
        model = ModelSource(checkpoint) if isinstance(checkpoint, dict) else ModelSource.load(checkpoint)
        self.source = None if model.path is None else str(model.path)
        self.name = name or (model.path.stem if model.path else "model")
        self.backend_name = backend
        try:
            self.backend = create_backend(backend, model, device)
        except (BackendUnavailable, PackageError) as e:
            if not fallback or backend == "torch":
                raise
            warnings.warn(f"backend {backend!r} unavailable, running on torch instead: {e}", RuntimeWarning, stacklevel=2)
            self.backend_name, self.backend = "torch", create_backend("torch", model, device)
        self.resize = resize
        self.whole_frame = whole_frame
        self.max_pixels = int(max_pixels)
        ckpt = model.checkpoint
        self.class_names: List[str] = list(ckpt["class_names"])
        self.palette: List[List[int]] = [list(map(int, c)) for c in ckpt["palette"]]
        self.mean, self.std = list(ckpt["mean"]), list(ckpt["std"])
        self.genotype: str = ckpt["genotype"]
        self._palette_lut = palette_lut(self.palette)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return self.segment(rgb)[0]

    def runs_whole_frame(self, size: Sequence[int]) -> bool:
        """Whether an image of ``size`` (H, W) goes through the backend's whole-frame call."""
        size = tuple(size)
        return self.whole_frame and getattr(self.backend, "frame_size", None) == size and tuple(self.resize.network_size(size)) == size

    @overload
    def segment(self, rgb: np.ndarray, confidence: Literal[False] = False) -> Tuple[np.ndarray, Timings]: ...

    @overload
    def segment(self, rgb: np.ndarray, confidence: Literal[True]) -> Tuple[np.ndarray, Timings, np.ndarray]: ...

    def segment(self, rgb: np.ndarray, confidence: bool = False) -> Union[Tuple[np.ndarray, Timings], Tuple[np.ndarray, Timings, np.ndarray]]:
        """RGB uint8 (H, W, 3) -> (class ids uint8 (H, W), stage timings); with ``confidence`` also
        each pixel's confidence in its class, uint8 (H, W), 0-255 (:func:`~.transforms.labels_and_confidence`).

        When the backend runs the whole frame (:meth:`runs_whole_frame`), all of it is timed as
        inference and the pre- and post-processing times are zero. That call gives class ids
        only, so a frame asked for its confidence takes the network path instead (the backend's
        ``forward``, then this class's softmax): the same labels, at the cost of the pre- and
        post-processing that the whole-frame call would have compiled in.

        A frame of more than ``max_pixels`` pixels is first scaled down to fit (aspect ratio kept,
        :func:`~.transforms.fit_pixels`) and processed as a frame of that size; its class ids and
        confidence are then enlarged back by nearest neighbour, so they keep the input's size and
        align with the camera image pixel for pixel, as consumers of a label image expect."""
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 (H, W, 3) array, got {getattr(rgb, 'dtype', type(rgb))} {np.shape(rgb)}")
        t0 = time.perf_counter()
        size = tuple(rgb.shape[:2])
        fit = fit_pixels(size, self.max_pixels)
        if fit != size:
            rgb = shrink(rgb, fit)
        conf = None
        if not confidence and self.runs_whole_frame(fit):
            labels = self.backend.labels(rgb)
            if fit != size:
                labels = enlarge_nearest(labels, size)
            return labels, Timings(0.0, 1e3 * (time.perf_counter() - t0), 0.0)
        x = preprocess(rgb, self.mean, self.std, self.resize.network_size(fit))
        t1 = time.perf_counter()
        with torch.no_grad():
            logits = self.backend.forward(x)
            t2 = time.perf_counter()
            if confidence:
                labels, conf = labels_and_confidence(logits, fit)
            else:
                labels = postprocess(logits, fit)
        if fit != size:
            labels = enlarge_nearest(labels, size)
            conf = None if conf is None else enlarge_nearest(conf, size)
        timings = Timings(1e3 * (t1 - t0), 1e3 * (t2 - t1), 1e3 * (time.perf_counter() - t2))
        return (labels, timings, conf) if confidence else (labels, timings)

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """Class ids (H, W) -> RGB palette image (H, W, 3)."""
        return self._palette_lut[labels]


@dataclass(frozen=True)
class BackendTiming:
    """One backend's latency for one model here, and how often its labels equal torch's
    (``agreement``; None where it was not checked: a backend chosen by name)."""

    backend: str
    latency: LatencyStats
    agreement: Optional[float]
    cached: bool

    @property
    def agrees(self) -> bool:
        return self.agreement is None or self.agreement >= AGREEMENT


@dataclass(frozen=True)
class BackendChoice:
    """The backend :func:`choose_backend` picked, and every candidate it weighed."""

    chosen: BackendTiming
    candidates: Tuple[BackendTiming, ...]

    @property
    def backend(self) -> str:
        return self.chosen.backend

    def describe(self) -> str:
        """One line: every candidate with its median, p95 and agreement; the chosen one marked ``*``."""
        parts = []
        for t in self.candidates:
            agree = "" if t.agreement is None else f", {100 * t.agreement:.2f} % as torch" + ("" if t.agrees else " (disagrees)")
            parts.append(f"{'*' if t is self.chosen else ''}{t.backend} p50 {t.latency.p50:.1f} ms p95 {t.latency.p95:.1f} ms{agree}")
        return "; ".join(parts)


def candidate_backends(model: str | os.PathLike, size: Optional[Tuple[int, int]] = None,
                       resize: ResizePolicy = ResizePolicy()) -> List[str]:
    """The backends ``auto`` weighs for ``model`` on frames of ``size``, where installed: torch;
    onnxruntime and openvino FP32 for a package with ONNX exports, or for a checkpoint file (run as
    the package exported from it at its network size, :func:`runnable_model`; not without a size);
    tvm for a package with a library, or where a library compiled here on first use would be tuned
    (:func:`tvm_compilable`). An untuned library is never compiled for ``auto``: it would be many
    times slower than the others, after minutes of compiling."""
    names = ["torch"]
    if is_package(model):
        package = ModelPackage.load(model)
        network, has_library, has_onnx = package.input_size, bool(package.libraries), package.onnx is not None
        genotype = lambda: package.metadata["genotype"]  # noqa: E731
    else:
        network, has_library, has_onnx = _network_size(resize, size), False, True
        if network is None or not can_export():  # every compiled backend runs the package exported from it
            return names
        genotype = lambda: load_model(model)["genotype"]  # noqa: E731  (read only when TVM is weighed)
    if installed("tvm") and (has_library or tvm_compilable(genotype(), network)):
        names.append("tvm")
    if has_onnx:
        names += [n for n in ("onnxruntime", "openvino") if installed(n)]
    return names


def tvm_compilable(genotype: str, input_size: Tuple[int, int]) -> bool:
    """Whether a TVM library of the network compiled here on first use would be tuned: compiling on
    first use is on, and the tuning records of this CPU's ISA family (shipped with hmseg, or the
    user's) were tuned for ``genotype`` at ``input_size`` (``hmseg-core tune`` notes it in their
    folder: :meth:`hmseg_core.deploy.autotune.Tuner.record_coverage`)."""
    from ..deploy.library_cache import compile_enabled
    from ..deploy.records import covered, default_tuning_db, network_id, record_set
    from ..deploy.targets import host_target
    from ..tensor_layouts import DEFAULT_LAYOUT

    if not compile_enabled():
        return False
    folders = record_set(host_target(), default_tuning_db()).readable()
    return network_id(genotype, input_size, DEFAULT_LAYOUT) in covered(folders)


def _agreement(segmenter: Segmenter, reference: Segmenter, size: Tuple[int, int], scenes: int = 2) -> float:
    rng = np.random.default_rng(0)
    same = total = 0
    for _ in range(scenes):
        rgb, _ = render_street(rng, size[0], size[1])
        a, b = segmenter(rgb), reference(rgb)
        same, total = same + int((a == b).sum()), total + a.size
    return same / total


def choose_backend(
    model: str | os.PathLike,
    size: Tuple[int, int],
    backend: Optional[str] = AUTO,
    resize: ResizePolicy = ResizePolicy(),
    device: str = "cpu",
    cache: Optional[LatencyCache] = None,
    iterations: int = 20,
    warmup: int = 3,
    log: Callable[[str], None] = lambda s: None,
) -> BackendChoice:
    """Measure ``model`` at image ``size`` on this machine and pick its backend.

    ``backend`` ``auto`` (or None) weighs :func:`candidate_backends`: each is timed (whole frame, as the
    node runs it) and its labels compared with torch's on probe street scenes; the fastest by median
    among those that agree (:data:`AGREEMENT`) wins, so an untuned TVM library slower than another
    backend is never picked. A named backend is measured alone. Results are kept in ``cache`` per
    device fingerprint and read from it next time."""
    names = candidate_backends(model, size, resize) if backend in (None, AUTO) else [backend]
    key = LatencyCache.entry_key(model, size, resize)
    weigh = len(names) > 1
    reference: Optional[Segmenter] = None
    timings: List[BackendTiming] = []
    problems: List[str] = []
    for name in names:
        fp = device_fingerprint(name, device)
        entry = cache.get_entry(fp, key) if cache else None  # one read of the cache file per candidate
        stats = LatencyCache.stats_of(entry)
        agreement = 1.0 if name == "torch" else (entry or {}).get("agreement")
        if stats is not None and (agreement is not None or not weigh):
            timings.append(BackendTiming(name, stats, agreement if weigh else None, True))
            continue
        try:
            seg = Segmenter(model, name, resize, device, size=size, log=log)
        except (BackendUnavailable, PackageError) as e:
            if not weigh:
                raise
            problems.append(f"{name}: {e}")
            log(f"backend {name} cannot run {model} here: {e}")
            continue
        log(f"measuring {Path(model).name} on {name} at {size[0]}x{size[1]} ({iterations} runs)")
        stats = measure_latency(seg, size, iterations, warmup)
        if weigh and name != "torch":
            reference = reference or Segmenter(model, "torch", resize, device, size=size)
            agreement = _agreement(seg, reference, size)
        if cache:
            cache.put(fp, key, stats, **({"agreement": agreement} if weigh else {}))
        timings.append(BackendTiming(name, stats, agreement if weigh else None, False))
    eligible = [t for t in timings if t.agrees]
    if not eligible:
        raise BackendUnavailable(f"{model}: no backend runs it here ({'; '.join(problems) or 'none agrees with torch'})")
    return BackendChoice(min(eligible, key=lambda t: t.latency.p50), tuple(timings))


__all__ = ["AGREEMENT", "BackendChoice", "BackendTiming", "Segmenter", "candidate_backends", "choose_backend", "runnable_model", "tvm_compilable"]
