"""``hmseg-core tune``: a wall-time budget of MetaSchedule tuning, spent where the frame's time goes.

1. Every variant (a package, a checkpoint, or each entry of a zoo index) is lowered for this CPU and
   its tasks extracted; the variants share operators, so their tasks are merged by workload.
2. Each variant is compiled with the records there are and its whole frame profiled kernel by
   kernel (:func:`~.bench.profile_vm`): a task's weight is its milliseconds per frame, summed over
   the variants.
3. Turn by turn, the task with the largest estimated time per frame (halved for every turn in a row
   that did not improve it) gets a chunk of trials. MetaSchedule appends each measured candidate to
   the user's database of the ISA family as it goes. A task whose only record comes from elsewhere
   (shipped, an old per-CPU folder) first has that schedule measured here, so tuning starts from it
   and the user's best (preferred when records are applied) is never worse than it, measured here.
4. After every chunk a small state file beside the records (``tune-<key>.json``, written
   atomically; the key digests the target, the variants and their tasks) holds the profile, the
   trials per task and the time spent: the same command run again (after a kill, say) skips the
   profile and continues with what is left of the budget.
5. At the end each variant is compiled with the new records and profiled again; a package's library
   goes to the first-use cache (:mod:`.library_cache`), which the TVM backend loads from then on.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..io import atomic_write_json, digest_json
from .export import Graphs, build_library, export_graphs, relax_module
from .package import ModelPackage
from .targets import TargetDict, host_arch, target_arch, target_key
from .tuning import (TRIALS_PER_ROUND, TuningOptions, _measuring_threads, _persistent_builder, _progress_callback, cpu_intrinsics_only,
                     extract_tasks, lower, measuring_runner, per_frame_module, search_strategy)

Log = Callable[[str], None]
DECAY = 0.5           # a task's priority is halved for every turn in a row that did not improve it
IMPROVED = 0.99       # a turn improves a task when its best time falls below this share of the last best
COVERED = 0.9         # a variant is tuned when its kernels with records took this share of its untuned frame


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Variant:
    """One network to tune for: its graphs at its input size, and its package (None for a checkpoint)."""

    name: str
    input_size: Tuple[int, int]
    graphs: Graphs
    package: Optional[ModelPackage]
    layout: str
    genotype: str = ""


def load_variants(spec: str | Path, input_size: Tuple[int, int] = (360, 480)) -> List[Variant]:
    """A package directory, a checkpoint (at ``input_size``) or a zoo index (every variant)."""
    from ..checkpoint import load_checkpoint
    from ..runtime.source import is_package
    from ..runtime.zoo import ModelZoo
    from ..tensor_layouts import DEFAULT_LAYOUT
    from .library_cache import package_layout

    path = Path(spec)
    if path.is_file() and path.suffix in (".yaml", ".yml", ".json"):
        entries = [(v.name, v.checkpoint) for v in ModelZoo.load(path).variants]
    else:
        entries = [(path.name if path.is_dir() else path.stem, path)]
    variants = []
    for name, where in entries:
        if is_package(where):
            package = ModelPackage.load(where)
            ckpt = package.checkpoint()
            variants.append(Variant(name, package.input_size, export_graphs(ckpt, package.input_size), package,
                                    package_layout(package), ckpt["genotype"]))
        else:
            ckpt = load_checkpoint(where)
            variants.append(Variant(name, input_size, export_graphs(ckpt, input_size), None, DEFAULT_LAYOUT, ckpt["genotype"]))
    return variants


def workload_key(mod) -> str:
    """A task's identity across processes: the structural hash of its normalised TIR."""
    import tvm_ffi

    return str(tvm_ffi.structural_hash(mod))


def kernel_workloads(lowered) -> Dict[str, str]:
    """Kernel (PrimFunc) name -> workload key, for the per-frame kernels of a lowered module."""
    import tvm
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    return {gv.name_hint: workload_key(_normalize_mod(f)) for gv, f in per_frame_module(lowered).functions.items()
            if isinstance(f, tvm.tirx.PrimFunc)}


def _weights(graphs: Graphs, device):
    import tvm

    state = graphs.net.state_dict()
    return [tvm.runtime.tensor(state[n].detach().cpu().numpy(), device) for n in graphs.names]


