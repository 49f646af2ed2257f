"""The latency table: every part of a search space measured on the target, in a versioned file.

Each entry holds the median latency (ms) over repeated runs after warm-up, measured by a
:class:`~hmseg_core.search.lut.timers.Timer`, plus MACs and parameters as hardware-agnostic
costs; a genotype's predicted cost is the sum of its parts' entries (:meth:`LatencyTable.predict`).

Parts timed one by one add up to less than the whole network takes: in isolation a part's
input and weights stay in cache, and the glue between parts (the head's concatenation,
allocation of intermediate tensors) is nowhere in the sum. The table therefore carries a
latency **calibration** ``measured ≈ scale · Σ parts``, the median ratio over a few random
architectures of the space measured end to end while the table is built (:class:`Calibration`);
:meth:`LatencyTable.predict` and the search's expected cost apply it. MACs and parameters add
up exactly and are never calibrated. The table is a JSON file with the fingerprint of the
device it was measured on (:func:`hmseg_core.machine.fingerprint`); loading it on a different
device, or looking up a part it does not hold, raises :class:`LUTError`.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ...genotype import Genotype
from ...io import atomic_write_json
from ...machine import IDENTITY_FIELDS
from ...model import build_model
from ...profile import count_macs_on, count_params
from ..space import SearchSpace
from .parts import decompose, random_inputs, space_parts
from .timers import Timer

FORMAT = "hmseg-latency-table"
VERSION = 1
METRICS = ("latency_ms", "macs", "params")


class LUTError(ValueError):
    """A latency table is unreadable, from another device, or lacks an entry."""


@dataclass(frozen=True)
class Calibration:
    """``measured ≈ scale · Σ parts + offset_ms``, fitted on ``rows`` (genotype, sum of parts, measured)."""

    scale: float = 1.0
    offset_ms: float = 0.0
    rows: Tuple[Tuple[str, float, float], ...] = ()

    def apply(self, raw_ms: float) -> float:
        return self.scale * raw_ms + self.offset_ms

    @classmethod
    def fit(cls, rows: Sequence[Tuple[str, float, float]]) -> "Calibration":
        """``scale`` = the median of measured / sum-of-parts over the rows, no offset.

        On a shared machine a few end-to-end measurements land in a slow spell; a least-squares
        line through ten points follows them (offsets of several ms either way were seen), the
        median ratio does not."""
        rows = tuple((str(g), float(p), float(m)) for g, p, m in rows)
        if not rows:
            return cls()
        return cls(statistics.median(m / p for _, p, m in rows), 0.0, rows)

    def to_dict(self) -> Dict[str, Any]:
        return {"scale": self.scale, "offset_ms": self.offset_ms,
                "rows": [{"genotype": g, "sum_of_parts_ms": p, "measured_ms": m} for g, p, m in self.rows]}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Calibration":
        rows = tuple((r["genotype"], float(r["sum_of_parts_ms"]), float(r["measured_ms"])) for r in d.get("rows", []))
        return cls(float(d["scale"]), float(d["offset_ms"]), rows)


def measure_networks(
    genotypes: Sequence[Genotype], input_size: Sequence[int], timer: Timer, warmup: int, repeats: int,
    passes: int = 5, seed: int = 0,
) -> List[float]:
    """End-to-end latency (ms) of each genotype's inference network, measured interleaved.

    ``passes`` sweeps over all networks, each timing ``repeats / passes`` runs per network;
    a network keeps the median of its per-sweep medians. Timed one after the other instead,
    a slow spell on a shared machine lands on whichever networks run during it (the same
    network measured 23 ms interleaved and 40 ms on its own in one session)."""
    nets = []
    for g in genotypes:
        torch.manual_seed(seed)
        nets.append(build_model(g, boosting=False).eval())
    x = random_inputs([(3, *input_size)])
    for net in nets:
        timer.measure(net, x, max(10, warmup), 1)  # allocations, thread pool, caches: before any timing
    per_pass = max(1, -(-repeats // max(1, passes)))
    times: List[List[float]] = [[] for _ in nets]
    for _ in range(max(1, passes)):
        for i, net in enumerate(nets):
            times[i].append(timer.measure(net, x, 1, per_pass))
    return [statistics.median(t) for t in times]


CALIBRATION_SEED = 1_000_003  # calibration samples; fidelity checks draw with other seeds


@dataclass
class LatencyTable:
    """Costs per part, the fingerprint of the device they were measured on, and what was measured."""

    entries: Dict[str, Dict[str, float]]
    fingerprint: Dict[str, Any]
    input_size: Tuple[int, int]
    base: str  # base genotype, canonical string
    ratio_choices: Tuple[Tuple[float, ...], Tuple[float, ...]]
    settings: Dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"
    calibration: Calibration = field(default_factory=Calibration)

    # ------------------------------------------------------------------ building
    @classmethod
    def measure(
        cls,
        space: SearchSpace,
        input_size: Sequence[int],
        timer: Timer,
        warmup: int = 5,
        repeats: int = 20,
        progress: bool = False,
        calibrate: int = 10,
        passes: int = 3,
    ) -> "LatencyTable":
        """Measure every part of every architecture of ``space`` at ``input_size`` with ``timer``, then
        ``calibrate`` random architectures end to end for the latency :class:`Calibration` (0: none).

        Each part is timed in ``passes`` separate sweeps over all parts and keeps the median of
        their medians, so a slow spell on a shared machine lands in one sweep, not in one part."""
        from tqdm import tqdm

        if passes < 1:
            raise ValueError(f"passes must be >= 1, got {passes}")
        parts = space_parts(space, input_size)
        built = []
        entries: Dict[str, Dict[str, float]] = {}
        for i, (key, part) in enumerate(parts.items()):
            torch.manual_seed(i)
            module = part.build().eval()
            inputs = random_inputs(part.inputs, seed=i)
            built.append((key, module, inputs))
            entries[key] = {"macs": int(count_macs_on(module, inputs)), "params": int(count_params(module))}
        times: Dict[str, List[float]] = {key: [] for key in parts}
        with tqdm(total=passes * len(built), desc="lut", unit="part", disable=not progress) as bar:
            for _ in range(passes):
                for key, module, inputs in built:
                    times[key].append(timer.measure(module, inputs, warmup, repeats))
                    bar.update()
        for key in parts:
            entries[key]["latency_ms"] = statistics.median(times[key])
        table = cls(
            entries=entries,
            fingerprint=timer.fingerprint(),
            input_size=(int(input_size[0]), int(input_size[1])),
            base=space.base.format(),
            ratio_choices=space.ratio_choices,
            settings={"warmup": warmup, "repeats": repeats, "passes": passes, "statistic": "median of per-pass medians",
                      "batch": 1, "dtype": "float32",
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S")},
        )
        table.calibrate(space, timer, calibrate, warmup, repeats, progress)
        return table

    def calibrate(
        self, space: SearchSpace, timer: Timer, count: int = 10, warmup: int = 5, repeats: int = 20,
        progress: bool = False,
    ) -> Calibration:
        """Measure ``count`` random architectures of ``space`` end to end now and fit the latency
        :class:`Calibration` to them (0: no calibration). The part entries stay as they are.

        A table's parts are relative costs that hold for weeks; how fast the machine runs them
        right now (frequency, other tenants, memory pressure) is what the calibration carries, and
        re-fitting it takes a minute where re-measuring every part takes several. Each call draws
        the same architectures; the calibration it replaces is kept in ``settings["calibrations"]``."""
        rng = random.Random(CALIBRATION_SEED)
        nets = [space.sample(rng) for _ in range(count)]
        if not nets:
            return self.calibration
        if progress:
            print(f"calibration: {count} networks end to end, interleaved", file=sys.stderr)
        measured = measure_networks(nets, self.input_size, timer, warmup, repeats)
        if self.calibration.rows:
            history = self.settings.setdefault("calibrations", [])
            history.append({"scale": self.calibration.scale, "offset_ms": self.calibration.offset_ms,
                            "until": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self.calibration = Calibration.fit([(g.format(), self.predict(g, calibrated=False), m) for g, m in zip(nets, measured)])
        return self.calibration

    # ------------------------------------------------------------------ file form
    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": self.fingerprint,
            "input_size": list(self.input_size),
            "base": self.base,
            "ratio_choices": [list(c) for c in self.ratio_choices],
            "settings": self.settings,
            "calibration": self.calibration.to_dict(),
            "entries": self.entries,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON file atomically (:func:`hmseg_core.io.atomic_write_json`)."""
        path = atomic_write_json(path, self.to_dict(), indent=1, sort_keys=True)
        self.source = str(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: Optional[Dict[str, Any]] = None) -> "LatencyTable":
        """Read a table; with ``device`` (a timer's fingerprint), refuse a table measured elsewhere."""
        path = Path(path)
        if not path.is_file():
            raise LUTError(f"{path}: latency table not found (build one with 'hmseg-core lut build')")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LUTError(f"{path}: not a JSON latency table ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise LUTError(f"{path}: not an hmseg latency table (no 'format': '{FORMAT}' entry)")
        if data.get("version") != VERSION:
            raise LUTError(f"{path}: latency table version {data.get('version')!r}, this hmseg reads version {VERSION}")
        missing = [k for k in ("fingerprint", "input_size", "base", "ratio_choices", "entries") if k not in data]
        if missing:
            raise LUTError(f"{path}: latency table lacks {', '.join(missing)}")
        for key, entry in data["entries"].items():
            if not isinstance(entry, dict) or any(not isinstance(entry.get(m), (int, float)) for m in METRICS):
                raise LUTError(f"{path}: entry {key!r} needs numbers for {', '.join(METRICS)}, got {entry!r}")
        try:
            calibration = Calibration.from_dict(data["calibration"]) if "calibration" in data else Calibration()
        except (KeyError, TypeError, ValueError) as e:
            raise LUTError(f"{path}: malformed 'calibration' ({type(e).__name__}: {e}); rebuild the table") from None
        table = cls(
            calibration=calibration,
            entries=data["entries"],
            fingerprint=data["fingerprint"],
            input_size=tuple(data["input_size"]),  # type: ignore[arg-type]
            base=data["base"],
            ratio_choices=tuple(tuple(float(r) for r in c) for c in data["ratio_choices"]),  # type: ignore[arg-type]
            settings=data.get("settings", {}),
            source=str(path),
        )
        if device is not None:
            table.check_device(device)
        return table

    def check_device(self, device: Dict[str, Any]) -> None:
        """Raise :class:`LUTError` if the table was measured on another device (identity fields)."""
        diff = [f"{k}: table {self.fingerprint.get(k)!r} vs here {device.get(k)!r}"
                for k in IDENTITY_FIELDS if self.fingerprint.get(k) != device.get(k)]
        if diff:
            raise LUTError(
                f"{self.source}: latency table was measured on another device ({'; '.join(diff)}); "
                "measure one here with 'hmseg-core lut build'"
            )
        if self.fingerprint.get("versions") != device.get("versions"):
            warnings.warn(
                f"{self.source}: measured with {self.fingerprint.get('versions')}, running {device.get('versions')}; "
                "latencies may have shifted",
                stacklevel=2,
            )

    # ------------------------------------------------------------------ lookups
    def lookup(self, key: str, metric: str = "latency_ms") -> float:
        if metric not in METRICS:
            raise LUTError(f"unknown cost metric {metric!r}; choose from {', '.join(METRICS)}")
        try:
            return float(self.entries[key][metric])
        except KeyError:
            raise LUTError(
                f"{self.source}: no entry {key!r} (table measured for base {self.base!r} at input "
                f"{self.input_size[0]}x{self.input_size[1]} with ratios {self.ratio_choices}); "
                "rebuild the table for this search space and input size"
            ) from None

    def affine(self, metric: str) -> Tuple[float, float]:
        """``(scale, offset)`` turning a sum of ``metric`` entries into the network's cost."""
        return (self.calibration.scale, self.calibration.offset_ms) if metric == "latency_ms" else (1.0, 0.0)

    def predict(self, genotype: Genotype, metric: str = "latency_ms", calibrated: bool = True) -> float:
        """Predicted cost of ``genotype``'s inference network at the table's input size."""
        raw = sum(self.lookup(p.key, metric) for p in decompose(genotype, self.input_size))
        scale, offset = self.affine(metric) if calibrated else (1.0, 0.0)
        return scale * raw + offset

    def covers(self, space: SearchSpace) -> None:
        """Raise :class:`LUTError` naming the first few parts of ``space`` the table lacks."""
        missing = [k for k in space_parts(space, self.input_size) if k not in self.entries]
        if missing:
            raise LUTError(
                f"{self.source}: {len(missing)} part(s) of the search space are not in the table, e.g. "
                f"{', '.join(missing[:3])}; rebuild it for base {space.base.format()!r}, "
                f"ratios {space.ratio_choices} at {self.input_size[0]}x{self.input_size[1]}"
            )


# ---------------------------------------------------------------------------- fidelity
def check_fidelity(
    table: LatencyTable,
    space: SearchSpace,
    timer: Timer,
    count: int = 10,
    seed: int = 0,
    warmup: int = 5,
    repeats: int = 20,
    progress: bool = False,
) -> Dict[str, Any]:
    """Compare predicted with measured end-to-end latency on ``count`` random architectures.

    The base genotype is always the first; the rest are uniform samples of ``space``.
    Returns one row per genotype and the median / worst absolute relative error.
    """
    if seed == CALIBRATION_SEED:
        raise ValueError("that seed draws the table's calibration architectures; check with another")
    rng = random.Random(seed)
    genotypes = [space.base] + [space.sample(rng) for _ in range(max(0, count - 1))]
    rows = []
    for g, measured in zip(genotypes, measure_networks(genotypes, table.input_size, timer, warmup, repeats, seed=seed)):
        predicted, raw = table.predict(g), table.predict(g, calibrated=False)
        rows.append({"genotype": g.format(), "predicted_ms": predicted, "sum_of_parts_ms": raw, "measured_ms": measured,
                     "rel_error": (predicted - measured) / measured, "raw_rel_error": (raw - measured) / measured})
        if progress:
            print(f"predicted {predicted:8.3f} ms  measured {measured:8.3f} ms  error {100 * rows[-1]['rel_error']:+6.1f} % "
                  f"(sum of parts {raw:8.3f} ms, {100 * rows[-1]['raw_rel_error']:+6.1f} %)", file=sys.stderr)
    errors = [abs(r["rel_error"]) for r in rows]
    raw_errors = [abs(r["raw_rel_error"]) for r in rows]
    return {
        "count": len(rows),
        "median_abs_rel_error": statistics.median(errors),
        "worst_abs_rel_error": max(errors),
        "uncalibrated_median_abs_rel_error": statistics.median(raw_errors),
        "uncalibrated_worst_abs_rel_error": max(raw_errors),
        "calibration": {"scale": table.calibration.scale, "offset_ms": table.calibration.offset_ms,
                        "architectures": len(table.calibration.rows)},
        "rows": rows,
        "fingerprint": timer.fingerprint(),
        "input_size": list(table.input_size),
    }
