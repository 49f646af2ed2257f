"""Latency statistics, one timing of a segmenter, and the cache of measurements per machine."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..io import atomic_write_json
from ..machine import fingerprint, fingerprint_key, time_calls, torch_target
from .source import file_digest
from .transforms import ResizePolicy


def device_fingerprint(backend: str, device: str = "cpu", threads: Optional[int] = None) -> Dict[str, object]:
    """:func:`hmseg_core.machine.fingerprint` of ``backend`` on a torch ``device`` string: what a latency
    measured here is kept under. TVM on a CPU adds the state of the tuning records its libraries
    are compiled with (:func:`~hmseg_core.deploy.records.records_state`), so the records of a new
    hmseg, or of a tuning run, are measured again rather than judged by the old library's time."""
    extra: Dict[str, Any] = {}
    if backend == "tvm" and not device.startswith("cuda"):
        from ..deploy.records import default_tuning_db, records_state

        extra["tuning_records"] = records_state(default_tuning_db())
    return fingerprint(backend, torch_target(device), threads, **extra)


@dataclass(frozen=True)
class LatencyStats:
    """End-to-end :meth:`Segmenter.segment` time per frame, in milliseconds."""

    p50: float
    p95: float
    mean: float
    samples: int

    @classmethod
    def from_samples(cls, ms: Sequence[float], blocks: int = 1) -> "LatencyStats":
        """Percentiles of ``ms`` (in the order they were taken). With ``blocks`` > 1 the p95 is the
        median of the p95s of that many consecutive runs of samples: one slow spell of the machine
        (another process waking up) then moves one block's figure, not the result. Of 20 samples
        the plain p95 lies between the two slowest, so a single stall decided it, and a variant's
        figure is cached for the machine (a node at start measured 44.7 ms p95 against a 24.1 ms
        median for one backend, and 31 ms for its own 4 ms overhead)."""
        a = np.asarray(ms, dtype=np.float64)
        if a.size == 0:
            raise ValueError("no latency samples")
        p95 = float(np.percentile(a, 95))
        if blocks > 1 and a.size >= 2 * blocks:
            p95 = float(np.median([np.percentile(b, 95) for b in np.array_split(a, blocks)]))
        return cls(float(np.percentile(a, 50)), max(p95, float(np.percentile(a, 50))), float(a.mean()), int(a.size))


def probe_image(size: Tuple[int, int], seed: int = 0) -> np.ndarray:
    """A random RGB uint8 image of ``size`` (HxW): what latencies are measured on."""
    return np.random.default_rng(seed).integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)


def measure_latency(segmenter, size: Tuple[int, int], iterations: int = 20, warmup: int = 3, seed: int = 0) -> LatencyStats:
    """Time ``segmenter.segment`` on a random RGB image of ``size`` (HxW) after ``warmup`` untimed runs."""
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    rgb = probe_image(size, seed)
    return LatencyStats.from_samples(time_calls(lambda: segmenter.segment(rgb), iterations, warmup), blocks=3)


class LatencyCache:
    """Measurements in a JSON file, grouped by device fingerprint.

    Entries are keyed by model content, image size and resize policy (:meth:`entry_key`), so
    retraining a checkpoint in place or moving to another machine measures again.
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

    def get_entry(self, fp: Dict[str, object], key: str) -> Optional[Dict[str, Any]]:
        entry = self._read().get(fingerprint_key(fp), {}).get("entries", {}).get(key)
        return entry if isinstance(entry, dict) else None

    def put_entry(self, fp: Dict[str, object], key: str, entry: Dict[str, Any]) -> None:
        doc = self._read()
        group = doc.setdefault(fingerprint_key(fp), {"fingerprint": fp, "entries": {}})
        group["entries"][key] = entry
        atomic_write_json(self.path, doc, indent=1)

    @staticmethod
    def stats_of(entry: Optional[Dict[str, Any]]) -> Optional[LatencyStats]:
        """The latency statistics an entry holds; None for no entry or a damaged one."""
        try:
            return LatencyStats(**{k: entry[k] for k in ("p50", "p95", "mean", "samples")}) if entry else None
        except (KeyError, TypeError):
            return None

    def get(self, fp: Dict[str, object], key: str) -> Optional[LatencyStats]:
        return self.stats_of(self.get_entry(fp, key))

    def put(self, fp: Dict[str, object], key: str, stats: LatencyStats, **extra: Any) -> None:
        self.put_entry(fp, key, {**asdict(stats), **extra})


__all__ = ["LatencyCache", "LatencyStats", "device_fingerprint", "measure_latency", "probe_image"]
