"""The machine this process runs on, and how it is measured.

One place for what every latency figure depends on besides the model:

* :func:`fingerprint`: the identity of device and software that a latency table, a latency
  cache or a package's recorded timings are valid for (one schema for all of them);
* :func:`set_threads`: one thread count for every runtime in the process (PyTorch, TVM's pool,
  ONNX Runtime and OpenVINO sessions created later read :func:`torch.get_num_threads`);
* :func:`time_calls`: the one timing loop (warm-up, then wall time per call);
* :func:`retain_freed_memory`: the process-wide allocator setting inference relies on.

Importing this module imports neither torch nor TVM.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .io import digest_json

#: Set to ``0`` to leave the C allocator as it is (see :func:`retain_freed_memory`).
RETAIN_ENV = "HMSEG_RETAIN_FREED_MEMORY"

# glibc's mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_INT_MAX = 2**31 - 1
_retained: Optional[bool] = None


def cpu_model() -> str:
    """The CPU's marketing name, e.g. 'Intel(R) Xeon(R) Processor'."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a container's or taskset's limit), not
    the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


#: Fields of :func:`fingerprint` that must match for a latency figure to apply here.
IDENTITY_FIELDS = ("backend", "target", "cpu", "cores", "threads", "allocator", "tvm_threads")


