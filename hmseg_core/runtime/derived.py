"""A checkpoint's model package, exported on first use for the compiled backends and cached.

The shipped zoo holds checkpoints (weights only). ONNX Runtime, OpenVINO and TVM run model packages,
so a checkpoint asked for on one of them is exported here once, at the network's input size (ONNX
graphs, no TVM library: the TVM backend compiles one itself on its first use, with the shipped
records), and later starts reuse it::

    $XDG_CACHE_HOME/hmseg/packages/<checkpoint digest>-<H>x<W>/       (~/.cache/hmseg/...)

The folder is written under a temporary name and renamed into place, so a kill leaves no half
package, and two processes exporting the same checkpoint at once both end with one whole package.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Callable, Optional, Tuple

from ..deploy.package import ModelPackage, PackageError
from ..deploy.records import user_cache
from ..io import digest
from .source import is_package

Log = Callable[[str], None]


def packages_root() -> Path:
    """``$XDG_CACHE_HOME/hmseg/packages`` (``~/.cache/hmseg/packages``)."""
    return user_cache() / "packages"


def derived_path(checkpoint: str | os.PathLike, size: Tuple[int, int]) -> Path:
    """Where the package of ``checkpoint`` at network size ``size`` (H, W) is kept."""
    return packages_root() / f"{digest(checkpoint, 16)}-{int(size[0])}x{int(size[1])}"


def can_export() -> bool:
    """Whether this installation can export ONNX graphs (torch.onnx's exporter needs onnx and onnxscript)."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript"))


def _usable(path: Path) -> bool:
    if not is_package(path):
        return False
    try:
        package = ModelPackage.load(path)
        return package.onnx is not None and all(package.path(f).is_file() for f in package.metadata["files"])
    except (PackageError, KeyError, TypeError):
        return False


def derived_package(checkpoint: str | os.PathLike, size: Tuple[int, int], log: Optional[Log] = None) -> Path:
    """The model package of ``checkpoint`` at network size ``size``: the cached one, else exported now."""
    from ..deploy.export import ExportOptions, export_package

    out = derived_path(checkpoint, size)
    if _usable(out):
        return out
    if out.exists():  # another hmseg's layout, or damaged: export it again
        shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if log:
        log(f"{Path(checkpoint).name}: exporting its ONNX graphs at {size[0]}x{size[1]} for the compiled backends, once "
            f"(cached in {out})")
    try:
        export_package(checkpoint, tmp, ExportOptions(input_size=tuple(size), targets=(), onnx=True, name=Path(checkpoint).stem),
                       log=lambda s: None)
        try:
            os.rename(tmp, out)
        except OSError:  # another process put its export there first
            if not _usable(out):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


__all__ = ["can_export", "derived_package", "derived_path", "packages_root"]
