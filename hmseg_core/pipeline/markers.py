"""Stage markers: ``<runs>/stages/<stage>[.<item>].json``, written atomically when a stage finishes.

A marker holds the stage's inputs (the resolved settings and the digests of what it read) and its
result (paths relative to the run folder, so the folder can move). A marker whose inputs equal
what the config asks for now means the stage is done; one whose inputs differ is stale.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..io import atomic_write_json

FORMAT = "hmseg-zoo-stage"


def marker_path(runs: Path, stage: str, item: str = "") -> Path:
    return runs / "stages" / (f"{stage}.{item}.json" if item else f"{stage}.json")


def read_marker(path: Path) -> Optional[Dict[str, Any]]:
    """The marker at ``path``, or ``None`` when there is none (markers are written whole or not at all)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None


def write_marker(path: Path, stage: str, item: str, inputs: Dict[str, Any], result: Dict[str, Any], wall_s: float) -> Dict[str, Any]:
    doc = {
        "format": FORMAT, "stage": stage, "item": item, "inputs": inputs, "result": result, "wall_s": wall_s,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(path, doc)
    return doc


def changes(old: Any, new: Any, prefix: str = "") -> List[str]:
    """Dotted keys whose values differ between two input documents (JSON values; tuples as lists)."""
    old, new = _plain(old), _plain(new)
    if isinstance(old, dict) and isinstance(new, dict):
        out: List[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += changes(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "(all)"]


def describe_changes(old: Any, new: Any, limit: int = 6) -> str:
    """The keys :func:`changes` finds, each with its old and new value where both are short scalars:
    ``train.epochs (200 -> 80), train.data_root ('/data/camvid' -> '')``; past ``limit`` keys, `` ...``."""
    keys = changes(old, new)
    return ", ".join(_change(k, _lookup(old, k), _lookup(new, k)) for k in keys[:limit]) + (" ..." if len(keys) > limit else "")


def _change(key: str, old: Any, new: Any) -> str:
    def short(v: Any) -> Optional[str]:
        if isinstance(v, (dict, list, tuple)):
            return None
        text = repr(v) if isinstance(v, str) else json.dumps(v)
        return text if len(text) <= 60 else None

    a, b = short(old), short(new)
    return f"{key} ({a} -> {b})" if a is not None and b is not None else key


def _lookup(doc: Any, key: str) -> Any:
    """The value at dotted ``key`` in ``doc`` (``None`` where the path ends early)."""
    if key == "(all)":
        return doc
    for part in key.split("."):
        if not isinstance(doc, dict):
            return None
        doc = doc.get(part)
    return doc


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so comparisons see content only."""
    return json.loads(json.dumps(value))


__all__ = ["FORMAT", "changes", "describe_changes", "marker_path", "read_marker", "write_marker"]