def fingerprint(backend: str, target: str = "cpu", threads: Optional[int] = None, **extra: Any) -> Dict[str, Any]:
    """What a latency measurement depends on besides the model: hardware, software, settings.

    ``target``: ``"cpu"``, ``"cuda:<GPU name>"`` or a compiled target's key; ``threads``: the
    intra-op threads (default: torch's current count). For the ``tvm`` backend on a CPU the
    threads TVM's pool runs are part of the identity (before the pool was sized to ``threads``,
    TVM ran on one thread here). ``extra`` fields (a table's tuning settings) are added as given.
    """
    import torch

    fp: Dict[str, Any] = {
        "backend": backend,
        "target": target,
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "machine": platform.machine(),
        "threads": int(threads if threads else torch.get_num_threads()),
        "allocator": allocator(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }
    if backend == "tvm" and not target.startswith("cuda"):
        fp["tvm_threads"] = int(extra.pop("tvm_threads", fp["threads"]))
    for name in ("tvm", "onnxruntime", "openvino"):
        if backend == name or (name == "tvm" and target.startswith("llvm")):
            fp["versions"][name] = _version(name)
    fp.update(extra)
    return fp


def torch_target(device: str) -> str:
    """:func:`fingerprint`'s ``target`` for a torch device string: ``cpu`` or ``cuda:<GPU name>``."""
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    return f"cuda:{torch.cuda.get_device_name(torch.device(device))}" if torch.cuda.is_available() else device


def fingerprint_key(fp: Dict[str, Any]) -> str:
    """A short key for a fingerprint, to group measurements under in a file."""
    return digest_json(fp)


def _version(module: str) -> Optional[str]:
    if importlib.util.find_spec(module) is None:
        return None
    from importlib import metadata

    for dist in {"tvm": ("apache-tvm",), "onnxruntime": ("onnxruntime",), "openvino": ("openvino",)}[module]:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return getattr(__import__(module), "__version__", None)


# ---------------------------------------------------------------------------- threads
# How long an idle worker of TVM's thread pool polls for its next task (sched_yield calls) before
# it sleeps: ``TVM_THREAD_POOL_SPIN_COUNT``, read when the pool starts. TVM's default, 300000,
# keeps a worker polling through the whole gap between camera frames: a node running mrms_tiny
# at 30 Hz used 150 % of the 2 cores, a third of it polling, taken from the DDS threads, the
# camera driver and every other process on the robot. 10000 (~1 ms of polling) spans the gaps
# between the kernels of a frame, not those between frames: 107 % at the same latency, back to
# back and paced (docs/RESULTS.md). A value in the environment wins.
TVM_SPIN_COUNT = 10000


def use_tvm_threads(threads: int) -> int:
    """Run TVM's CPU kernels on ``threads`` threads; returns the count TVM's pool now uses.

    TVM sizes its thread pool once, when the pool starts, from ``TVM_NUM_THREADS`` (else
    ``OMP_NUM_THREADS``, else half the logical CPUs on x86-64, to "ignore hyper-threading"). On a
    2-core CPU without hyper-threads that default is one thread: every kernel ran on one core
    while ONNX Runtime and PyTorch used both (mrms_tiny at 360x480, tuned: 16.0 ms against 10.0 ms
    on two threads, docs/RESULTS.md). ``runtime.config_threadpool`` lowers the count of a running
    pool but cannot raise it above the pool's size, so the variable is set before the pool starts
    (it also reaches the processes started from here: MetaSchedule's measuring workers), and with
    it ``TVM_THREAD_POOL_SPIN_COUNT`` (:data:`TVM_SPIN_COUNT`) unless the environment sets one.
    Starting the pool, and ``config_threadpool``, pin the calling thread to one core, and every
    thread started from it afterwards (PyTorch's OpenMP pool, ONNX Runtime's, DDS threads) would
    inherit that pin, so the caller's affinity is restored at once. Raises ImportError without TVM."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    import tvm

    os.environ["TVM_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", str(TVM_SPIN_COUNT))
    saved = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    pool_threads = tvm.get_global_func("runtime.NumThreads")
    try:
        if pool_threads() != threads:  # the first call starts the pool, if it has not started
            tvm.get_global_func("runtime.config_threadpool")(0, threads)
    finally:
        if saved is not None:
            os.sched_setaffinity(0, saved)
    used = int(pool_threads())
    if used < threads:
        warnings.warn(
            f"TVM's thread pool started earlier in this process with {used} thread(s) and cannot grow to {threads}; "
            f"set TVM_NUM_THREADS={threads} in the environment before starting the program",
            RuntimeWarning, stacklevel=2,
        )
    return used


def set_threads(threads: int) -> Optional[int]:
    """One thread count for every runtime in this process: torch, ONNX Runtime and OpenVINO sessions
    made later, TVM. Returns the threads TVM's pool runs (:func:`use_tvm_threads`), None without TVM."""
    import torch

    torch.set_num_threads(threads)
    if importlib.util.find_spec("tvm") is None:
        return None  # no TVM here: only the other backends run
    return use_tvm_threads(threads)


# ---------------------------------------------------------------------------- timing
def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 0, sync: Optional[Callable[[], Any]] = None) -> List[float]:
    """Milliseconds of wall time of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs after every call, inside the timed span, so
    work queued on a device is counted."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(max(0, warmup)):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(1e3 * (time.perf_counter() - t))
    return times


# ---------------------------------------------------------------------------- allocator
def retain_freed_memory() -> bool:
    """Keep the memory PyTorch frees on the CPU in this process, for its next allocation.

    PyTorch's CPU tensors come from ``malloc``. glibc serves large blocks (above a threshold that
    moves between 128 KiB and 32 MiB with the allocation history) with a fresh ``mmap`` and hands
    them back to the kernel on ``free``, and it trims the heap's top when enough is free there. A
    network's activations are exactly such blocks, allocated and freed once per frame, so every
    frame page-faults its activations in again: at 360x480 eager ``mrms_tiny`` took 8,000 faults
    per frame in some processes and none in others, which made the same layer 4.8 ms in one process
    and 15 ms in the next, and at 768x1536 a frame cost twice the time with faults as without.

    This turns ``mmap`` for ``malloc`` off and the trimming with it (``mallopt``), so freed blocks
    stay in the heap and the next frame reuses them. The process keeps its peak working set
    resident, which a process that segments frame after frame needs anyway. Called by the CLI, the
    :class:`~hmseg_core.runtime.Segmenter` and the latency table's PyTorch backend, so that what the
    table measures is what deployment runs. Returns whether the setting is in effect: ``False`` with
    ``HMSEG_RETAIN_FREED_MEMORY=0`` in the environment, or on a C library other than glibc.
    Idempotent."""
    global _retained
    if _retained is None:
        _retained = _mallopt_retain() if os.environ.get(RETAIN_ENV, "1") != "0" else False
    return _retained


def allocator() -> str:
    """How this process allocates CPU memory, for latency fingerprints: ``"retain-freed"`` once
    :func:`retain_freed_memory` is in effect, else ``"system"``."""
    return "retain-freed" if retain_freed_memory() else "system"


def _mallopt_retain() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; a threshold set by hand also stops glibc adjusting it
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_MAX, 0), (_M_MMAP_THRESHOLD, 32 * 1024 * 1024), (_M_TRIM_THRESHOLD, _INT_MAX)))
