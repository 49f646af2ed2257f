"""Deployment runtime: a :class:`Segmenter` per model, a model zoo, and latency-budget selection.

Everything the ROS node needs that does not need ROS lives here, so it is tested on plain
Python:

* :class:`Segmenter` loads a checkpoint onto a backend (only ``"torch"`` today; others
  register a factory in :data:`BACKENDS`) and maps RGB uint8 (H, W, 3) to class ids
  uint8 (H, W) at the input's size, with per-stage timings. Its output equals
  :func:`hmseg_core.evaluate.predict` bit for bit, so on-robot and offline mIoU agree.
* :class:`ModelZoo` is an index file of variants (name, checkpoint, validation mIoU).
* :func:`measure_zoo` times every variant on this machine, caching results per device
  fingerprint (:class:`LatencyCache`); :func:`select_variant` then picks the most accurate
  variant whose measured p95 fits a latency budget.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch
import yaml

from .hardware import allocator, cpu_model, retain_freed_memory
from .evaluate import postprocess, preprocess
from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint


class ZooError(ValueError):
    """A model zoo index is missing or malformed; the message names the file and entry."""


# ---------------------------------------------------------------------------- backends
class Backend(Protocol):
    """Runs the network: normalised float (1, 3, h, w) -> logits (1, C, h, w), both torch tensors.

    Pre- and post-processing stay in :class:`Segmenter`, so every backend produces labels
    through the same resize and argmax. A backend whose model also holds the whole frame
    (:class:`hmseg_core.deploy.export.FramePath`: the same normalisation and argmax, compiled
    with the network) sets ``frame_size`` to the image size it takes and has
    ``labels(rgb) -> class ids``; the Segmenter uses it for images of that size.
    """

    name: str

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...


class TorchBackend:
    """PyTorch eager, in inference mode."""

    name = "torch"

    def __init__(self, ckpt: Dict, device: str = "cpu") -> None:
        model, _ = model_from_checkpoint(ckpt)
        self.model = model.eval().to(device)
        self.device = torch.device(device)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device))


class BackendUnavailable(RuntimeError):
    """A backend cannot run this model here (compiled for another target, damaged library, missing runtime)."""


BackendFactory = Callable[[Dict, str], Backend]
# name -> factory(checkpoint dict, device); TVM / ONNX Runtime backends register here.
# Loaded from a model package directory, the checkpoint dict carries it as ckpt["package"].
BACKENDS: Dict[str, BackendFactory] = {"torch": TorchBackend}


def _deploy_factory(name: str) -> BackendFactory:
    def factory(ckpt: Dict, device: str) -> Backend:
        from .deploy import create_backend  # imports tvm / onnxruntime only when used

        return create_backend(name, ckpt, device)

    return factory


BACKENDS.update({name: _deploy_factory(name) for name in ("tvm", "onnxruntime")})
AUTO = "auto"  # a checkpoint runs on torch; a package on its fastest recorded backend here, else tvm


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
    import importlib.util

    from .deploy.package import ModelPackage, PackageError

    try:
        pkg = ModelPackage.load(package)
        size = "x".join(str(int(v)) for v in pkg.input_size)
    except (PackageError, ValueError, TypeError):
        return None
    recorded = {}
    for name in ("tvm", "onnxruntime", "torch"):
        if name != "torch" and importlib.util.find_spec(name) is None:
            continue
        entry = pkg.recorded_latency(device_fingerprint(name, device), size)
        if entry is not None and isinstance(entry.get("median_ms"), (int, float)):
            recorded[name] = float(entry["median_ms"])
    return min(recorded, key=recorded.get) if recorded else None


# ---------------------------------------------------------------------------- resize policy
@dataclass(frozen=True)
class ResizePolicy:
    """Where the network runs: ``native`` (at the camera's size) or ``fixed`` (at ``size``, HxW).

    Either way labels come back at the input image's size (bilinear logits, then argmax).
    """

    mode: str = "native"
    size: Optional[Tuple[int, int]] = None

    def __post_init__(self) -> None:
        if self.mode not in ("native", "fixed"):
            raise ValueError(f"resize policy {self.mode!r}: use 'native' or 'fixed'")
        if self.mode == "fixed":
            if self.size is None or len(self.size) != 2 or min(self.size) < 16:
                raise ValueError(f"resize policy 'fixed' needs a size HxW with both sides >= 16, got {self.size}")
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        elif self.size is not None:
            object.__setattr__(self, "size", None)

    def network_size(self, image_size: Tuple[int, int]) -> Tuple[int, int]:
        return self.size if self.mode == "fixed" else (int(image_size[0]), int(image_size[1]))

    def __str__(self) -> str:
        return f"fixed:{self.size[0]}x{self.size[1]}" if self.mode == "fixed" else "native"


@dataclass
class Timings:
    """Milliseconds spent in each stage of one frame."""

    preprocess: float
    inference: float
    postprocess: float

    @property
    def total(self) -> float:
        return self.preprocess + self.inference + self.postprocess


# ---------------------------------------------------------------------------- segmenter
class Segmenter:
    """A checkpoint loaded for inference: ``labels = segmenter(rgb)``."""

    def __init__(
        self,
        checkpoint: str | os.PathLike | Dict,
        backend: Optional[str] = None,
        resize: ResizePolicy = ResizePolicy(),
        device: str = "cpu",
        name: Optional[str] = None,
        fallback: bool = False,
        whole_frame: bool = True,
    ) -> None:
        """``checkpoint``: a checkpoint file or dict, or a model package directory (``hmseg-core export``).
        ``backend`` (``None`` or ``"auto"``): see :func:`resolve_backend` (a package's fastest recorded backend here,
        else tvm; torch for a checkpoint); with ``fallback``
        a backend that cannot run here (:class:`BackendUnavailable`) is replaced by torch, with a warning.
        ``whole_frame``: let a backend that can run pre-processing, network and argmax in one call do so
        for images of its size (``False`` times the network alone between this class's pre- and post-processing)."""
        retain_freed_memory()
        if backend in (None, AUTO):
            backend = "torch" if isinstance(checkpoint, dict) else resolve_backend(backend, checkpoint, device)
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; available: {', '.join(sorted(BACKENDS))}")
        ckpt = checkpoint if isinstance(checkpoint, dict) else load_model(checkpoint)
        self.source = None if isinstance(checkpoint, dict) else str(checkpoint)
        self.name = name or (Path(self.source).stem if self.source else "model")
        self.backend_name = backend
        try:
            self.backend = BACKENDS[backend](ckpt, device)
        except BackendUnavailable as e:
            if not fallback or backend == "torch":
                raise
            warnings.warn(f"backend {backend!r} unavailable, running on torch instead: {e}", RuntimeWarning, stacklevel=2)
            self.backend_name, self.backend = "torch", BACKENDS["torch"](ckpt, device)
        self.resize = resize
        self.whole_frame = whole_frame
        self.class_names: List[str] = list(ckpt["class_names"])
        self.palette: List[List[int]] = [list(map(int, c)) for c in ckpt["palette"]]
        self.mean, self.std = list(ckpt["mean"]), list(ckpt["std"])
        self.genotype: str = ckpt["genotype"]
        self._palette_lut = np.zeros((256, 3), dtype=np.uint8)
        self._palette_lut[: len(self.palette)] = np.asarray(self.palette, dtype=np.uint8)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return self.segment(rgb)[0]

    def runs_whole_frame(self, size: Sequence[int]) -> bool:
        """Whether an image of ``size`` (H, W) goes through the backend's whole-frame call."""
        size = tuple(size)
        return self.whole_frame and getattr(self.backend, "frame_size", None) == size and tuple(self.resize.network_size(size)) == size

    def segment(self, rgb: np.ndarray) -> Tuple[np.ndarray, Timings]:
        """RGB uint8 (H, W, 3) -> (class ids uint8 (H, W), stage timings).

        When the backend runs the whole frame (:meth:`runs_whole_frame`), all of it is timed as
        inference and the pre- and post-processing times are zero."""
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 (H, W, 3) array, got {getattr(rgb, 'dtype', type(rgb))} {np.shape(rgb)}")
        t0 = time.perf_counter()
        size = rgb.shape[:2]
        if self.runs_whole_frame(size):
            labels = self.backend.labels(rgb)
            return labels, Timings(0.0, 1e3 * (time.perf_counter() - t0), 0.0)
        x = preprocess(rgb, self.mean, self.std, self.resize.network_size(size))
        t1 = time.perf_counter()
        with torch.no_grad():
            logits = self.backend.forward(x)
            t2 = time.perf_counter()
            labels = postprocess(logits, size)
        t3 = time.perf_counter()
        return labels, Timings(1e3 * (t1 - t0), 1e3 * (t2 - t1), 1e3 * (t3 - t2))

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """Class ids (H, W) -> RGB palette image (H, W, 3)."""
        return self._palette_lut[labels]


def overlay(rgb: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a palette image over the camera image (``alpha`` = weight of the palette)."""
    out = rgb.astype(np.float32) * (1.0 - alpha) + color.astype(np.float32) * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- model zoo
@dataclass(frozen=True)
class Variant:
    """One deployable model: a checkpoint and its validation mIoU (0..1), the accuracy to rank by."""

    name: str
    checkpoint: Path
    miou: float


def is_package(path: str | os.PathLike) -> bool:
    """A model package directory (``hmseg-core export``) rather than a checkpoint file."""
    return Path(path).is_dir() and (Path(path) / "metadata.json").is_file()


def load_model(path: str | os.PathLike) -> Dict:
    """The checkpoint dict of a checkpoint file or of a model package directory."""
    if Path(path).is_dir():
        from .deploy.package import ModelPackage

        return ModelPackage.load(path).checkpoint()
    return load_checkpoint(path)


def default_zoo_path() -> Path:
    """The zoo that ships with hmseg (trained CamVid variants)."""
    return Path(__file__).resolve().parent / "zoo" / "zoo.yaml"


@dataclass
class ModelZoo:
    """An index of variants that share one class list.

    File format (YAML or JSON; paths relative to the index file). ``checkpoint`` is a checkpoint
    file or a model package directory (``hmseg-core export``; runs on TVM by default)::

        variants:
          - {name: hmseg, checkpoint: hmseg.pt, miou: 0.743}
          - {name: hmseg_tiny, checkpoint: packages/hmseg_tiny, miou: 0.714}
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
            variants.append(Variant(str(entry["name"]), ckpt, miou))
        return cls(variants, path)

    @classmethod
    def single(cls, checkpoint: str | os.PathLike) -> "ModelZoo":
        """A zoo of one checkpoint or package (its recorded mIoU when present, else 0)."""
        if is_package(checkpoint):
            from .deploy.package import ModelPackage

            miou = (ModelPackage.load(checkpoint).metadata.get("accuracy") or {}).get("miou")
        else:
            miou = load_checkpoint(checkpoint).get("best_miou")
        return cls([Variant(Path(checkpoint).stem, Path(checkpoint), max(0.0, float(miou or 0.0)))])

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        rows = []
        for v in self.variants:
            try:
                ckpt = os.path.relpath(v.checkpoint, path.parent)
            except ValueError:  # another drive on Windows
                ckpt = str(v.checkpoint)
            rows.append({"name": v.name, "checkpoint": ckpt, "miou": v.miou})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump({"variants": rows}, sort_keys=False))
        return path

    def get(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise ZooError(f"no variant {name!r} in {self.path or 'the model zoo'}; variants: {', '.join(v.name for v in self.variants)}")


# ---------------------------------------------------------------------------- latency
def device_fingerprint(backend: str, device: str = "cpu", threads: Optional[int] = None) -> Dict[str, object]:
    """What a latency measurement depends on besides the model: hardware, software, settings."""
    fp: Dict[str, object] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "backend": backend,
        "device": device,
        "threads": int(threads if threads else torch.get_num_threads()),
        "allocator": allocator(),
    }
    if backend == "tvm" and not device.startswith("cuda"):
        # the TVM backend sizes TVM's thread pool to ``threads``; records made before it did so ran
        # on TVM's default of one thread here and no longer match
        fp["tvm_threads"] = fp["threads"]
    if device.startswith("cuda") and torch.cuda.is_available():
        fp["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return fp


def fingerprint_key(fp: Dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def file_digest(path: str | os.PathLike) -> str:
    """Content digest of a checkpoint, or of a package's metadata (which lists every file's SHA-256)."""
    if is_package(path):
        path = Path(path) / "metadata.json"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class LatencyStats:
    """End-to-end :meth:`Segmenter.segment` time per frame, in milliseconds."""

    p50: float
    p95: float
    mean: float
    samples: int

    @classmethod
    def from_samples(cls, ms: Sequence[float]) -> "LatencyStats":
        a = np.asarray(ms, dtype=np.float64)
        if a.size == 0:
            raise ValueError("no latency samples")
        return cls(float(np.percentile(a, 50)), float(np.percentile(a, 95)), float(a.mean()), int(a.size))


def measure_latency(segmenter: Segmenter, size: Tuple[int, int], iterations: int = 20, warmup: int = 3, seed: int = 0) -> LatencyStats:
    """Time ``segmenter`` on a random RGB image of ``size`` (HxW) after ``warmup`` untimed runs."""
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    rgb = np.random.default_rng(seed).integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
    for _ in range(max(0, warmup)):
        segmenter.segment(rgb)
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        segmenter.segment(rgb)
        times.append(1e3 * (time.perf_counter() - t))
    return LatencyStats.from_samples(times)


class LatencyCache:
    """Measured latencies in a JSON file, grouped by device fingerprint.

    Entries are keyed by checkpoint content, image size and resize policy, so retraining
    a checkpoint in place or moving to another machine measures again.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @staticmethod
    def default_path() -> Path:
        root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(root) / "hmseg" / "latency.json"

    def _read(self) -> Dict:
        try:
            doc = json.loads(self.path.read_text())
            return doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            return {}  # a missing or damaged cache only costs a new measurement

    @staticmethod
    def entry_key(checkpoint: Path, size: Tuple[int, int], resize: ResizePolicy) -> str:
        return f"{file_digest(checkpoint)}|{size[0]}x{size[1]}|{resize}"

    def get(self, fp: Dict[str, object], key: str) -> Optional[LatencyStats]:
        entry = self._read().get(fingerprint_key(fp), {}).get("entries", {}).get(key)
        try:
            return LatencyStats(**entry) if entry else None
        except TypeError:
            return None

    def put(self, fp: Dict[str, object], key: str, stats: LatencyStats) -> None:
        doc = self._read()
        group = doc.setdefault(fingerprint_key(fp), {"fingerprint": fp, "entries": {}})
        group["entries"][key] = asdict(stats)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, self.path)


@dataclass(frozen=True)
class Measurement:
    variant: Variant
    latency: LatencyStats
    cached: bool


def measure_zoo(
    zoo: ModelZoo,
    size: Tuple[int, int],
    backend: str = AUTO,
    resize: ResizePolicy = ResizePolicy(),
    device: str = "cpu",
    cache: Optional[LatencyCache] = None,
    iterations: int = 20,
    warmup: int = 3,
    log: Callable[[str], None] = lambda s: None,
) -> List[Measurement]:
    """Latency of every variant at image ``size`` on this machine (from ``cache`` when measured before);
    ``backend`` ``"auto"`` runs each variant on its default backend (:func:`resolve_backend`)."""
    out = []
    for v in zoo.variants:
        fp = device_fingerprint(resolve_backend(backend, v.checkpoint, device), device)
        key = LatencyCache.entry_key(v.checkpoint, size, resize)
        stats = cache.get(fp, key) if cache else None
        cached = stats is not None
        if stats is None:
            log(f"measuring {v.name} at {size[0]}x{size[1]} ({backend}, {iterations} runs)")
            stats = measure_latency(Segmenter(v.checkpoint, backend, resize, device, v.name), size, iterations, warmup)
            if cache:
                cache.put(fp, key, stats)
        out.append(Measurement(v, stats, cached))
    return out


@dataclass(frozen=True)
class Selection:
    """The variant chosen for a budget; ``fits`` is False when nothing met it (the fastest is used)."""

    measurement: Measurement
    budget_ms: float
    fits: bool
    candidates: Tuple[Measurement, ...] = field(default=())

    @property
    def variant(self) -> Variant:
        return self.measurement.variant

    def describe(self) -> str:
        lines = [f"budget {self.budget_ms:g} ms" if self.budget_ms > 0 else "no latency budget"]
        for m in sorted(self.candidates, key=lambda m: -m.variant.miou):
            mark = "*" if m is self.measurement else " "
            ok = "fits" if self.budget_ms <= 0 or m.latency.p95 <= self.budget_ms else "too slow"
            lines.append(
                f" {mark} {m.variant.name}: mIoU {100 * m.variant.miou:.1f} %, p50 {m.latency.p50:.1f} ms, "
                f"p95 {m.latency.p95:.1f} ms ({ok}{', cached' if m.cached else ''})"
            )
        return "\n".join(lines)


def select_variant(measurements: Sequence[Measurement], budget_ms: float) -> Selection:
    """Most accurate variant whose p95 fits ``budget_ms`` (ties: the faster); ``budget_ms <= 0``
    means no budget. If none fits, the fastest by p95 with ``fits=False``."""
    if not measurements:
        raise ValueError("no variants to select from")
    if not np.isfinite(budget_ms):
        raise ValueError(f"latency budget must be a finite number of milliseconds, got {budget_ms}")
    fitting = [m for m in measurements if budget_ms <= 0 or m.latency.p95 <= budget_ms]
    if fitting:
        best = max(fitting, key=lambda m: (m.variant.miou, -m.latency.p95))
        return Selection(best, budget_ms, True, tuple(measurements))
    return Selection(min(measurements, key=lambda m: m.latency.p95), budget_ms, False, tuple(measurements))


def check_same_classes(zoo: ModelZoo) -> List[str]:
    """Class names shared by every variant (a node cannot swap between different label sets)."""
    names: Optional[List[str]] = None
    for v in zoo.variants:
        ckpt_names = list(load_model(v.checkpoint)["class_names"])
        if names is None:
            names = ckpt_names
        elif ckpt_names != names:
            raise ZooError(f"variant {v.name!r} predicts {ckpt_names}, the others {names}; a zoo needs one class list")
    return names or []


__all__ = [
    "AUTO", "BACKENDS", "Backend", "BackendUnavailable", "CheckpointError", "LatencyCache", "LatencyStats", "Measurement", "ModelZoo",
    "ResizePolicy", "Segmenter", "Selection", "Timings", "TorchBackend", "Variant", "ZooError",
    "check_same_classes", "device_fingerprint", "fastest_recorded_backend", "load_model", "resolve_backend", "measure_latency", "measure_zoo", "overlay", "select_variant",
]