def build_and_profile(variant: Variant, target: TargetDict, db_root: Path, runs: int, log: Log, cache: bool = False) -> Tuple[float, Dict[str, Tuple[float, int]]]:
    """Compile ``variant`` with the records there are, time its whole frame: ``(frame ms, kernel -> (ms, calls))``;
    with ``cache``, a package's library also goes to the first-use cache."""
    import tvm
    from tvm import relax

    from .bench import profile_vm
    from .library_cache import compile_into_cache
    from .tuning import transform_params

    tuning = TuningOptions(db_root=db_root, layout=variant.layout)
    executable, entry = build_library(relax_module(variant.graphs, variant.input_size), target, tuning, log=lambda s: None)
    if cache and variant.package is not None:
        compile_into_cache(variant.package, target, tuning, log=log, executable=executable, entry=entry)
    device = tvm.cpu(0)
    vm = relax.VirtualMachine(executable, device)
    frame = entry["frame"]
    params = list(vm[transform_params(frame)](_weights(variant.graphs, device)))
    frame_ms, kernels = profile_vm(vm, variant.input_size, frame, params, device, runs)
    return frame_ms, {k.name: (k.ms, k.calls) for k in kernels}


class Tuner:
    """One tuning run over the merged tasks of some variants, resumable from its state file."""

    def __init__(self, variants: List[Variant], target: TargetDict, db_root: Path, log: Log = _stderr) -> None:
        from .records import record_set

        self.created = time.perf_counter()
        self.variants, self.target, self.db_root, self.log = variants, target, Path(db_root), log
        self.records = record_set(target, self.db_root, True, log)
        self.tasks: Dict[str, Any] = {}          # workload key -> ExtractedTask
        self.kernels: List[Dict[str, str]] = []  # per variant: kernel name -> workload key
        for v in variants:
            lowered = lower(relax_module(v.graphs, v.input_size), target, v.layout)
            for task in extract_tasks(lowered, target):
                self.tasks.setdefault(workload_key(task.dispatched[0]), task)
            self.kernels.append(kernel_workloads(lowered))
        self.key = digest_json({"target": target_key(target), "tasks": sorted(self.tasks),
                                "variants": sorted([v.name, *v.input_size] for v in variants)})
        self.state_path = self.records.writable / f"tune-{self.key}.json"
        self.state: Dict[str, Any] = {}
        if self.state_path.is_file():
            self.state = json.loads(self.state_path.read_text())

    # ------------------------------------------------------------------ state
    def save(self) -> None:
        atomic_write_json(self.state_path, self.state)

    def profile(self, runs: int = 10) -> None:
        """Each task's milliseconds and calls per frame, summed over the variants (skipped when the state has them)."""
        if self.state.get("tasks"):
            return
        tasks = {k: {"name": t.task_name, "ms": 0.0, "calls": 0, "trials": 0, "stale": 0, "best_ms": None, "done": False,
                     "foreign": False}
                 for k, t in self.tasks.items()}
        frames, other = {}, 0.0
        for v, kernels in zip(self.variants, self.kernels):
            self.log(f"tune: compiling {v.name} ({v.input_size[0]}x{v.input_size[1]}) with the records there are, to profile it")
            frame_ms, times = build_and_profile(v, self.target, self.db_root, runs, self.log)
            frames[v.name] = frame_ms
            for name, (ms, calls) in times.items():
                key = kernels.get(name)
                if key in tasks:
                    tasks[key]["ms"] += ms
                    tasks[key]["calls"] += calls
                else:  # VM builtins, and kernels with no task: not tuned
                    other += ms
        self.state = {"target": self.target, "family": self.records.family, "variants": [v.name for v in self.variants],
                      "frame_ms": frames, "other_ms": other, "tasks": tasks, "trials": 0, "spent_s": 0.0}
        self.save()

    def estimate(self, key: str) -> float:
        """A task's estimated milliseconds per frame: its best record measured here times its calls, else the profile."""
        t = self.state["tasks"][key]
        return t["ms"] if t["best_ms"] is None else t["best_ms"] * t["calls"]

    def frame_estimate(self) -> float:
        return self.state["other_ms"] + sum(self.estimate(k) for k in self.state["tasks"])

    def next_task(self, max_per_task: int) -> Optional[str]:
        open_ = [k for k, t in self.state["tasks"].items() if not t["done"] and t["trials"] < max_per_task]
        if not open_:
            return None
        return max(open_, key=lambda k: (self.estimate(k) or 1e-6) * DECAY ** self.state["tasks"][k]["stale"])

    def record_coverage(self) -> List[str]:
        """Note in the user's records folder which variants are now tuned: the kernels with a record
        took at least :data:`COVERED` of the variant's profiled frame time (tuning goes to the costly
        ones first; the rest keep TVM's default schedules). ``backend: auto`` reads the note to know
        that a library compiled on first use would be tuned. Returns their names."""
        import tvm

        from .records import add_coverage, network_id

        query, _ = self.records.open()
        if query is None:
            return []
        target = tvm.target.Target(self.target)
        has = {k: query.query_tuning_record(t.dispatched[0], target, t.task_name) is not None for k, t in self.tasks.items()}
        ms = {k: float(t["ms"]) for k, t in self.state.get("tasks", {}).items()}
        done = []
        for v, kernels in zip(self.variants, self.kernels):
            keys = set(kernels.values()) & set(self.tasks)
            total = sum(ms.get(k, 0.0) for k in keys)
            if total > 0 and sum(ms.get(k, 0.0) for k in keys if has[k]) >= COVERED * total:
                done.append(v)
        add_coverage(self.records.writable, [network_id(v.genotype, v.input_size, v.layout) for v in done])
        return [v.name for v in done]

    # ------------------------------------------------------------------ tuning
    def _best_ms(self, database, key: str) -> Optional[float]:
        """The task's best time per call in ``database`` (the user's: measured here), in ms."""
        mod = self.tasks[key].dispatched[0]
        if not database.has_workload(mod):
            return None
        records = database.get_top_k(database.commit_workload(mod), 1)
        if not records or not records[0].run_secs:
            return None
        secs = [float(s) for s in records[0].run_secs]
        return 1e3 * sum(secs) / len(secs)

    def _measure_foreign(self, key: str, query, user, builder, runner) -> None:
        """Measure here the schedule another source's record gives a task, and commit it to the user's database."""
        import shutil

        import tvm
        from tvm.s_tir import meta_schedule as ms

        task, tvm_target = self.tasks[key], tvm.target.Target(self.target)
        mod = task.dispatched[0]
        sch = query.query_schedule(mod, tvm_target, task.task_name)
        if sch is None:
            return
        (built,) = builder.build([ms.builder.BuilderInput(sch.mod, tvm_target)])
        if built.error_msg is not None:
            return
        args = ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
        (result,) = [f.result() for f in runner.run([ms.runner.RunnerInput(built.artifact_path, "llvm", args)])]
        shutil.rmtree(Path(built.artifact_path).parent, ignore_errors=True)
        if result.error_msg is None and result.run_secs:
            workload = user.commit_workload(mod)
            user.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, result.run_secs, tvm_target, args))
            self.log(f"tune: {task.task_name}: the shipped record measured here first")

    def run(self, minutes: Optional[float], max_trials: Optional[int] = None, chunk: int = TRIALS_PER_ROUND, max_per_task: int = 1000) -> Dict[str, Any]:
        """Tune until ``minutes`` (over every run of this state; None: no limit) are spent, or ``max_trials`` in all."""
        from tvm.s_tir import meta_schedule as ms

        import logging

        started, spent0 = self.created, float(self.state["spent_s"])  # this run's lowering and profile count too
        budget = float("inf") if minutes is None else 60.0 * minutes
        self.state["budget_s"] = None if minutes is None else budget
        left = lambda: budget - spent0 - (time.perf_counter() - started)  # noqa: E731
        start_frame = sum(self.state["frame_ms"].values())
        query, user = self.records.open(write=True)
        threads = int(self.target.get("num-cores", 1))
        arch = target_arch(self.target) or host_arch()
        cpu_intrinsics_only(arch)
        builder = _persistent_builder(120.0, arch=arch)
        per_trial = float(self.state.get("s_per_trial", 0.0))
        try:
            with _measuring_threads(threads):
                runner = measuring_runner()
                cost_model = ms.cost_model.CostModel.create("xgb", num_tuning_cores=threads)
                while True:
                    trials_left = None if max_trials is None else max_trials - self.state["trials"]
                    key = self.next_task(max_per_task)
                    n = chunk if trials_left is None else min(chunk, trials_left)
                    if per_trial > 0 and minutes is not None:  # what still fits in the budget
                        n = min(n, int(left() / per_trial))
                    if key is None or n < 1 or left() <= 0:
                        why = "every task is done" if key is None else "the trial cap is reached" if trials_left is not None and trials_left <= 0 else "the budget is spent"
                        self.log(f"tune: stopping after {self.state['trials']} trials: {why}")
                        break
                    t = self.state["tasks"][key]
                    if not t["foreign"] and self._best_ms(user, key) is None:
                        self._measure_foreign(key, query, user, builder, runner)
                        t["foreign"] = True
                    before = self._best_ms(user, key)
                    tic = time.perf_counter()
                    # MetaSchedule's task tables to its log files only; each call resets the console's level to the logger's
                    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
                    contexts, _ = ms.relax_integration.extracted_tasks_to_tune_contexts(
                        [self.tasks[key]], str(self.records.writable), strategy=search_strategy(), num_threads=threads,
                        seed=self.state["trials"])
                    progress = _progress_callback(n, lambda s: None)
                    ms.tune_tasks(tasks=contexts, task_weights=[1.0], work_dir=str(self.records.writable), max_trials_global=n,
                                  max_trials_per_task=n, num_trials_per_iter=min(n, TRIALS_PER_ROUND), builder=builder, runner=runner,
                                  database=user, cost_model=cost_model, task_scheduler="round-robin",
                                  measure_callbacks=list(ms.measure_callback.MeasureCallback.create("default")) + [progress])
                    best = self._best_ms(user, key)
                    t["trials"] += progress.done
                    t["done"] = progress.done == 0  # the search space is exhausted
                    t["stale"] = 0 if best is not None and (before is None or best < IMPROVED * before) else t["stale"] + 1
                    t["best_ms"] = best
                    self.state["trials"] += progress.done
                    if progress.done:
                        per_trial = (time.perf_counter() - tic) / progress.done
                        self.state["s_per_trial"] = per_trial
                    self.state["spent_s"] = spent0 + time.perf_counter() - started
                    self.save()
                    share = 100 * t["ms"] / max(1e-9, start_frame)
                    self.log(f"tune: {self.state['trials']} trials; {t['name']} ({share:.0f} % of the frame): "
                             f"{t['trials']} trials, best {best if best is None else f'{best:.3f}'} ms per call; "
                             f"estimated frame {self.frame_estimate():.2f} ms (profiled {start_frame:.2f} ms)"
                             + ("" if minutes is None else f"; {max(0.0, left()) / 60:.1f} of {minutes:g} min left"))
        finally:
            builder.close()
            self.state["spent_s"] = spent0 + time.perf_counter() - started
            self.save()
        return self.state


