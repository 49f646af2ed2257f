"""Latency on this machine and the choice of variant for a budget.

:func:`measure_zoo` times every variant of a zoo here, caching results per device fingerprint
(:class:`LatencyCache`); :func:`select_variant` then picks the most accurate variant whose
measured p95 fits a latency budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .backends import AUTO
from .latency import LatencyCache, LatencyStats
from .segmenter import BackendChoice, choose_backend
from .transforms import ResizePolicy
from .zoo import ModelZoo, Variant


@dataclass(frozen=True)
class Measurement:
    """A variant's latency here on the backend it runs on (``choice``: every backend weighed, under ``auto``)."""

    variant: Variant
    latency: LatencyStats
    cached: bool
    backend: str = "torch"
    choice: Optional[BackendChoice] = None


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
    ``backend`` ``"auto"`` runs each variant on the fastest backend whose labels agree with torch's
    (:func:`~hmseg_core.runtime.segmenter.choose_backend`)."""
    out = []
    for v in zoo.variants:
        choice = choose_backend(v.checkpoint, size, backend, resize, device, cache, iterations, warmup, log)
        if len(choice.candidates) > 1:
            log(f"{v.name}: {choice.describe()}")
        out.append(Measurement(v, choice.chosen.latency, choice.chosen.cached, choice.backend, choice))
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
                f"p95 {m.latency.p95:.1f} ms on {m.backend} ({ok}{', cached' if m.cached else ''})"
            )
        return "\n".join(lines)

    def to_dict(self) -> Dict:
        """What the node announces on ``~/variant``."""
        return {
            "variant": self.variant.name,
            "budget_ms": self.budget_ms,
            "fits": self.fits,
            "backend": self.measurement.backend,
            "candidates": [
                {"name": m.variant.name, "miou": m.variant.miou, "p50_ms": m.latency.p50, "p95_ms": m.latency.p95, "cached": m.cached,
                 "backend": m.backend}
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


__all__ = ["Measurement", "Selection", "measure_zoo", "select_variant"]
