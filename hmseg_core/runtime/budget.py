"""Latency on this machine and the choice of variant for a budget.

:func:`measure_zoo` times every variant of a zoo here, caching results per device fingerprint
(:class:`LatencyCache`); :func:`select_variant` then picks the most accurate variant whose
measured p95 fits a latency budget. :class:`ZooLatencies` makes the same choice measuring only
what it needs: on a new machine each variant costs an export, a TVM compile and a timing of every
backend (~35 s for ``mrms_tiny``), so a node that measured a whole zoo before its first label
would start in minutes.

A variant's network time is not what a node achieves: the node also decodes each frame,
colours the labels and converts its outputs into messages. :func:`measure_overhead` times those
non-network stages here (a callable the node passes, so this module needs no ROS) and
:func:`add_overhead` adds them to every variant's latency before :func:`select_variant` ranks
them, so a budget means "per frame in the node", not "per network call".
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..machine import time_calls
from .backends import AUTO
from .latency import LatencyCache, LatencyStats
from .segmenter import BackendChoice, choose_backend
from .transforms import ResizePolicy
from .zoo import ModelZoo, Variant


@dataclass(frozen=True)
class Measurement:
    """A variant's latency here on the backend it runs on (``choice``: every backend weighed, under ``auto``).

    ``latency`` is what selection ranks by: the network's (the Segmenter's whole ``segment`` call),
    plus ``overhead`` when :func:`add_overhead` added the node's own per-frame stages to it."""

    variant: Variant
    latency: LatencyStats
    cached: bool
    backend: str = "torch"
    choice: Optional[BackendChoice] = None
    overhead: Optional[LatencyStats] = None

    @property
    def network(self) -> LatencyStats:
        """The latency of the Segmenter's call alone (``latency`` less the added overhead)."""
        if self.overhead is None:
            return self.latency
        o, t = self.overhead, self.latency
        return LatencyStats(t.p50 - o.p50, t.p95 - o.p95, t.mean - o.mean, t.samples)


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


def measure_overhead(stages: Callable[[], Any], iterations: int = 10, warmup: int = 2) -> LatencyStats:
    """Milliseconds per call of ``stages``: a node's own work per frame besides the network (decode,
    colour, message conversion), run on a synthetic frame after ``warmup`` untimed calls."""
    return LatencyStats.from_samples(time_calls(stages, iterations, warmup), blocks=3)


def add_overhead(measurements: Sequence[Measurement], overhead: Optional[LatencyStats]) -> List[Measurement]:
    """Each measurement with ``overhead`` added to its latency (p50 to p50, p95 to p95, mean to mean:
    the p95 of a sum is at most about the sum of the p95s, so this errs on the safe side of a budget).
    ``None`` leaves them as they are."""
    if overhead is None:
        return list(measurements)
    out = []
    for m in measurements:
        if m.overhead is not None:
            raise ValueError(f"{m.variant.name}: overhead already added")
        t = m.latency
        total = LatencyStats(t.p50 + overhead.p50, t.p95 + overhead.p95, t.mean + overhead.mean, t.samples)
        out.append(replace(m, latency=total, overhead=overhead))
    return out


def fits_budget(m: Measurement, budget_ms: float) -> bool:
    """Whether ``m``'s p95 meets ``budget_ms`` (``<= 0``: no budget, everything fits)."""
    return budget_ms <= 0 or m.latency.p95 <= budget_ms


def _check_budget(budget_ms: float) -> None:
    if not np.isfinite(budget_ms):
        raise ValueError(f"latency budget must be a finite number of milliseconds, got {budget_ms}")


