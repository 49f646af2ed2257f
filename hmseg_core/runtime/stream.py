"""A newest-frame worker: frames arrive from any thread, one worker processes only the newest.

A camera callback must never wait for inference, and a model slower than the camera must never
build a queue: :meth:`FrameStream.submit` puts the frame in a one-slot mailbox and returns; a frame
still waiting there when the next arrives is replaced (counted as dropped). Requests that change
what processes frames (a model swap) are applied by the worker between two frames
(:meth:`FrameStream.request`; the newest request wins). Counters, a latency window
(submit -> processed) and a per-stage window are kept for diagnostics (:meth:`FrameStream.stats`).

Per-stage timings: ``process`` may return a dict ``stage name -> milliseconds`` instead of True
(the caller's own stages: decode, network, publish, ...); the stream adds two it measures itself,
``wait`` (submit -> the worker picks the frame up: time spent in the mailbox, which grows when the
worker is starved of CPU or busy with the previous frame) and ``work`` (the whole ``process`` call,
so ``work`` minus the caller's stages is time nobody accounted for: GIL waits, parameter reads).
:meth:`FrameStream.stats` gives p50/p95 per stage over the same window as the latency.

The ROS node (:mod:`hmseg_ros.segment_node`) is a thin adapter over this class.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Generic, List, Mapping, Optional, Tuple, TypeVar, Union

import numpy as np

F = TypeVar("F")  # a frame, as the caller submits it
R = TypeVar("R")  # a request, as the caller submits it

#: what ``process`` returns: True / False (output or not), or the stage timings (ms) of a frame with output
ProcessResult = Union[bool, None, Mapping[str, float]]

#: the order stages are reported in (others follow, sorted); ``wait`` and ``work`` are the stream's own
STAGE_ORDER = ("receive", "wait", "decode", "preprocess", "network", "postprocess", "confidence", "color", "overlay", "publish",
               "work", "stamp_to_publish")


@dataclass(frozen=True)
class StageStats:
    """One stage's milliseconds over the window: median, 95th percentile, and how many frames ran it."""

    p50_ms: float
    p95_ms: float
    samples: int


def stage_order(names) -> List[str]:
    """``names`` in :data:`STAGE_ORDER`, unknown ones after it, sorted."""
    known = [n for n in STAGE_ORDER if n in names]
    return known + sorted(n for n in names if n not in STAGE_ORDER)


def summarize_stages(samples) -> Dict[str, StageStats]:
    """Per-frame stage dicts -> p50/p95 per stage (a stage counts only the frames that ran it)."""
    values: Dict[str, List[float]] = collections.defaultdict(list)
    for stages in samples:
        for name, ms in stages.items():
            values[name].append(float(ms))
    return {n: StageStats(float(np.percentile(values[n], 50)), float(np.percentile(values[n], 95)), len(values[n]))
            for n in stage_order(values)}


