"""Compile on first use: a TVM library for this machine, built from a model package and cached.

A package exported on another machine (another CPU family), or with ONNX only, has no library
this CPU can run. The TVM backend then builds one here, the way ``hmseg-core export`` does: the
network is rebuilt from the package's ``checkpoint.pt`` (:func:`~.export.export_graphs`), the
records of this CPU's ISA family (shipped + the user's) are applied, and the library is written
to the user's cache, never into the package (which may be read-only)::

    $XDG_CACHE_HOME/hmseg/libraries/<package digest>/<target key>.so    (~/.cache/hmseg/...)
    $XDG_CACHE_HOME/hmseg/libraries/<package digest>/<target key>.json   its metadata entry

Later starts load the cached library; ``hmseg-core tune`` rebuilds it with the records it adds.
An entry notes the records it was compiled with (:func:`~.records.records_state`): once they
change (a new hmseg ships new records, a tuning run adds to the user's), the library is out of
date and the next first use compiles it again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from ..io import atomic_write_json, digest, digest_json
from .package import CHECKPOINT, PARAMS, ModelPackage, PackageError
from .records import default_tuning_db, records_state, user_cache
from .targets import TargetDict, target_key
from .tuning import TuningOptions

Log = Callable[[str], None]
#: set to 0 to refuse a package without a library for this CPU instead of compiling one
COMPILE_ENV = "HMSEG_COMPILE_ON_FIRST_USE"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


_log: Log = _stderr


def set_compile_log(log: Optional[Log]) -> None:
    """Where first-use compiles report their progress (default: stderr); a ROS node passes its logger's ``info``."""
    global _log
    _log = log or _stderr


def compile_log() -> Log:
    return _log


def compile_enabled() -> bool:
    return os.environ.get(COMPILE_ENV, "1") != "0"


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/hmseg/libraries`` (``~/.cache/hmseg/libraries``)."""
    return user_cache() / "libraries"


def package_digest(package: ModelPackage) -> str:
    """What a library compiled from ``package`` depends on: the network, its weights, the input size
    (not the metadata's latency records or the libraries it lists)."""
    m = package.metadata
    return digest_json({"genotype": m["genotype"], "input_size": m["input_size"], "format_version": m["format_version"],
                        "checkpoint": m["files"].get(CHECKPOINT), "params": m["files"].get(PARAMS),
                        "names": (m.get("params") or {}).get("names")})


def cache_paths(package: ModelPackage, target: TargetDict) -> tuple:
    """``(library, metadata)`` paths of ``package``'s cached library for ``target``."""
    folder = cache_root() / package_digest(package)
    key = target_key(target)
    return folder / f"{key}.so", folder / f"{key}.json"


def _cache_entry(package: ModelPackage, target: TargetDict) -> tuple:
    """``(entry, why)``: the metadata entry of the cached library (``file`` is its absolute path), or
    None and why it cannot be used (None when there is no entry at all)."""
    import json

    import tvm

    so, meta = cache_paths(package, target)
    try:
        entry = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None, None
    if entry.get("tvm") != tvm.__version__:
        return None, f"the cached library was built by TVM {entry.get('tvm')}"
    if not so.is_file() or digest(so) != entry.get("sha256"):
        return None, "the cached library's file is missing or damaged"
    if entry.get("records") != records_state(entry.get("records_db"), entry.get("records_shipped", True)):
        return None, "the tuning records changed since the cached library was compiled"
    return entry, None


def cached_library(package: ModelPackage, target: TargetDict) -> Optional[Dict[str, Any]]:
    """The metadata entry of the cached library (``file`` is its absolute path), or None when there
    is none, or it was built by another TVM, its file does not match its digest, or the tuning
    records it was compiled with have changed."""
    return _cache_entry(package, target)[0]


def compile_into_cache(package: ModelPackage, target: TargetDict, tuning: Optional[TuningOptions] = None,
                       log: Optional[Log] = None, executable=None, entry: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Build ``package``'s library for ``target`` with the records of its ISA family and cache it
    (or cache an ``executable`` with its ``entry`` already built by :func:`~.export.build_library`)."""
    from .export import build_library, export_graphs, relax_module, write_library

    log = log or _log
    tuning = tuning or TuningOptions(db_root=default_tuning_db(), layout=package_layout(package))
    so, meta = cache_paths(package, target)
    if executable is None:
        graphs = export_graphs(package.checkpoint(), package.input_size)
        if graphs.names != package.metadata["params"]["names"]:
            raise PackageError(f"{package.root}: the network rebuilt from {CHECKPOINT} takes its weights in another order "
                               f"than {PARAMS}; export the package again with this hmseg")
        executable, entry = build_library(relax_module(graphs, package.input_size), target, tuning, log)
    write_library(executable, target, so)
    entry = {**entry, "file": str(so), "sha256": digest(so), "package": package_digest(package), "cached": True,
             "records_db": str(tuning.db_root) if tuning.db_root is not None else None, "records_shipped": tuning.shipped,
             "records": records_state(tuning.db_root, tuning.shipped)}
    atomic_write_json(meta, entry)
    log(f"{package.root.name}: library for {target_key(target)} cached in {so}")
    return entry


def first_use_library(package: ModelPackage, target: TargetDict, reason: str, log: Optional[Log] = None) -> Dict[str, Any]:
    """The cached library for ``target``, compiled now if there is none (the package has no library
    this machine runs: ``reason``)."""
    log = log or _log
    entry, stale = _cache_entry(package, target)
    if entry is not None:
        return entry
    if not compile_enabled():
        raise PackageError(f"{reason} (compiling on first use is off: {COMPILE_ENV}=0)")
    so, _ = cache_paths(package, target)
    why = stale or f"no TVM library for this machine ({reason.split(': ', 1)[-1].split('; build')[0]})"
    log(f"{package.root.name}: {why}; compiling one for {target_key(target)} now, once (cached in {so.parent})")
    return compile_into_cache(package, target, log=log)


def package_layout(package: ModelPackage) -> str:
    """The activation layout the package's libraries were compiled in (the default when it has none)."""
    from ..tensor_layouts import DEFAULT_LAYOUT

    layouts = {lib.get("layout", DEFAULT_LAYOUT) for lib in package.libraries}
    return layouts.pop() if len(layouts) == 1 else DEFAULT_LAYOUT
