"""Files written whole or not at all, and content digests.

Every file hmseg writes that another process may read while it is written (checkpoints,
latency tables and caches, package metadata) goes through :func:`atomic_write`: a temporary
file in the same folder, flushed and fsynced, then renamed over the target. A reader sees the
old file or the new one, never half of one, and a failed write leaves the old file as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

#: Mode of files written here: readable by everyone (mkstemp's default, 0600, would keep a
#: shared model package or cache from other users).
FILE_MODE = 0o644


def atomic_write_file(path: str | os.PathLike, produce: Callable[[Path], None]) -> Path:
    """Have ``produce(tmp)`` write a temporary file beside ``path`` (a writer that takes a file name:
    a linker, TVM's ``export_library``), then fsync it and rename it over ``path``.

    The folder is created if needed. On any error (or interrupt) the temporary file is removed
    and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        produce(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """:func:`atomic_write_file` for writers that take an open binary file (``torch.save``, ``json``)."""

    def produce(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    return atomic_write_file(path, produce)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, doc: Any, indent: Optional[int] = 2, sort_keys: bool = False) -> Path:
    """``doc`` as JSON (with a final newline)."""
    return atomic_write_text(path, json.dumps(doc, indent=indent, sort_keys=sort_keys) + "\n")


def stale_temporaries(path: str | os.PathLike) -> list:
    """Temporary files that :func:`atomic_write` left beside ``path`` when its process was killed
    (SIGKILL, power loss) in the middle of a write."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []


def digest(path: str | os.PathLike, length: Optional[int] = None) -> str:
    """SHA-256 of a file's contents, hex; the first ``length`` digits when given."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length] if length else h.hexdigest()


def digest_json(doc: Any, length: int = 16) -> str:
    """Short SHA-256 of a JSON-serialisable value in canonical form (sorted keys)."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:length]


__all__ = ["FILE_MODE", "atomic_write", "atomic_write_bytes", "atomic_write_file", "atomic_write_json", "atomic_write_text", "digest", "digest_json", "stale_temporaries"]
