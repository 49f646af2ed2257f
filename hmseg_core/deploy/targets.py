"""Compilation targets as TVM target JSON dicts (TVM 0.27 refuses the old ``"llvm -mcpu=..."`` strings).

Named targets:
    ``host``     x86-64 / aarch64 LLVM for this machine's CPU (``mcpu`` as LLVM detects it)
    ``aarch64``  64-bit Arm Linux, cross-compiled (needs ``aarch64-linux-gnu-g++``, Debian
                 package ``g++-aarch64-linux-gnu``)
    ``cuda``     NVIDIA GPU (``arch`` from the visible GPU, else ``sm_80``), host code for this CPU
A JSON object string is taken as a target dict as it is.

A target's *ISA family* (:func:`isa_family`: ``x86_64-avx512``, ``x86_64-avx2``, ``aarch64``) names
the instruction sets its kernels are scheduled for; tuning records are kept per family, since
MetaSchedule keys them by workload, not by ``mcpu``. A library's CPU check compares instruction-set
features only (:func:`isa_features`), never LLVM's tuning flags (``fast-gather``, ``ermsb``, ...).
"""

from __future__ import annotations

import json
import os
import platform
import re
from typing import Any, Dict, Iterable, List, Optional, Tuple

TargetDict = Dict[str, Any]


def _tvm_codegen():
    from tvm.target import codegen

    return codegen


def host_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def host_target(num_cores: Optional[int] = None) -> TargetDict:
    """LLVM target for this CPU: its architecture, its LLVM CPU name (and so its vector features)."""
    return {
        "kind": "llvm",
        "mtriple": f"{host_arch()}-linux-gnu",
        "mcpu": str(_tvm_codegen().llvm_get_system_cpu()),
        "num-cores": int(num_cores or os.cpu_count() or 1),
    }


def aarch64_target(mcpu: str = "cortex-a72", num_cores: int = 4) -> TargetDict:
    return {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "num-cores": num_cores}


def cuda_target(arch: Optional[str] = None) -> TargetDict:
    if arch is None:
        try:
            import torch

            major, minor = torch.cuda.get_device_capability() if torch.cuda.is_available() else (8, 0)
        except Exception:  # no CUDA runtime: fall back to a common architecture
            major, minor = 8, 0
        arch = f"sm_{major}{minor}"
    # shared memory and thread limits common to sm_50 and newer; TVM's GPU schedules size their tiles by them
    return {"kind": "cuda", "arch": arch, "max_shared_memory_per_block": 49152, "max_threads_per_block": 1024,
            "thread_warp_size": 32, "host": host_target()}


def resolve_target(spec: str | TargetDict, num_cores: Optional[int] = None) -> TargetDict:
    """``host`` / ``aarch64`` / ``cuda`` / a JSON dict -> a target dict."""
    if isinstance(spec, dict):
        return dict(spec)
    text = spec.strip()
    if text.startswith("{"):
        try:
            target = json.loads(text)
        except ValueError as e:
            raise ValueError(f"target {spec!r} is not valid JSON: {e}") from None
        if not isinstance(target, dict) or "kind" not in target:
            raise ValueError(f"target {spec!r}: a JSON target needs a 'kind' entry")
        return target
    if text == "host":
        return host_target(num_cores)
    if text == "aarch64":
        return aarch64_target()
    if text == "cuda":
        return cuda_target()
    raise ValueError(f"unknown target {spec!r}; use host, aarch64, cuda or a JSON target dict")


def target_arch(target: TargetDict) -> Optional[str]:
    """CPU architecture the host code runs on (from ``mtriple``), or None when unspecified."""
    host = target.get("host") if target.get("kind") != "llvm" else target
    triple = (host or {}).get("mtriple") if isinstance(host, dict) else None
    return triple.split("-", 1)[0] if triple else None


