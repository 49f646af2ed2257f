"""Side-by-side latency of backends in one process: interleaved sweeps after a warm-up, median and p95.

Each sweep runs every (package, backend) in turn for a block of back-to-back frames, so load
changes on the machine spread over all rows instead of penalising whichever ran last, and each
row is timed the way it runs deployed: frame after frame, with its own weights in cache and
no other runtime's threads still spinning. The first frame after switching rows is not timed:
a thread pool that just finished (PyTorch's OpenMP workers, ONNX Runtime's) keeps spinning for
a while and took the cores from the next runtime (PyTorch eager measured 51 ms right after ONNX
Runtime against 23 ms on its own).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..runtime import Segmenter, device_fingerprint
from .package import ModelPackage


TORCH_COMPILE = "torch.compile"  # bench only: the package's checkpoint through torch.compile (inductor)


@dataclass
class BenchRow:
    """One (package, backend) row: inference-only and end-to-end milliseconds."""

    package: str
    backend: str
    label: str
    size: Tuple[int, int]
    inference_ms: List[float]
    total_ms: List[float]

    def stats(self) -> Dict[str, float]:
        inf, tot = np.asarray(self.inference_ms), np.asarray(self.total_ms)
        return {
            "median_ms": float(np.median(inf)), "p95_ms": float(np.percentile(inf, 95)),
            "total_median_ms": float(np.median(tot)), "total_p95_ms": float(np.percentile(tot, 95)),
            "runs": int(inf.size),
        }


def set_threads(threads: int) -> None:
    """One thread count for every runtime in this process (torch, ONNX Runtime sessions made later, TVM).

    TVM's ``runtime.config_threadpool`` pins the calling thread to one core (it counts it as
    worker 0). Every thread started from it afterwards inherits that pin: PyTorch's OpenMP
    pool, ONNX Runtime's workers, DDS threads. Two spinning OpenMP threads on one core made
    PyTorch eager 70x slower here, so the calling thread's affinity is restored at once."""
    torch.set_num_threads(threads)
    try:
        import tvm
    except ImportError:
        return  # no TVM here: only the other backends run
    saved = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        tvm.get_global_func("runtime.config_threadpool")(0, threads)
    except (ValueError, AttributeError):
        pass
    finally:
        if saved is not None:
            os.sched_setaffinity(0, saved)


def _label(seg: Segmenter) -> str:
    if seg.backend_name == "tvm":
        t = seg.backend.library.get("tuning", {})
        tuned = t.get("tasks_tuned", 0) + t.get("tasks_reused", 0)
        return f"TVM tuned ({tuned}/{t.get('tasks')} tasks)" if tuned else "TVM untuned"
    return {"onnxruntime": "ONNX Runtime", "torch": "PyTorch eager", TORCH_COMPILE: "torch.compile"}.get(seg.backend_name, seg.backend_name)


def bench(
    packages: Sequence[str | Path],
    backends: Sequence[str] = ("tvm", "onnxruntime", "torch"),
    runs: int = 50,
    warmup: int = 5,
    threads: int = 2,
    size: Optional[Tuple[int, int]] = None,
    log: Callable[[str], None] = lambda s: None,
    block: int = 10,
) -> List[BenchRow]:
    """Time every backend of every package on one random image (the package's input size unless ``size``):
    ``warmup`` untimed rounds over all rows, then sweeps of ``block`` timed frames per row (after one
    untimed frame) until each row has ``runs`` timed frames."""
    if runs < 1 or block < 1:
        raise ValueError("runs and block must be >= 1")
    set_threads(threads)
    rows: List[Tuple[BenchRow, Segmenter, np.ndarray]] = []
    seen_torch = set()
    for pkg in packages:
        package = ModelPackage.load(pkg)
        for backend in backends:
            if (backend == "tvm" and not package.libraries) or (backend == "onnxruntime" and package.onnx is None):
                log(f"{package.root.name}: no {backend} model in the package, skipped")
                continue
            h, w = size or package.input_size
            if backend in ("torch", TORCH_COMPILE):  # one row per network and size: tuned/untuned packages share it
                if (backend, package.metadata["genotype"], h, w) in seen_torch:
                    continue
                seen_torch.add((backend, package.metadata["genotype"], h, w))
            seg = Segmenter(pkg, backend="torch" if backend == TORCH_COMPILE else backend)
            if backend == TORCH_COMPILE:  # inductor compiles on the first (warm-up) call
                seg.backend.model = torch.compile(seg.backend.model, dynamic=False)
                seg.backend_name = TORCH_COMPILE
            rgb = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            rows.append((BenchRow(Path(pkg).name, backend, _label(seg), (h, w), [], []), seg, rgb))
    for _ in range(warmup):
        for _, seg, rgb in rows:
            seg.segment(rgb)
    done = 0
    while done < runs:
        n = min(block, runs - done)
        for row, seg, rgb in rows:
            seg.segment(rgb)  # switching rows: not timed
            for _ in range(n):
                t = time.perf_counter()
                _, timings = seg.segment(rgb)
                row.total_ms.append(1e3 * (time.perf_counter() - t))
                row.inference_ms.append(timings.inference)
        done += n
        log(f"{done}/{runs} frames per row")
    return [row for row, _, _ in rows]


