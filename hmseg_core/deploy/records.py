"""Tuning records per ISA family: the ones hmseg ships, the user's own, and the old per-CPU folders.

MetaSchedule finds a record by its *workload* (the structure of the kernel's TIR), never by the
target it was tuned for, and replays the record's schedule without measuring it again. Records
tuned under one ``mcpu`` therefore serve every CPU that runs the same instruction sets, so they
are kept per ISA family (:func:`hmseg_core.deploy.targets.isa_family`)::

    <root>/<family>/database_workload.json        MetaSchedule's JSONDatabase, one JSON per line
    <root>/<family>/database_tuning_record.json

Records come from, in the order they are preferred: the user's database (``--tuning-db``, default
:func:`default_tuning_db`; tuning writes there), the user's folders of the old per-CPU layout
(``<root>/llvm-x86_64-znver5/``) of the same family, read as they are, and the records that ship
with hmseg beside the zoo's weights (:func:`shipped_root`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Set, Tuple

from .targets import TargetDict, isa_family

Log = Callable[[str], None]

#: the records that ship with hmseg, one folder per ISA family
SHIPPED_ROOT = Path(__file__).resolve().parent.parent / "zoo" / "records"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
#: the networks the folder's records were tuned for (:meth:`~.autotune.Tuner.record_coverage`)
COVERAGE = "variants.json"
_announced: Set[Path] = set()


def user_cache() -> Path:
    """hmseg's folder in the user's cache: ``$XDG_CACHE_HOME/hmseg`` (``~/.cache/hmseg``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")) / "hmseg"


def shipped_root() -> Optional[Path]:
    """The records that ship with hmseg: ``$HMSEG_SHIPPED_RECORDS`` when set (``none``: no shipped
    records at all, as on a CPU family hmseg has none for; the way to measure tuning from scratch),
    else :data:`SHIPPED_ROOT`."""
    env = os.environ.get("HMSEG_SHIPPED_RECORDS")
    if env is None:
        return SHIPPED_ROOT
    return None if env.strip().lower() in ("", "none") else Path(env).expanduser()


def records_state(db_root: Optional[Path], shipped: bool = True) -> str:
    """A short digest of the records a library compiled here gets: the shipped ones (their
    contents; with ``shipped``) and the user's database under ``db_root`` (each record file's size
    and modification time, which every tuning run changes; None: no database). A cached library
    or a latency measured with other records is out of date: a new hmseg ships new records, and
    ``hmseg-core tune`` adds to the user's."""
    from ..io import digest, digest_json

    root = shipped_root() if shipped else None
    ours = sorted((str(f.relative_to(root)), digest(f)) for f in root.glob(f"*/{RECORDS}")) if root is not None and root.is_dir() else []
    mine = []
    if db_root is not None and Path(db_root).is_dir():
        for f in sorted(Path(db_root).glob(f"*/{RECORDS}")):
            st = f.stat()
            mine.append((str(f.relative_to(db_root)), st.st_size, st.st_mtime_ns))
    return digest_json({"shipped": ours, "user": mine})[:16]


def default_tuning_db() -> Path:
    """The user's tuning records: ``$XDG_CACHE_HOME/hmseg/tuning`` (``~/.cache/hmseg/tuning``)."""
    return user_cache() / "tuning"


def has_records(folder: Path) -> bool:
    """Whether ``folder`` holds a MetaSchedule JSON database."""
    return (folder / WORKLOADS).is_file() and (folder / RECORDS).is_file()


def legacy_dirs(root: Path, target: TargetDict) -> List[Path]:
    """Folders of the old per-target layout (``<root>/llvm-<arch>-<mcpu>/``) whose CPU is of ``target``'s family."""
    if not root.is_dir() or target.get("kind") != "llvm":
        return []
    family = isa_family(target)
    found = []
    for folder in sorted(root.glob("llvm-*-*")):
        _, arch, mcpu = folder.name.split("-", 2)
        old = {"kind": "llvm", "mtriple": f"{arch}-linux-gnu", "mcpu": mcpu}
        try:
            same = has_records(folder) and isa_family(old) == family
        except Exception:  # a CPU name this LLVM does not know: not ours to read
            same = False
        if same:
            found.append(folder)
    return found


def repair(folder: Path, log: Log) -> None:
    """Cut a line that a killed tuning run left half-written at the end of a database file.

    MetaSchedule appends one JSON line per workload and per measured candidate; a process killed
    in the middle of a line leaves a file that MetaSchedule refuses to load. Only the last byte is
    read of a whole file (the folder is looked at on every start that weighs TVM, and a user's
    database of every measured candidate grows to megabytes)."""
    for name in (WORKLOADS, RECORDS):
        path = folder / name
        if not path.is_file() or path.stat().st_size == 0:
            continue
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                continue
        keep = path.read_bytes().rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(keep)
        log(f"tuning records: cut a half-written last line from {path} (a tuning run was killed while writing)")


@dataclass
class RecordSet:
    """The record folders one target reads, preferred first, and the one tuning writes to."""

    family: str
    writable: Optional[Path]
    sources: List[Path] = field(default_factory=list)

    def open(self, write: bool = False):
        """``(database to query and apply, the writable JSONDatabase or None)``; ``(None, None)`` when
        there is nothing to read. The writable folder is created only to ``write`` to it.

        Several folders are read as one ``OrderedUnionDatabase``: a kernel takes the best record of
        the first folder that has one, so the user's own measurements (made on this machine) win
        over shipped ones measured elsewhere."""
        from tvm.s_tir import meta_schedule as ms

        databases, user = [], None
        for folder in self.sources:
            if folder == self.writable:
                if not write and not has_records(folder):
                    continue
                folder.mkdir(parents=True, exist_ok=True)
                user = ms.database.JSONDatabase(work_dir=str(folder))
                databases.append(user)
            else:
                databases.append(ms.database.JSONDatabase(str(folder / WORKLOADS), str(folder / RECORDS), allow_missing=False))
        if not databases:
            return None, None
        return (databases[0] if len(databases) == 1 else ms.database.OrderedUnionDatabase(*databases)), user

    def readable(self) -> List[Path]:
        """The folders that hold records now."""
        return [f for f in self.sources if has_records(f)]


def record_set(target: TargetDict, db_root: Optional[Path], shipped: bool = True, log: Log = lambda s: None) -> RecordSet:
    """Where ``target``'s records are: ``db_root/<family>`` (written), old per-CPU folders of the
    family under ``db_root`` and the shipped ``<family>`` folder (read). GPU targets have none
    (they are compiled with DLight's default schedules)."""
    family = isa_family(target)
    if target.get("kind") != "llvm":
        return RecordSet(family, None, [])
    sources: List[Path] = []
    writable = None
    if db_root is not None:
        writable = Path(db_root) / family
        sources.append(writable)
        for old in legacy_dirs(Path(db_root), target):
            if old not in _announced:
                _announced.add(old)
                log(f"tuning records: reading {old} (old per-CPU layout) as part of ISA family {family}; "
                    f"new records go to {writable}")
            sources.append(old)
    for folder in sources:
        repair(folder, log)
    root = shipped_root() if shipped else None
    if root is not None and has_records(root / family):
        sources.append(root / family)
    return RecordSet(family, writable, sources)


def network_id(genotype: str, input_size: Tuple[int, int], layout: str) -> str:
    """A network as tuning sees it: its kernels follow from the genotype, the input size and the layout."""
    return f"{genotype}|{int(input_size[0])}x{int(input_size[1])}|{layout}"


def covered(folders: List[Path]) -> Set[str]:
    """The :func:`network_id` of every network that the records in ``folders`` were tuned for."""
    import json

    out: Set[str] = set()
    for folder in folders:
        try:
            doc = json.loads((Path(folder) / COVERAGE).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("networks"), list):
            out.update(str(n) for n in doc["networks"])
    return out


def add_coverage(folder: Path, networks: List[str]) -> None:
    """Record in ``folder`` that it covers ``networks`` (merged with what it listed)."""
    from ..io import atomic_write_json

    atomic_write_json(Path(folder) / COVERAGE, {"networks": sorted(covered([folder]) | set(networks))}, indent=1)


def prune(source: Path, destination: Path) -> Tuple[int, int]:
    """Copy the best valid record of each workload from ``source`` to ``destination`` (a folder to
    ship: the zoo's records are one record per kernel, not every candidate measured); returns
    ``(records in source, records written)``."""
    from tvm.s_tir import meta_schedule as ms

    src = ms.database.JSONDatabase(str(source / WORKLOADS), str(source / RECORDS), allow_missing=False)
    destination.mkdir(parents=True, exist_ok=True)
    for name in (WORKLOADS, RECORDS):
        (destination / name).unlink(missing_ok=True)
    dst = ms.database.JSONDatabase(work_dir=str(destination))
    src.dump_pruned(dst)
    (destination / COVERAGE).unlink(missing_ok=True)
    add_coverage(destination, sorted(covered([source])))
    return len(src), len(dst)
