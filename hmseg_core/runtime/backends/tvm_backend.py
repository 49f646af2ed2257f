"""Runs a package's compiled TVM library on the Relax virtual machine; compiles one on first use
where the package has none for this CPU (:mod:`hmseg_core.deploy.library_cache`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from ...deploy import library_cache
from ...deploy.package import ModelPackage, PackageError
from ...deploy.targets import cpu_features, host_arch, host_target, isa_features, target_arch
from ...deploy.tuning import TRANSFORM_PARAMS, transform_params
from ...machine import use_tvm_threads
from ...model import resize_to
from ..source import ModelSource
from . import BackendUnavailable, require_package


def _installed_tvm() -> str:
    try:
        import tvm
    except ImportError as e:
        raise BackendUnavailable(f"the tvm backend needs TVM: pip install 'hmseg[tvm]' ({e})") from None
    return tvm.__version__


class NoLibraryHere(PackageError):
    """The package has no library this machine runs (none of the kind, another architecture, missing
    instruction sets): one can be compiled here, where the others cannot be mended that way."""


def select_library(package: ModelPackage, device: str) -> Dict[str, Any]:
    """The package's library for this machine and device, or a :class:`PackageError` saying why none fits."""
    kind = "cuda" if device.startswith("cuda") else "llvm"
    libs = [lib for lib in package.libraries if lib["target"].get("kind") == kind]
    others = ", ".join(lib["target_key"] for lib in package.libraries) or "none"
    fix = f"`hmseg-core export CHECKPOINT {package.root} --overwrite --target {'cuda' if kind == 'cuda' else 'host'}` on this machine"
    if not libs:
        raise NoLibraryHere(f"{package.root}: no {kind} library in the package (it has: {others}); build one with {fix}")
    arch = host_arch()
    libs = [lib for lib in libs if target_arch(lib["target"]) in (None, arch)]
    if not libs:
        raise NoLibraryHere(f"{package.root}: compiled for another CPU architecture ({others}), this machine is {arch}; build with {fix}")
    host_features = set(cpu_features(host_target()))
    usable: List[Dict[str, Any]] = []
    missing_by_lib = {}
    for lib in libs:
        # instruction sets only: packages list LLVM's tuning flags too (fast-gather, ermsb, ...), which no CPU needs
        missing = sorted(set(isa_features(lib.get("cpu_features", []), target_arch(lib["target"]) or arch)) - host_features)
        (missing_by_lib.__setitem__(lib["target_key"], missing) if missing else usable.append(lib))
    if not usable:
        detail = "; ".join(f"{k} needs {', '.join(v[:8])}{' ...' if len(v) > 8 else ''}" for k, v in missing_by_lib.items())
        raise NoLibraryHere(f"{package.root}: compiled for a CPU with features this one lacks ({detail}); build with {fix}")
    # prefer the library built for exactly this CPU, then the most tuned one
    mcpu = host_target()["mcpu"]
    return max(usable, key=lambda lib: (lib["target"].get("mcpu") == mcpu, lib.get("tuning", {}).get("trials", 0)))


def library_for(package: ModelPackage, device: str, compile_missing: bool = True, log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """The library to run: one cached for this CPU (compiled here on first use, or rebuilt by
    ``hmseg-core tune``), else the package's own (:func:`select_library`), else, with ``compile_missing``,
    one compiled now with the records of this CPU's ISA family. ``file`` is relative to the package
    for the package's own libraries, absolute for cached ones."""
    if device.startswith("cuda"):
        return select_library(package, device)
    target = host_target()
    cached = library_cache.cached_library(package, target)
    if cached is not None:
        return cached
    try:
        return select_library(package, device)
    except NoLibraryHere as e:
        if not compile_missing:
            raise
        return library_cache.first_use_library(package, target, str(e), log)


class TVMBackend:
    """TVM Relax VM over ``lib/<target>.so`` with the folded weights from ``params.npz``.

    The library is compiled for one input size; other sizes are resized to it (the
    Segmenter resizes the logits back to the image's size). An image of that size goes through
    the library's whole-frame function (:meth:`labels`) when the package has one. A package without
    a library for this CPU gets one compiled on first use (``compile_missing``; progress to ``log``, else
    to :func:`hmseg_core.deploy.library_cache.set_compile_log`'s, else stderr), cached per machine.
    """

    name = "tvm"
    needs_package = True  # a checkpoint runs as its exported package (runtime.derived)

    def __init__(self, model: ModelSource, device: str = "cpu", threads: int = 0, compile_missing: bool = True,
                 log: Optional[Callable[[str], None]] = None) -> None:
        package = require_package(self.name, model)
        installed = _installed_tvm()
        lib = library_for(package, device, compile_missing, log)
        if lib.get("tvm") != installed:
            raise PackageError(
                f"{package.root}: {lib['file']} was built with TVM {lib.get('tvm')}, this is TVM {installed}; "
                f"install apache-tvm=={lib.get('tvm')} or export the package again"
            )
        import tvm
        from tvm import relax

        path = Path(lib["file"]) if lib.get("cached") else package.path(lib["file"])
        try:
            module = tvm.runtime.load_module(str(path))
        except Exception as e:  # the loader raises several types for unloadable shared objects
            raise PackageError(f"{path}: cannot be loaded ({type(e).__name__}: {e}); export the package again") from None
        self.device = tvm.cuda(0) if device.startswith("cuda") else tvm.cpu(0)
        self.threads = None if device.startswith("cuda") else use_tvm_threads(threads or torch.get_num_threads())
        self.vm = relax.VirtualMachine(module, self.device)
        self.input_size = package.input_size
        self.library = lib
        names = package.metadata["params"]["names"]
        params_path = package.path(package.metadata["params"]["file"])
        with np.load(params_path) as arrays:
            if len(arrays.files) != len(names):
                raise PackageError(f"{params_path}: {len(arrays.files)} arrays, metadata lists {len(names)}; export the package again")
            weights = [tvm.runtime.tensor(arrays[f"p{i:04d}"], self.device) for i in range(len(names))]
        # once per load: bias reshapes and other weight-only work compiled into the library
        self.params = list(self.vm[TRANSFORM_PARAMS](weights))
        self.frame = lib.get("frame")  # None in packages exported before libraries had it
        self.frame_params = list(self.vm[transform_params(self.frame)](weights)) if self.frame else None
        self.frame_size = self.input_size if self.frame else None

    def labels(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 ``(H, W, 3)`` at :attr:`frame_size` -> class ids uint8 ``(H, W)``: the whole frame in the library."""
        import tvm

        data = tvm.runtime.tensor(np.ascontiguousarray(rgb)[None], self.device)
        return self.vm[self.frame](data, *self.frame_params).numpy()[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            x = resize_to(x, self.input_size)
        import tvm

        data = tvm.runtime.tensor(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32), self.device)
        out = self.vm["main"](data, *self.params)
        return torch.from_numpy(out.numpy())