def tune(spec: str | Path, minutes: Optional[float], db_root: Path, max_trials: Optional[int] = None, chunk: int = TRIALS_PER_ROUND,
         input_size: Tuple[int, int] = (360, 480), threads: Optional[int] = None, build: bool = True,
         log: Log = _stderr) -> Dict[str, Any]:
    """``hmseg-core tune``: tune the tasks of ``spec``'s variants for this CPU, then rebuild their libraries.

    Returns the run's state (profile, trials per task, time spent) with ``final_frame_ms`` per variant."""
    from ..machine import set_threads
    from .targets import host_target

    target = host_target(threads)
    set_threads(int(target["num-cores"]))
    variants = load_variants(spec, input_size)
    tuner = Tuner(variants, target, db_root, log)
    if tuner.state.get("tasks"):
        log(f"tune: resuming {tuner.state_path}: {tuner.state['trials']} trials, {tuner.state['spent_s'] / 60:.1f} min spent")
    log(f"tune: {len(variants)} variant(s), {len(tuner.tasks)} tasks for {target_key(target)} (ISA family {tuner.records.family}); "
        f"records in {tuner.records.writable}")
    tuner.profile()
    state = tuner.run(minutes, max_trials, chunk)
    state["covered"] = tuner.record_coverage()
    missing = [v.name for v in variants if v.name not in state["covered"]]
    if missing:
        log(f"tune: the kernels with records take less than {COVERED:.0%} of the frame of {', '.join(missing)}: "
            "give it more time (backend auto compiles only tuned networks)")
    state.pop("final_frame_ms", None)  # from an earlier run's build
    if build:
        state["final_frame_ms"] = {}
        for v in variants:
            frame_ms, _ = build_and_profile(v, target, db_root, 10, log, cache=True)
            state["final_frame_ms"][v.name] = frame_ms
            log(f"tune: {v.name}: frame {frame_ms:.2f} ms (profiled {state['frame_ms'][v.name]:.2f} ms before tuning)")
        tuner.save()
    return state
