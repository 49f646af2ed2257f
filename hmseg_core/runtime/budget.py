"""Latency on this machine and the choice of variant for a budget.

:func:`measure_zoo` times every variant of a zoo here, caching results per device fingerprint
(:class:`LatencyCache`); :func:`select_variant` then picks the most accurate variant whose
measured p95 fits a latency budget.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..io import atomic_write_json
from ..machine import fingerprint_key, time_calls
from .auto import device_fingerprint, resolve_backend
from .backends import AUTO
from .segmenter import Segmenter
from .source import file_digest
from .transforms import ResizePolicy
from .zoo import ModelZoo, Variant


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
    return LatencyStats.from_samples(time_calls(lambda: segmenter.segment(rgb), iterations, warmup))


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
        atomic_write_json(self.path, doc, indent=1)


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

    def to_dict(self) -> Dict:
        """What the node announces on ``~/variant``."""
        return {
            "variant": self.variant.name,
            "budget_ms": self.budget_ms,
            "fits": self.fits,
            "candidates": [
                {"name": m.variant.name, "miou": m.variant.miou, "p50_ms": m.latency.p50, "p95_ms": m.latency.p95, "cached": m.cached}
                for m in self.candidates
            ],
        }


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


__all__ = ["LatencyCache", "LatencyStats", "Measurement", "Selection", "measure_latency", "measure_zoo", "select_variant"]
