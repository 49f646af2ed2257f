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

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..machine import cpu_model, set_threads, time_calls
from ..runtime.segmenter import Segmenter
from ..runtime.source import ModelSource
from .package import ModelPackage


TORCH_COMPILE = "torch.compile"  # bench only: the package's checkpoint through torch.compile (inductor)
ONNX_BACKENDS = ("onnxruntime", "openvino", "openvino-bf16")  # the backends that run the package's ONNX exports
LABELS = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO FP32", "openvino-bf16": "OpenVINO BF16",
          "torch": "PyTorch eager", TORCH_COMPILE: "torch.compile"}


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


def _label(seg: Segmenter, size: Tuple[int, int]) -> str:
    if seg.backend_name == "tvm":
        t = seg.backend.library.get("tuning", {})
        tuned = t.get("tasks_tuned", 0) + t.get("tasks_reused", 0)
        label = f"TVM tuned ({tuned}/{t.get('tasks')} tasks)" if tuned else "TVM untuned"
    else:
        label = LABELS.get(seg.backend_name, seg.backend_name)
    return label + (", whole frame" if seg.runs_whole_frame(size) else "")


def bench(
    packages: Sequence[str | Path],
    backends: Sequence[str] = ("tvm", "onnxruntime", "torch"),
    runs: int = 50,
    warmup: int = 5,
    threads: int = 2,
    size: Optional[Tuple[int, int]] = None,
    log: Callable[[str], None] = lambda s: None,
    block: int = 10,
    whole_frame: bool = True,
) -> List[BenchRow]:
    """Time every backend of every package on one random image (the package's input size unless ``size``):
    ``warmup`` untimed rounds over all rows, then sweeps of ``block`` timed frames per row (after one
    untimed frame) until each row has ``runs`` timed frames. Backends that hold the whole frame run it
    in one call unless ``whole_frame`` is False (then every row times the network alone between the
    Segmenter's own pre- and post-processing)."""
    if runs < 1 or block < 1:
        raise ValueError("runs and block must be >= 1")
    set_threads(threads)
    rows: List[Tuple[BenchRow, Segmenter, np.ndarray]] = []
    seen_torch = set()
    for pkg in packages:
        package = ModelPackage.load(pkg)
        for backend in backends:
            if (backend == "tvm" and not package.libraries) or (backend in ONNX_BACKENDS and package.onnx is None):
                log(f"{package.root.name}: no {backend} model in the package, skipped")
                continue
            h, w = size or package.input_size
            if backend in ("torch", TORCH_COMPILE):  # one row per network and size: tuned/untuned packages share it
                if (backend, package.metadata["genotype"], h, w) in seen_torch:
                    continue
                seen_torch.add((backend, package.metadata["genotype"], h, w))
            seg = Segmenter(pkg, backend="torch" if backend == TORCH_COMPILE else backend, whole_frame=whole_frame)
            if backend == TORCH_COMPILE:  # inductor compiles on the first (warm-up) call
                seg.backend.model = torch.compile(seg.backend.model, dynamic=False)
                seg.backend_name = TORCH_COMPILE
            rgb = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            rows.append((BenchRow(Path(pkg).name, backend, _label(seg, (h, w)), (h, w), [], []), seg, rgb))
    for _ in range(warmup):
        for _, seg, rgb in rows:
            seg.segment(rgb)
    done = 0
    while done < runs:
        n = min(block, runs - done)
        for row, seg, rgb in rows:
            seg.segment(rgb)  # switching rows: not timed
            row.total_ms += time_calls(lambda: row.inference_ms.append(seg.segment(rgb)[1].inference), n)
        done += n
        log(f"{done}/{runs} frames per row")
    return [row for row, _, _ in rows]