def stage_table(stages: Mapping[str, Mapping[str, float]]) -> str:
    """A Markdown table of per-stage p50/p95 (``stages``: name -> ``{"p50_ms", "p95_ms", "samples"}``,
    as :meth:`StreamStats` gives them through ``dataclasses.asdict``)."""
    lines = ["| stage | p50 ms | p95 ms | frames |", "| --- | ---: | ---: | ---: |"]
    for name in stage_order(stages):
        s = stages[name]
        lines.append(f"| {name} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | {int(s.get('samples', 0))} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class StreamStats:
    """Counters since start, and rate and latency over the recent window."""

    received: int
    processed: int
    dropped: int
    bad: Dict[str, int] = field(default_factory=dict)
    fps: float = 0.0
    latency_p50_ms: Optional[float] = None
    latency_p95_ms: Optional[float] = None
    stages: Dict[str, StageStats] = field(default_factory=dict)


class FrameStream(Generic[F, R]):
    """``process(frame)`` runs on the worker thread for the newest frame and returns True (it produced
    output, so its latency counts), a dict of stage milliseconds (output too, and its stages are kept
    with the stream's own ``wait`` and ``work``), or False/None (no output: not counted);
    ``apply(request)`` runs there between frames; an exception from either goes to ``on_error`` and
    the worker goes on with the next frame."""

    def __init__(
        self,
        process: Callable[[F], ProcessResult],
        apply: Callable[[R], None] = lambda request: None,
        on_error: Callable[[str, BaseException], None] = lambda stage, error: None,
        latency_window: int = 300,
        rate_window: int = 1000,
        name: str = "hmseg_inference",
    ) -> None:
        self._process, self._apply, self._on_error = process, apply, on_error
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._slot: Optional[Tuple[F, float]] = None
        self._request: Optional[Tuple[R]] = None
        self.received = self.processed = self.dropped = 0
        self.bad: Dict[str, int] = collections.Counter()
        self._latency: collections.deque = collections.deque(maxlen=latency_window)  # (done time, ms since submit)
        self._stages: collections.deque = collections.deque(maxlen=latency_window)  # (done time, {stage: ms})
        self._done: collections.deque = collections.deque(maxlen=rate_window)
        self._running = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    # ------------------------------------------------------------------ producer side
    def start(self) -> "FrameStream[F, R]":
        self._running = True
        self._thread.start()
        return self

    def submit(self, frame: F) -> None:
        """Hand the worker a frame; never blocks on processing."""
        with self._lock:
            self.received += 1
            if self._slot is not None:
                self.dropped += 1  # stale: a newer frame replaces it
            self._slot = (frame, time.perf_counter())
        self._wake.set()

    def request(self, request: R) -> None:
        """Have the worker ``apply(request)`` before its next frame (a newer request replaces this one)."""
        with self._lock:
            self._request = (request,)
        self._wake.set()

    @property
    def pending(self) -> Optional[R]:
        """The request not applied yet, if any."""
        with self._lock:
            return self._request[0] if self._request else None

    def count_bad(self, kind: str) -> bool:
        """Count a bad input of ``kind``; True the first time that kind is seen (log it then)."""
        with self._lock:
            self.bad[kind] += 1
            return self.bad[kind] == 1

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after the frame in progress (called from any thread but the worker)."""
        self._running = False
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=timeout)

    # ------------------------------------------------------------------ worker side
    def _work(self) -> None:
        while self._running:
            self._wake.wait(0.1)
            with self._lock:
                self._wake.clear()
                item, self._slot = self._slot, None
                request, self._request = self._request, None
            if request is not None:
                self._guarded("request", self._apply, request[0])
            if item is not None and self._running:
                frame, submitted = item
                picked = time.perf_counter()
                result = self._guarded("frame", self._process, frame)
                if isinstance(result, Mapping) or result:
                    done = time.perf_counter()
                    stages = {"wait": 1e3 * (picked - submitted), **(result if isinstance(result, Mapping) else {}),
                              "work": 1e3 * (done - picked)}
                    with self._lock:
                        self.processed += 1
                        self._latency.append((done, 1e3 * (done - submitted)))
                        self._stages.append((done, stages))
                        self._done.append(done)

    def _guarded(self, stage: str, fn: Callable, arg) -> object:
        try:
            return fn(arg)
        except Exception as e:  # keep serving the next frames; the caller logs and counts it
            self._on_error(stage, e)
            return None

    # ------------------------------------------------------------------ diagnostics
    def stats(self, period_s: float = 1.0, latency_span_s: float = 5.0) -> StreamStats:
        """Counters; frames per second over the last ``period_s``; latency percentiles over the last
        ``max(period_s, latency_span_s)`` seconds (None before the first frame), and per-stage
        percentiles over the same span (both windows also hold at most ``latency_window`` frames)."""
        now = time.perf_counter()
        span = max(period_s, latency_span_s)
        with self._lock:
            recent = [ms for t, ms in self._latency if now - t <= span]
            stages = [st for t, st in self._stages if now - t <= span]
            fps = sum(1 for t in self._done if now - t <= period_s) / period_s
            counts = (self.received, self.processed, self.dropped, dict(self.bad))
        p50, p95 = (float(np.percentile(recent, q)) for q in (50, 95)) if recent else (None, None)
        return StreamStats(*counts, fps=fps, latency_p50_ms=p50, latency_p95_ms=p95, stages=summarize_stages(stages))


__all__ = ["STAGE_ORDER", "FrameStream", "ProcessResult", "StageStats", "StreamStats", "stage_order", "stage_table",
           "summarize_stages"]
