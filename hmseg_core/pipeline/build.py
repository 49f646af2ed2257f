"""The zoo build: the plan of steps, the state of each, and the loop that runs what is not done.

A step is a stage and an item (a budget, a variant, or nothing). Its **inputs** are what the config
asks for now, resolved (the recipe with the variant's model, the digests of what upstream stages
produced); its state is

* ``done``: a marker with these inputs exists, the step is skipped;
* ``stale``: a marker exists but its inputs differ, or a run folder left by an earlier (killed or
  adopted) run was started with other settings: the differing keys are reported. A costly stage
  (lut, search, train) stops the build there (``--redo stage:item`` sets the old run aside); a
  cheap one runs again;
* ``partial``: a training or search run folder with a ``last.pt`` and the same settings: resumed;
* ``ready``: nothing there yet (a search or training step may then adopt a result finished elsewhere
  with the same recipe: :meth:`ZooBuild.adoptable_search`, :meth:`ZooBuild.adoptable`); ``waiting``: an
  upstream step is not done.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

from ..config import TrainConfig
from ..io import digest_json
from ..search.config import SearchConfig
from . import COSTLY, STAGES
from . import steps as work
from .config import ZooConfig
from .markers import changes, describe_changes, marker_path, read_marker, write_marker

Log = Callable[[str], None]

#: settings that say where a run lives, not what it computes (a moved folder keeps its results)
WHERE = ("out_dir", "teacher", "lut")

#: settings that change how fast a run goes, not what it learns: a step done (or half done) with other
#: values stays done (resumes); a machine with more cores may raise them
SPEED = ("threads", "num_workers")


#: the stages whose inputs hold a whole recipe, and its config class
RECIPES = {"train": TrainConfig, "search": SearchConfig}

#: how an upstream step that is not done is described to the steps that need it
UNFINISHED = {"ready": "not run yet", "partial": "in progress", "stale": "stale", "waiting": "waiting"}


def _stderr(msg: str) -> None:
    print(f"zoo: {msg}", file=sys.stderr, flush=True)


class Waiting(Exception):
    """An upstream step is not done; the message names it."""


class BuildError(ValueError):
    """The build cannot go on as configured (a costly stage's inputs changed); the message says what to do."""


@dataclass
class StepState:
    stage: str
    item: str
    state: str  # done | stale | partial | ready | waiting
    detail: str = ""
    inputs: Optional[Dict[str, Any]] = None
    marker: Optional[Dict[str, Any]] = None
    adopt: Any = None  # a ready step's adopted result: a checkpoint (train, :meth:`ZooBuild.adoptable`) or a
    #                    shipped search's record (search, :meth:`ZooBuild.adoptable_search`)

    @property
    def label(self) -> str:
        return f"{self.stage} {self.item}".strip()


def select_stages(only: Optional[Sequence[str]] = None, until: Optional[str] = None) -> List[str]:
    """The stages ``--only`` and ``--until`` leave (all by default), in build order."""
    unknown = [s for s in list(only or []) + ([until] if until else []) if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage {unknown[0]!r}; stages: {', '.join(STAGES)}")
    chosen = list(STAGES[: STAGES.index(until) + 1] if until else STAGES)
    return [s for s in chosen if not only or s in only]


class ZooBuild:
    """The steps of one zoo config over one run folder (nothing is written until :meth:`build` runs a step)."""

    def __init__(self, cfg: ZooConfig, runs: Path, log: Log = _stderr) -> None:
        self.cfg, self.runs, self.log = cfg, Path(runs), log
        self._states: Dict[Tuple[str, str], StepState] = {}
        self._macs_cache: Dict[str, int] = {}

    # ------------------------------------------------------------------ the plan
    def steps(self) -> List[Tuple[str, str]]:
        cfg = self.cfg
        plan: List[Tuple[str, str]] = [("lut", "")] + [("search", b) for b in cfg.budget_labels()]
        for stage in ("train", "eval", "export"):
            plan += [(stage, v) for v in cfg.variants()]
        return plan + [("measure", ""), ("index", "")]

    def folder(self, stage: str, item: str = "") -> Optional[Path]:
        """Where a step writes (``None``: only its marker and the run folder's top level)."""
        return {"lut": self.runs / "lut", "search": self.runs / "search" / item, "train": self.runs / "train" / item,
                "eval": self.runs / "train" / item, "export": self.runs / "packages" / item}.get(stage)

    def data_root(self) -> str:
        return str(Path(self.cfg.data_root).expanduser().resolve()) if self.cfg.data_root else ""

    def result(self, stage: str, item: str = "") -> Dict[str, Any]:
        """An upstream step's result; :class:`Waiting` unless it is done with the inputs asked for now."""
        st = self.state(stage, item)
        if st.state != "done":
            raise Waiting(f"{st.label} ({UNFINISHED[st.state]})")
        return st.marker["result"]

    # ------------------------------------------------------------------ planned configs
    def search_config(self, label: str) -> SearchConfig:
        lut = self.result("lut")
        budget = next(b for b in self.cfg.search.budgets if self.cfg.budget_label(b) == label)
        return dataclasses.replace(
            self.cfg.search_recipe(), base=self.cfg.lut.base, metric="latency_ms", lut=str(self.runs / lut["table"]),
            target=budget * lut["base_measured_ms"], out_dir=str(self.folder("search", label)), data_root=self.data_root(),
        ).validate()

    def train_config(self, variant: str) -> TrainConfig:
        from ..train import pin_teacher

        cfg = self.cfg
        teacher = self.teacher_of(variant)
        teacher_file = str(self.runs / self.result("train", teacher)["checkpoint"]) if teacher else ""
        planned = dataclasses.replace(cfg.train_recipe(), model=self.model(variant), out_dir=str(self.folder("train", variant)),
                                      data_root=self.data_root(), teacher=teacher_file, teacher_digest="")
        return pin_teacher(planned.validate())

    def model(self, variant: str) -> str:
        """What ``variant`` trains: a baseline's registered name, or its search's genotype."""
        budget = self.cfg.searched(variant)
        return self.result("search", budget)["genotype"] if budget else variant

    def teacher_of(self, variant: str) -> str:
        """The baseline ``variant`` distils from: ``train.teacher`` for a network of fewer MACs than the
        teacher's; "" for the teacher itself and for a network as large or larger, which learn from the
        labels alone (a smaller teacher would pull them down to its own accuracy)."""
        teacher = self.cfg.train.teacher
        if not teacher or variant == teacher:
            return ""
        return teacher if self._macs(variant) < self._macs(teacher) else ""

    def _macs(self, variant: str) -> int:
        if variant not in self._macs_cache:
            from ..profile import count_macs
            from ..registry import create_model

            net = create_model(self.model(variant), self.cfg.lut.classes, boosting=False)
            self._macs_cache[variant] = count_macs(net, tuple(self.cfg.export.input_size))
        return self._macs_cache[variant]

    def kept(self) -> Dict[str, Path]:
        """The entries of ``measure.published`` (the shipped zoo by default) that this build does not make, by
        name: the measure stage times them beside the build's variants, so that ``zoo publish`` gives every
        entry of that index latencies of one run. Empty for a build on generated scenes (its networks are
        not that zoo's) or without such an index."""
        from ..runtime.zoo import ModelZoo, ZooError

        index = self.cfg.measure.published_index()
        if index is None or not self.cfg.data_root or not index.is_file():
            return {}
        try:
            variants = ModelZoo.load(index).variants
        except (ZooError, OSError):
            return {}
        ours = set(self.cfg.variants())
        return {v.name: Path(v.checkpoint) for v in variants if v.name not in ours}

    def eval_data(self, variant: str) -> Path:
        """The data the variant is evaluated on: the data set, or the synthetic set its training generated."""
        return Path(self.data_root()) if self.cfg.data_root else self.folder("train", variant) / "synthetic"

    # ------------------------------------------------------------------ inputs
    def inputs(self, stage: str, item: str) -> Dict[str, Any]:
        """What a step computes from, as the config asks now (:class:`Waiting` if upstream is not done)."""
        cfg = self.cfg
        if stage == "lut":
            from ..machine import cpu_model, usable_cores

            return {"lut": dataclasses.asdict(cfg.lut), "machine": {"cpu": cpu_model(), "cores": usable_cores()}}
        if stage == "search":
            return {"search": _settings(self.search_config(item).to_dict()), "lut_sha256": self.result("lut")["sha256"]}
        if stage == "train":
            return {"train": _settings(self.train_config(item).to_dict())}
        if stage == "eval":
            recipe = cfg.train_recipe()
            return {"checkpoint_sha256": self.result("train", item)["sha256"], "split": recipe.val_split,
                    "layout": recipe.layout, "data": self.data_root() or "synthetic"}
        if stage == "export":
            return {"checkpoint_sha256": self.result("train", item)["sha256"], "export": dataclasses.asdict(cfg.export)}
        if stage == "measure":
            from ..machine import cpu_model, usable_cores
            from ..runtime.source import file_digest

            inputs = {"packages": {v: self.result("export", v)["metadata_sha256"] for v in cfg.variants()},
                      "measure": dataclasses.asdict(cfg.measure), "machine": {"cpu": cpu_model(), "cores": usable_cores()}}
            kept = self.kept()
            if kept:  # only then: a measure done before other entries were measured stays done
                inputs["kept"] = {name: file_digest(path) for name, path in kept.items()}
            return inputs
        if stage == "index":
            return {"measure": digest_json(self.result("measure")), "eval": {v: self.result("eval", v)["miou"] for v in cfg.variants()},
                    "packages": {v: self.result("export", v)["metadata_sha256"] for v in cfg.variants()}}
        raise ValueError(f"unknown stage {stage!r}")

    # ------------------------------------------------------------------ state
    def state(self, stage: str, item: str = "") -> StepState:
        key = (stage, item)
        if key not in self._states:
            self._states[key] = self._state(stage, item)
        return self._states[key]

    def _state(self, stage: str, item: str) -> StepState:
        try:
            inputs = self.inputs(stage, item)
        except Waiting as w:
            return StepState(stage, item, "waiting", f"needs {w}")
        marker = read_marker(marker_path(self.runs, stage, item))
        if marker is not None:
            recorded = dict(marker["inputs"])
            if stage in RECIPES and isinstance(recorded.get(stage), dict):
                recorded[stage] = _with_defaults(stage, recorded[stage])
            if not changes(recorded, inputs):
                return StepState(stage, item, "done", f"finished {marker['finished']}", inputs, marker)
            return StepState(stage, item, "stale", "inputs changed: " + describe_changes(recorded, inputs), inputs, marker)
        folder = self.folder(stage, item)
        if stage in ("search", "train") and (folder / "last.pt").exists():
            diff = self._folder_changes(stage, folder, inputs)
            if diff:
                return StepState(stage, item, "stale", f"{folder} was started with other settings: {diff}", inputs)
            return StepState(stage, item, "partial", f"resumes {folder / 'last.pt'}", inputs)
        if stage == "train":
            adopt = self.adoptable(item, inputs)
            return StepState(stage, item, "ready", f"adopts {adopt} (trained with this recipe)" if adopt else "", inputs,
                             adopt=adopt)
        if stage == "search":
            adopt = self.adoptable_search(item, inputs)
            detail = f"adopts {self.cfg.search.adopt_file()} {item} (searched with this recipe)" if adopt else ""
            return StepState(stage, item, "ready", detail, inputs, adopt=adopt)
        if stage == "measure" and inputs.get("kept"):
            detail = f"also {', '.join(inputs['kept'])} of {self.cfg.measure.published_index()} (not built here)"
            return StepState(stage, item, "ready", detail, inputs)
        return StepState(stage, item, "ready", "", inputs)

    def adoptable(self, variant: str, inputs: Dict[str, Any]) -> Optional[Path]:
        """A finished checkpoint of ``variant`` in the zoo of ``train.adopt`` (the shipped one by default)
        trained with the planned recipe, so it need not be trained again; ``None`` if there is none.

        Its recorded settings must equal the plan's but for where the data lives and the threads and
        loader workers (they change the speed, not what is learned); a build on generated scenes adopts
        nothing (its evaluation data comes from its own training)."""
        from ..checkpoint import CheckpointError, load_checkpoint
        from ..runtime.zoo import ModelZoo, ZooError

        index = self.cfg.train.adopt_index()
        if index is None or not self.cfg.data_root or not index.is_file():
            return None
        try:
            entry = {v.name: v for v in ModelZoo.load(index).variants}.get(variant)
            recorded = load_checkpoint(entry.checkpoint)["config"] if entry is not None else None
        except (CheckpointError, ZooError, OSError, KeyError):
            return None
        if not isinstance(recorded, dict):
            return None
        return Path(entry.checkpoint) if same_recipe("train", recorded, inputs["train"]) else None

    def adoptable_search(self, label: str, inputs: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """The record of budget ``label``'s search in the searches file of ``search.adopt`` (the one
        beside the shipped zoo by default) if it searched with the planned recipe; ``None`` if there is none.

        The budget is a multiple of the base's latency on the machine that searched, so the genotype
        carries to another machine as the same fraction of the base; its target in ms and its latency
        table are that machine's, and are not compared (nor data root, threads, loader workers)."""
        path = self.cfg.search.adopt_file()
        if path is None or not self.cfg.data_root or not path.is_file():
            return None
        try:
            record = ((yaml.safe_load(path.read_text()) or {}).get("searches") or {}).get(label)
        except (OSError, yaml.YAMLError, AttributeError):
            return None
        if not isinstance(record, dict) or not isinstance(record.get("settings"), dict) or "result" not in record:
            return None
        return record if same_recipe("search", record["settings"], inputs["search"], ("target",)) else None

    def _folder_changes(self, stage: str, folder: Path, inputs: Dict[str, Any]) -> str:
        """How the settings a run folder was started with (its ``config.yaml``) differ from the plan (empty:
        they do not); keys the folder's config predates count with their defaults (a run adopted from before
        they existed)."""
        path = folder / "config.yaml"
        try:
            recorded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            return f"{path} (unreadable)"
        return describe_changes({stage: _with_defaults(stage, recorded)}, {stage: inputs[stage]})

    # ------------------------------------------------------------------ running
    def run_step(self, stage: str, item: str) -> Dict[str, Any]:
        """Do one step's work (its inputs must be ready) and return its result."""
        cfg, runs = self.cfg, self.runs
        if stage == "lut":
            return work.build_lut(cfg.lut, self.folder("lut"), runs)
        if stage == "search":
            adopt = self.state(stage, item).adopt
            if adopt is not None:
                return {**adopt["result"], "adopted": f"{cfg.search.adopt_file()} {item}"}
            return work.run_search(self.search_config(item), cfg.lut.threads, runs)
        if stage == "train":
            adopt = self.state(stage, item).adopt
            if adopt is not None:
                return work.adopt_train(adopt, self.train_config(item), runs)
            return work.run_train(self.train_config(item), runs)
        if stage == "eval":
            ckpt = runs / self.result("train", item)["checkpoint"]
            return work.run_eval(ckpt, self.eval_data(item), cfg.train_recipe(), self.folder("eval", item) / "val.json", runs)
        if stage == "export":
            ckpt = runs / self.result("train", item)["checkpoint"]
            return work.run_export(ckpt, self.folder("export", item), cfg.export, item, runs, self.log)
        if stage == "measure":
            from ..runtime.source import is_package

            packages = {v: runs / self.result("export", v)["package"] for v in cfg.variants()}
            for name, path in self.kept().items():  # the published index's other entries, timed beside them
                packages[name] = path if is_package(path) else runs / work.run_export(
                    path, runs / "measure" / name, cfg.export, name, runs, self.log)["package"]
            return {**work.run_measure(packages, cfg.measure, self.log), "kept": self.state(stage).inputs.get("kept", {})}
        if stage == "index":
            return work.write_index(runs, self.index_rows(), self.pareto_backend())
        raise ValueError(f"unknown stage {stage!r}")

    def pareto_backend(self) -> str:
        return self.cfg.measure.pareto or self.cfg.measure.backends[0]

    def index_rows(self) -> List[Dict[str, Any]]:
        """One zoo index entry per variant: package, val mIoU, and what the build knows about it."""
        cfg, runs = self.cfg, self.runs
        measured = self.result("measure")
        latency, machine = measured["latency"], f"{measured['machine']['cpu']}, {measured['threads']} threads"
        rows = []
        for v in cfg.variants():
            trained, package = self.result("train", v), self.result("export", v)
            params, macs = work.network_costs(runs / trained["checkpoint"], package["input_size"])
            lat = latency.get(v, {})
            main = lat.get(self.pareto_backend(), {}).get("total_p95_ms")
            budget = cfg.searched(v)
            rows.append({
                "name": v, "package": package["package"], "miou": self.result("eval", v)["miou"],
                "genotype": trained["genotype"], "params": params, "macs": macs, "input_size": package["input_size"],
                "latency_ms": main, "latency": {b: latency_entry(s) for b, s in lat.items()}, "measured_on": machine,
                "source": f"search at {budget} of {cfg.lut.base} ({self.result('search', budget)['target_ms']:.2f} ms)" if budget else "baseline",
                "distilled_from": self.teacher_of(v) or None,
                "checkpoint_pt": trained["checkpoint"],
            })
        return rows

    def set_aside(self, stage: str, item: str) -> None:
        """``--redo``: the step's marker removed and, for a costly stage, its folder renamed ``<folder>.stale-<time>``."""
        marker = marker_path(self.runs, stage, item)
        folder = self.folder(stage, item)
        if stage in COSTLY and folder is not None and folder.exists():
            aside = folder.with_name(f"{folder.name}.stale-{_dt.datetime.now():%Y%m%d-%H%M%S}")
            folder.rename(aside)
            self.log(f"set aside {folder} -> {aside.name}")
        if marker.exists():
            marker.unlink()
        self._states.clear()

    def lock(self):
        """An exclusive lock on the run folder (``<runs>/build.lock``) for this process's lifetime: two builds
        in one folder would train the same variant twice over one ``last.pt``."""
        self.runs.mkdir(parents=True, exist_ok=True)
        f = open(self.runs / "build.lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            raise BuildError(f"{self.runs}: another zoo build runs in this folder (pid {f.read().strip() or '?'})") from None
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        return f

    def build(self, stages: Sequence[str] = STAGES, dry_run: bool = False, redo: Iterable[str] = ()) -> List[StepState]:
        """Run every step of ``stages`` that is not done, in order; returns the states it found."""
        lock = None if dry_run else self.lock()
        try:
            return self._build(stages, dry_run, set(redo))
        finally:
            if lock is not None:
                lock.close()

    def _build(self, stages: Sequence[str], dry_run: bool, redo: set) -> List[StepState]:
        seen = []
        for stage, item in self.steps():
            if stage not in stages:
                continue
            if not dry_run and (stage in redo or f"{stage}:{item}" in redo):
                self.set_aside(stage, item)
            st = self.state(stage, item)
            seen.append(st)
            if st.state == "done":
                self.log(f"skip {st.label}: done ({st.detail})")
                continue
            if st.state == "waiting":
                self.log(f"wait {st.label}: {st.detail}")
                continue
            if st.state == "stale" and stage in COSTLY:
                message = (f"{st.label}: {st.detail}; restore the config, or pass --redo {stage}:{item or stage} "
                           f"to set the old run aside and start it again")
                if dry_run:
                    self.log(f"stop {message}")
                    continue
                raise BuildError(message)
            verb, detail = {"partial": "resume", "stale": "redo"}.get(st.state, "run"), st.detail
            if st.adopt is not None:
                verb, detail = "adopt", st.detail.removeprefix("adopts ")
            self.log(f"{'would ' if dry_run else ''}{verb} {st.label}{': ' + detail if detail else ''}")
            if dry_run:
                continue
            t0 = time.time()
            result = self.run_step(stage, item)
            write_marker(marker_path(self.runs, stage, item), stage, item, st.inputs, result, time.time() - t0)
            self._states.clear()  # downstream inputs may read this result now
        return seen


def latency_entry(stats: Dict[str, float]) -> Dict[str, float]:
    """A bench row as an index entry keeps it: end to end (image in, labels out) and the network alone, ms."""
    return {"p50_ms": stats["total_median_ms"], "p95_ms": stats["total_p95_ms"],
            "network_p50_ms": stats["median_ms"], "network_p95_ms": stats["p95_ms"]}


def _with_defaults(stage: str, recorded: Dict[str, Any]) -> Dict[str, Any]:
    """Settings recorded by an earlier run as step inputs, the keys they predate at their defaults: a key
    added to the recipe later, left at its default, changes nothing that run computed."""
    return _settings({**RECIPES[stage]().to_dict(), **recorded})


def same_recipe(stage: str, recorded: Dict[str, Any], planned: Dict[str, Any], also: Sequence[str] = ()) -> bool:
    """Whether settings recorded elsewhere learn what the plan learns: equal but for where the data lives,
    the threads and loader workers (:data:`SPEED`: not step inputs at all) and the keys ``also``."""
    ignore = ("data_root", *also)
    return not changes({k: v for k, v in _with_defaults(stage, recorded).items() if k not in ignore},
                       {k: v for k, v in planned.items() if k not in ignore})


def _settings(d: Dict[str, Any]) -> Dict[str, Any]:
    """A resolved training or search config as step inputs: without where it lives (:data:`WHERE`) and
    what changes its speed only (:data:`SPEED`), the data root resolved."""
    out = {k: v for k, v in d.items() if k not in WHERE + SPEED}
    if out.get("data_root"):
        out["data_root"] = str(Path(out["data_root"]).expanduser().resolve())
    return out


__all__ = ["BuildError", "StepState", "Waiting", "ZooBuild", "latency_entry", "select_stages"]