def format_table(rows: Sequence[BenchRow], threads: int) -> str:
    lines = [
        f"{threads} threads, {device_fingerprint('-')['cpu']}",
        "| package | size | backend | median ms | p95 ms | end-to-end median ms | runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r.stats()
        lines.append(
            f"| {r.package} | {r.size[0]}x{r.size[1]} | {r.label} | {s['median_ms']:.2f} | {s['p95_ms']:.2f} | "
            f"{s['total_median_ms']:.2f} | {s['runs']} |"
        )
    return "\n".join(lines)


@dataclass
class Agreement:
    """One backend against torch on real frames: share of identical labels, largest logit difference."""

    backend: str
    frames: int
    pixels: int
    identical: int
    max_logit_diff: float

    @property
    def identical_fraction(self) -> float:
        return self.identical / max(1, self.pixels)


def agreement(
    package: str | Path, images: Sequence[np.ndarray], backends: Sequence[str] = ("tvm", "onnxruntime"),
    log: Callable[[str], None] = lambda s: None,
) -> List[Agreement]:
    """Labels and logits of each backend against the torch backend of the same package, frame by frame."""
    from ..evaluate import postprocess, preprocess

    reference = Segmenter(package, backend="torch")
    others = [Segmenter(package, backend=b) for b in backends]
    size = ModelPackage.load(package).input_size
    rows = [Agreement(b, 0, 0, 0, 0.0) for b in backends]
    with torch.no_grad():
        for i, rgb in enumerate(images):
            x = preprocess(rgb, reference.mean, reference.std, size)
            ref_logits = reference.backend.forward(x)
            ref_labels = postprocess(ref_logits, rgb.shape[:2])
            for row, seg in zip(rows, others):
                logits = seg.backend.forward(x)
                row.frames += 1
                row.pixels += ref_labels.size
                row.identical += int((postprocess(logits, rgb.shape[:2]) == ref_labels).sum())
                row.max_logit_diff = max(row.max_logit_diff, float((logits - ref_logits).abs().max()))
            if (i + 1) % 10 == 0:
                log(f"{i + 1}/{len(images)} frames")
    return rows


def format_agreement(rows: Sequence[Agreement]) -> str:
    lines = ["| backend | frames | identical labels | max logit difference |", "|---|---|---|---|"]
    lines += [f"| {r.backend} | {r.frames} | {100 * r.identical_fraction:.4f} % | {r.max_logit_diff:.2e} |" for r in rows]
    return "\n".join(lines)


@dataclass
class KernelTime:
    """One compiled kernel of a TVM library: calls and milliseconds per frame."""

    name: str
    calls: int
    ms: float


def profile_kernels(package: str | Path, runs: int = 20, warmup: int = 3, threads: int = 2) -> Tuple[float, List[KernelTime]]:
    """Per-frame time of each kernel the TVM library's ``main`` calls (Relax VM instrument hook).

    Returns the frame's median wall time in ms and the kernels, slowest first. The hook adds a
    few microseconds per call, so the kernels' sum is slightly above a plain run's time."""
    if runs < 1:
        raise ValueError("runs must be >= 1")
    import tvm

    from .tvm_backend import TVMBackend

    set_threads(threads)
    backend = TVMBackend(ModelPackage.load(package))
    h, w = backend.input_size
    x = tvm.runtime.tensor(np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32), backend.device)
    for _ in range(warmup):
        backend.vm["main"](x, *backend.params)
    totals: Dict[str, float] = {}
    calls: Dict[str, int] = {}
    started: Dict[str, float] = {}

    def instrument(func, name, before_run, ret_value, *args):
        if before_run:
            started[name] = time.perf_counter()
        else:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - started.pop(name)
            calls[name] = calls.get(name, 0) + 1
        return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

    frames = []
    backend.vm.set_instrument(instrument)
    for _ in range(runs):
        t = time.perf_counter()
        backend.vm["main"](x, *backend.params)
        frames.append(1e3 * (time.perf_counter() - t))
    kernels = [KernelTime(n, calls[n] // runs, 1e3 * totals[n] / runs) for n in totals]
    return float(np.median(frames)), sorted(kernels, key=lambda k: -k.ms)


def format_kernels(frame_ms: float, kernels: Sequence[KernelTime], top: int = 25) -> str:
    total = sum(k.ms for k in kernels) or 1.0
    lines = [f"frame median {frame_ms:.2f} ms (instrumented), {len(kernels)} kernels, sum {total:.2f} ms",
             "| kernel | calls/frame | ms/frame | share |", "|---|---|---|---|"]
    lines += [f"| {k.name} | {k.calls} | {k.ms:.3f} | {100 * k.ms / total:.1f} % |" for k in kernels[:top]]
    if len(kernels) > top:
        rest = sum(k.ms for k in kernels[top:])
        lines.append(f"| {len(kernels) - top} more | | {rest:.3f} | {100 * rest / total:.1f} % |")
    return "\n".join(lines)