@dataclass(frozen=True)
class Selection:
    """The variant chosen for a budget; ``fits`` is False when nothing met it (the fastest is used).
    ``candidates`` are the variants measured; ``unmeasured`` those the choice did not need (each
    less accurate than the chosen one, which fits)."""

    measurement: Measurement
    budget_ms: float
    fits: bool
    candidates: Tuple[Measurement, ...] = field(default=())
    unmeasured: Tuple[Variant, ...] = field(default=())

    @property
    def variant(self) -> Variant:
        return self.measurement.variant

    def describe(self) -> str:
        lines = [f"budget {self.budget_ms:g} ms" if self.budget_ms > 0 else "no latency budget"]
        over = self.measurement.overhead
        if over is not None:
            lines[0] += f" (latencies include the node's own stages: p50 {over.p50:.1f} ms, p95 {over.p95:.1f} ms per frame)"
        for m in sorted(self.candidates, key=lambda m: -m.variant.miou):
            mark = "*" if m is self.measurement else " "
            ok = "fits" if fits_budget(m, self.budget_ms) else "too slow"
            net = f" (network p95 {m.network.p95:.1f} ms)" if m.overhead is not None else ""
            lines.append(
                f" {mark} {m.variant.name}: mIoU {100 * m.variant.miou:.1f} %, p50 {m.latency.p50:.1f} ms, "
                f"p95 {m.latency.p95:.1f} ms{net} on {m.backend} ({ok}{', cached' if m.cached else ''})"
            )
        for v in sorted(self.unmeasured, key=lambda v: -v.miou):
            lines.append(f"   {v.name}: mIoU {100 * v.miou:.1f} %, not measured (a more accurate variant fits)")
        return "\n".join(lines)

    def to_dict(self) -> Dict:
        """What the node announces on ``~/variant``."""
        return {
            "variant": self.variant.name,
            "budget_ms": self.budget_ms,
            "fits": self.fits,
            "backend": self.measurement.backend,
            "overhead_p50_ms": None if self.measurement.overhead is None else self.measurement.overhead.p50,
            "overhead_p95_ms": None if self.measurement.overhead is None else self.measurement.overhead.p95,
            "candidates": [
                {"name": m.variant.name, "miou": m.variant.miou, "p50_ms": m.latency.p50, "p95_ms": m.latency.p95, "cached": m.cached,
                 "backend": m.backend, "network_p50_ms": m.network.p50, "network_p95_ms": m.network.p95}
                for m in self.candidates
            ],
            "unmeasured": [{"name": v.name, "miou": v.miou} for v in self.unmeasured],
        }


def select_variant(measurements: Sequence[Measurement], budget_ms: float) -> Selection:
    """Most accurate variant whose p95 fits ``budget_ms`` (ties: the faster); ``budget_ms <= 0``
    means no budget. If none fits, the fastest by p95 with ``fits=False``."""
    if not measurements:
        raise ValueError("no variants to select from")
    _check_budget(budget_ms)
    fitting = [m for m in measurements if fits_budget(m, budget_ms)]
    if fitting:
        best = max(fitting, key=lambda m: (m.variant.miou, -m.latency.p95))
        return Selection(best, budget_ms, True, tuple(measurements))
    return Selection(min(measurements, key=lambda m: m.latency.p95), budget_ms, False, tuple(measurements))


class ZooLatencies:
    """A zoo's variants measured here on demand, each at most once in this object (and once per
    machine with a ``cache``), for :meth:`select`.

    :meth:`select` finds what :func:`select_variant` would find over the whole zoo, measuring the
    variants from the most accurate down and stopping at the first that fits (with any of equal
    mIoU, for the tie rule): with no budget that is one variant; only a budget that nothing meets
    measures them all. Arguments as :func:`measure_zoo`'s; ``overhead`` (the node's own per-frame
    stages, :func:`measure_overhead`) is added to every measurement."""

    def __init__(self, zoo: ModelZoo, *args: Any, overhead: Optional[LatencyStats] = None, **kwargs: Any) -> None:
        self.zoo, self.overhead = zoo, overhead
        self._how = (args, kwargs)  # measure_zoo's arguments after the zoo
        self._measured: Dict[str, Measurement] = {}

    @property
    def measurements(self) -> List[Measurement]:
        """What was measured so far, in the zoo's order."""
        return [self._measured[v.name] for v in self.zoo.variants if v.name in self._measured]

    def measure(self, variant: Variant) -> Measurement:
        """``variant``'s latency here (measured now, or before by this object or the cache)."""
        m = self._measured.get(variant.name)
        if m is None:
            (m,) = measure_zoo(ModelZoo([variant]), *self._how[0], **self._how[1])
            (m,) = add_overhead([m], self.overhead)
            self._measured[variant.name] = m
        return m

    def select(self, budget_ms: float) -> Selection:
        """The most accurate variant whose p95 fits ``budget_ms`` (ties: the faster; ``<= 0``: no
        budget); if none fits, the fastest with ``fits=False``. Measures only what the choice needs."""
        _check_budget(budget_ms)  # before anything is measured
        for v in sorted(self.zoo.variants, key=lambda v: -v.miou):  # stable: the zoo's order among equals
            if fits_budget(self.measure(v), budget_ms):
                for u in self.zoo.variants:
                    if u.miou == v.miou:
                        self.measure(u)  # equal accuracy: the faster of them wins
                break
        sel = select_variant(self.measurements, budget_ms)
        unmeasured = tuple(v for v in self.zoo.variants if v.name not in self._measured)
        return replace(sel, unmeasured=unmeasured)


__all__ = ["Measurement", "Selection", "ZooLatencies", "add_overhead", "fits_budget", "measure_overhead", "measure_zoo", "select_variant"]
