"""The machine this process runs on: its identity (for latency tables and caches) and the
process-wide allocator setting that inference and latency measurements rely on."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from pathlib import Path
from typing import Optional

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