def format_table(rows: Sequence[BenchRow], threads: int) -> str:
    lines = [
        f"{threads} threads, {cpu_model()}",
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
    """Labels and logits of each backend against the torch backend of the same package, frame by frame.

    A backend that also holds the whole frame gets a second row, ``<backend> whole frame``: its
    labels for the frame resized to the package's input size against torch's for the same image
    (the whole-frame call returns no logits)."""
    from PIL import Image

    from ..evaluate import postprocess, preprocess

    reference = Segmenter(package, backend="torch")
    others = [Segmenter(package, backend=b) for b in backends]
    size = ModelPackage.load(package).input_size
    rows = [Agreement(b, 0, 0, 0, 0.0) for b in backends]
    frame_rows = {b: Agreement(f"{b} whole frame", 0, 0, 0, float("nan")) for b, seg in zip(backends, others) if seg.runs_whole_frame(size)}
    with torch.no_grad():
        for i, rgb in enumerate(images):
            x = preprocess(rgb, reference.mean, reference.std, size)
            ref_logits = reference.backend.forward(x)
            ref_labels = postprocess(ref_logits, rgb.shape[:2])
            small = rgb if rgb.shape[:2] == tuple(size) else np.asarray(Image.fromarray(rgb).resize(size[::-1], Image.BILINEAR))
            ref_small = reference.segment(small)[0] if frame_rows else None
            for row, seg in zip(rows, others):
                logits = seg.backend.forward(x)
                _count(row, postprocess(logits, rgb.shape[:2]), ref_labels)
                row.max_logit_diff = max(row.max_logit_diff, float((logits - ref_logits).abs().max()))
                if row.backend in frame_rows:
                    _count(frame_rows[row.backend], seg.segment(small)[0], ref_small)
            if (i + 1) % 10 == 0:
                log(f"{i + 1}/{len(images)} frames")
    return rows + list(frame_rows.values())


def _count(row: Agreement, labels: np.ndarray, reference: np.ndarray) -> None:
    row.frames += 1
    row.pixels += reference.size
    row.identical += int((labels == reference).sum())


def format_agreement(rows: Sequence[Agreement]) -> str:
    lines = ["| backend | frames | identical labels | max logit difference |", "|---|---|---|---|"]
    lines += [f"| {r.backend} | {r.frames} | {100 * r.identical_fraction:.4f} % | "
              f"{'(labels only)' if np.isnan(r.max_logit_diff) else f'{r.max_logit_diff:.2e}'} |" for r in rows]
    return "\n".join(lines)


@dataclass
class KernelTime:
    """One kernel of a compiled frame (a TVM library's kernel, an ONNX Runtime or OpenVINO node): calls and
    milliseconds per frame."""

    name: str
    calls: int
    ms: float


class _KernelTally:
    """Per-kernel time and calls summed over ``runs`` profiled frames; ``kernels()`` gives them per
    frame, slowest first."""

    def __init__(self, runs: int):
        if runs < 1:
            raise ValueError(f"runs must be >= 1, got {runs}")
        self.runs = runs
        self.ms: Dict[str, float] = {}
        self.calls: Dict[str, int] = {}

    def add(self, name: str, ms: float) -> None:
        self.ms[name] = self.ms.get(name, 0.0) + ms
        self.calls[name] = self.calls.get(name, 0) + 1

    def kernels(self) -> List[KernelTime]:
        kernels = [KernelTime(n, self.calls[n] // self.runs, ms / self.runs) for n, ms in self.ms.items()]
        return sorted(kernels, key=lambda k: -k.ms)


def profile_kernels(package: str | Path, runs: int = 20, warmup: int = 3, threads: int = 2) -> Tuple[float, List[KernelTime]]:
    """Per-frame time of each kernel the TVM library runs per frame (Relax VM instrument hook): its
    whole-frame function where the package has one, else ``main``.

    Returns the frame's median wall time in ms and the kernels, slowest first. The hook adds a
    few microseconds per call, so the kernels' sum is slightly above a plain run's time."""
    from ..runtime.backends.tvm_backend import TVMBackend

    set_threads(threads)
    backend = TVMBackend(ModelSource.load(package))
    return profile_vm(backend.vm, backend.input_size, backend.frame, backend.frame_params or backend.params, backend.device, runs, warmup)


def profile_vm(vm, input_size: Tuple[int, int], frame: Optional[str], params: Sequence, device=None,
               runs: int = 20, warmup: int = 3) -> Tuple[float, List[KernelTime]]:
    """:func:`profile_kernels` on a Relax VM: the whole-frame function ``frame`` (RGB uint8 in) with
    its transformed ``params``, else ``main`` (float NCHW in)."""
    import tvm

    tally = _KernelTally(runs)

    device = device or tvm.cpu(0)
    h, w = input_size
    rng = np.random.default_rng(0)
    if frame:
        image = tvm.runtime.tensor(rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8), device)
        run = functools.partial(vm[frame], image, *params)
    else:
        x = tvm.runtime.tensor(rng.random((1, 3, h, w), dtype=np.float32), device)
        run = functools.partial(vm["main"], x, *params)
    for _ in range(warmup):
        run()
    started: Dict[str, float] = {}

    def instrument(func, name, before_run, ret_value, *args):
        if before_run:
            started[name] = time.perf_counter()
        else:
            tally.add(name, 1e3 * (time.perf_counter() - started.pop(name)))
        return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

    vm.set_instrument(instrument)
    frames = time_calls(run, runs)
    return float(np.median(frames)), tally.kernels()


def profile_onnxruntime(package: str | Path, runs: int = 20, warmup: int = 3, threads: int = 2) -> Tuple[float, List[KernelTime]]:
    """:func:`profile_kernels` for ONNX Runtime: each node of the package's whole-frame ONNX graph
    (``labels.onnx``; ``model.onnx`` in older packages), from ORT's own profiler, as ORT runs it
    deployed (the node's session options, after ORT's graph rewrites: its NCHWc layout nodes and
    the reorders between them appear as nodes of their own). Names read ``node (OpType)``."""
    import json
    import tempfile

    import onnxruntime as ort

    from ..runtime.backends.onnxruntime_backend import session_options

    tally = _KernelTally(runs)
    x, path = _profile_input(package)
    with tempfile.TemporaryDirectory(prefix="hmseg-ort-profile-") as tmp:
        options = session_options(ort, threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        frames = time_calls(lambda: session.run(None, feed), runs, warmup=warmup)
        events = json.loads(Path(session.end_profiling()).read_text())
    # the last `runs` model runs are the timed ones; their node events lie inside them
    runs_at = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")[-runs:]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and runs_at and e["ts"] >= runs_at[0]:
            tally.add(f"{e['name'][:-len('_kernel_time')]} ({e['args'].get('op_name', '?')})", e["dur"] / 1e3)
    return float(np.median(frames)), tally.kernels()


def profile_openvino(package: str | Path, runs: int = 20, warmup: int = 3, threads: int = 2) -> Tuple[float, List[KernelTime]]:
    """:func:`profile_kernels` for OpenVINO FP32: each executed node of the package's whole-frame
    graph as the CPU plugin compiled it (its own fusions; ``PERF_COUNT``). Names read
    ``node (type: kernel)``, the kernel being the plugin's implementation (e.g. ``jit_avx512_FP32``)."""
    import openvino as ov

    from ..runtime.backends.openvino_backend import compile_config

    tally = _KernelTally(runs)
    x, path = _profile_input(package)
    request = ov.Core().compile_model(str(path), "CPU", {**compile_config("f32", threads), "PERF_COUNT": True}).create_infer_request()

    def run() -> None:
        request.infer({0: x})

    for _ in range(warmup):
        run()
    frames = []
    for _ in range(runs):
        frames += time_calls(run, 1)
        for info in request.profiling_info:
            if _openvino_ran(info):
                tally.add(f"{info.node_name} ({info.node_type}: {info.exec_type})", info.real_time.total_seconds() * 1e3)
    return float(np.median(frames)), tally.kernels()


def _openvino_ran(info) -> bool:
    """Whether a node of OpenVINO's profile ran its own kernel in the last inference. The plugin reports
    ``NOT_RUN`` also for a kernel that took under its 1 us resolution (a small ReduceMean or
    Interpolate, some frames but not others), beside the nodes fused into others (kernel ``undef``)
    and the no-ops (Parameter, Result, Reshape: ``unknown_*``)."""
    return info.status == info.Status.EXECUTED or (
        info.status == info.Status.NOT_RUN and info.exec_type != "undef" and not info.exec_type.startswith("unknown"))


def _profile_input(package: str | Path) -> Tuple[np.ndarray, Path]:
    """A random input for a package's whole-frame ONNX graph (``model.onnx`` in older packages), and the graph."""
    pkg = ModelPackage.load(package)
    if pkg.onnx is None:
        raise ValueError(f"{pkg.root}: the package has no ONNX model; export it again without --no-onnx")
    frame = pkg.onnx.get("frame_file")
    h, w = pkg.input_size
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8) if frame else rng.random((1, 3, h, w), dtype=np.float32)
    return x, pkg.path(frame or pkg.onnx["file"])


def format_kernels(frame_ms: float, kernels: Sequence[KernelTime], top: int = 25) -> str:
    total = sum(k.ms for k in kernels) or 1.0
    lines = [f"frame median {frame_ms:.2f} ms (instrumented), {len(kernels)} kernels, sum {total:.2f} ms",
             "| kernel | calls/frame | ms/frame | share |", "|---|---|---|---|"]
    lines += [f"| {k.name} | {k.calls} | {k.ms:.3f} | {100 * k.ms / total:.1f} % |" for k in kernels[:top]]
    if len(kernels) > top:
        rest = sum(k.ms for k in kernels[top:])
        lines.append(f"| {len(kernels) - top} more | | {rest:.3f} | {100 * rest / total:.1f} % |")
    return "\n".join(lines)
