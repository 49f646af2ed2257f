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


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so comparisons see content only."""
    return json.loads(json.dumps(value))


__all__ = ["FORMAT", "changes", "marker_path", "read_marker", "write_marker"]