def target_key(target: TargetDict) -> str:
    """A short, file-name-safe name: ``llvm-x86_64-rocketlake``, ``cuda-sm_86``."""
    if target.get("kind") == "llvm":
        parts = ["llvm", target_arch(target) or "any", str(target.get("mcpu", "generic"))]
    else:
        parts = [str(target.get("kind")), str(target.get("arch", ""))]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(p for p in parts if p))


#: LLVM feature names (or their prefixes) that are instruction sets generated code may use, per
#: architecture. Everything else LLVM lists for a CPU is a scheduling hint (``fast-*``, ``slow-*``,
#: ``no-bypass-delay-*``, ``ermsb``, ``prefer-*``, ``idiv*``, ``macrofusion``, ``false-deps-*``,
#: ``tuning-*``, ...) or a system instruction no kernel contains (``pconfig``, ``enqcmd``, ...): a
#: CPU without it runs the code all the same.
ISA_FEATURES: Dict[str, Tuple[str, ...]] = {
    "x86_64": (
        "sse", "ssse3", "avx", "amx", "fma", "f16c", "evex512", "xop", "tbm", "bmi", "lzcnt", "popcnt",
        "movbe", "adx", "aes", "vaes", "pclmul", "vpclmulqdq", "gfni", "sha", "cmov", "cx16", "crc32",
        "sahf", "prfchw", "mmx", "x87",
    ),
    "aarch64": (
        "neon", "fp-armv8", "fullfp16", "fp16fml", "sve", "sme", "dotprod", "i8mm", "bf16", "f32mm", "f64mm",
        "crc", "aes", "sha2", "sha3", "sm4", "lse", "rdm", "rcpc", "complxnum", "jsconv", "fptoint",
        "v8", "v9",
    ),
}
#: prefixes of LLVM tuning flags, left out where an architecture has no whitelist above
TUNING_PREFIXES = ("fast-", "slow-", "no-bypass-delay", "prefer-", "idiv", "false-deps-", "tuning-", "fuse-",
                   "macrofusion", "branchfusion", "ermsb", "fsrm", "vzeroupper", "allow-light-", "use-", "disable-")


def isa_features(features: Iterable[str], arch: Optional[str]) -> List[str]:
    """The instruction-set features among LLVM CPU ``features`` of ``arch`` (tuning flags left out)."""
    allowed = ISA_FEATURES.get(arch or "")
    if allowed is None:
        return sorted(f for f in set(features) if not f.startswith(TUNING_PREFIXES))
    return sorted(f for f in set(features) if f.startswith(allowed))


def cpu_features(target: TargetDict) -> List[str]:
    """Instruction-set features the target's host code may use (empty when there is no CPU code to check)."""
    host = target if target.get("kind") == "llvm" else target.get("host")
    if not isinstance(host, dict) or "mcpu" not in host:
        return []
    import tvm

    t = tvm.target.Target({k: v for k, v in host.items() if k in ("kind", "mtriple", "mcpu", "mattr")})
    return isa_features(_tvm_codegen().llvm_get_cpu_features(t), target_arch(host))


def isa_family(target: TargetDict) -> str:
    """The family of CPUs whose kernels a target's tuning records fit: ``x86_64-avx512`` (AVX-512
    foundation), ``x86_64-avx2`` (AVX2 and FMA), ``x86_64``, ``aarch64``; ``cuda`` for a GPU target."""
    if target.get("kind") != "llvm":
        return str(target.get("kind"))
    arch = target_arch(target) or host_arch()
    if arch != "x86_64":
        return arch
    features = set(cpu_features(target))
    if "avx512f" in features:
        return "x86_64-avx512"
    if {"avx2", "fma"} <= features:
        return "x86_64-avx2"
    return "x86_64"


def cross_compiler(target: TargetDict) -> Optional[str]:
    """The C++ compiler that links a library for ``target`` here; None means the default one."""
    arch = target_arch(target)
    if arch is None or arch == host_arch():
        return None
    return f"{arch}-linux-gnu-g++"
