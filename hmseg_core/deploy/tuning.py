"""MetaSchedule tuning with a trial budget, a progress display, and records per ISA family.

The weights stay function parameters (one ``params.npz`` serves every library), and
``LiftTransformParams`` moves what depends on them alone (bias reshapes, layout changes) into
``main_transform_params``, which the runtime calls once at load; only ``main``'s kernels are
tuned and run per frame.

Records are read from the user's database, old per-CPU folders and the records shipped with
hmseg, and written to ``<db_root>/<ISA family>/`` (:mod:`.records`). A task whose workload already
has a valid record in any of them is not tuned again, so exporting a second network built from
the same operators (every searched variant shares the operator table) costs no tuning;
``retune=True`` tunes every task again and adds records. GPU targets get DLight's default
schedules instead (no tuning, no records).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..tensor_layouts import DEFAULT_LAYOUT, LAYOUTS
from .relax_rewrites import clip_as_min_max, upsampling_into_argmax
from .records import RecordSet, record_set
from .targets import TargetDict, host_arch, isa_family, target_arch

Log = Callable[[str], None]


@dataclass(frozen=True)
class TuningOptions:
    """How much to tune, and where the records live."""

    trials: int = 0                      # total trial budget; 0 = only apply existing records
    db_root: Optional[Path] = None       # the user's records root (one sub-directory per ISA family); None: none
    shipped: bool = True                 # also apply the records that ship with hmseg (hmseg_core/zoo/records/<family>)
    trials_per_task: int = 64
    retune: bool = False                 # tune tasks that already have records, too
    builder_timeout_s: float = 120.0     # generous: a loaded 2-core machine builds slowly
    seed: int = 0
    layout: str = DEFAULT_LAYOUT         # activation layout of the convolutions: NCHW (as exported) or NHWC

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r}: choose one of {', '.join(LAYOUTS)}")

    def work_dir(self, target: TargetDict) -> Optional[Path]:
        """The folder tuning writes ``target``'s records to: ``<db_root>/<ISA family>``."""
        return None if self.db_root is None else Path(self.db_root) / isa_family(target)

    def records(self, target: TargetDict, log: Log = lambda s: None) -> RecordSet:
        """Every folder ``target``'s records are read from, preferred first."""
        return record_set(target, None if self.db_root is None else Path(self.db_root), self.shipped, log)


@dataclass
class TuningReport:
    tasks: int
    tasks_tuned: int
    tasks_reused: int
    trials: int
    seconds: float
    work_dir: Optional[str]
    family: Optional[str] = None
    sources: List[str] = field(default_factory=list)   # record folders read, preferred first
    schedules: str = "metaschedule"                    # "dlight" for GPU targets

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


def trials_per_round(options: TuningOptions, tasks: int) -> int:
    """Trials per task per scheduler round: the first round over all tasks spends about half the
    budget, so every task leaves its naive (single-threaded) schedule; the scheduler gives the rest to
    the tasks whose improvement lowers end-to-end latency most."""
    return max(1, min(64, options.trials_per_task, options.trials // max(1, 2 * tasks)))


#: Candidates measured per round of MetaSchedule's evolutionary search. A round's sampling and
#: evolving take ~12 s on a 2-core CPU whatever it then sends to be measured, so 8 a round cost
#: 2.1 s a trial and 32 cost 0.5-0.8 s, with records as fast (docs/RESULTS.md, 2026-12-02).
TRIALS_PER_ROUND = 32
#: A candidate is timed for at least this long (TVM's default, 100 ms, is most of a trial's measuring).
MIN_REPEAT_MS = 40


#: MetaSchedule's evolutionary search as tuning runs it. TVM's defaults (population 512, 4
#: generations) cost 0.8-1.4 s a trial here; half the population and 2 generations 0.45-0.55 s, and
#: 30 minutes from no records then gave a frame of 13.2-15.5 ms against 16.9 ms with the defaults
#: (docs/RESULTS.md). Only ``hmseg-core tune`` runs it; ``export --trials`` keeps TVM's defaults.
SEARCH = {"population_size": 256, "genetic_num_iters": 2}


def search_strategy():
    """The evolutionary search with :data:`SEARCH`."""
    from tvm.s_tir import meta_schedule as ms

    return ms.search_strategy.EvolutionarySearch(**SEARCH)


def measuring_runner():
    """MetaSchedule's local runner, timing each candidate ``number=3`` times for at least :data:`MIN_REPEAT_MS`."""
    from tvm.s_tir import meta_schedule as ms

    return ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=MIN_REPEAT_MS))


def _progress_callback(total: int, log: Log):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Progress(PyMeasureCallback):
        """Prints trials done / budget and the best latency of the task just measured."""

        def __init__(self) -> None:
            self.done = 0
            self.start = time.perf_counter()

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
            self.done += len(measure_candidates)
            ok = [sum(float(s) for s in r.run_secs) / len(r.run_secs) for r in runner_results if r.error_msg is None and r.run_secs]
            best = f", best {1e3 * min(ok):.3f} ms" if ok else ", no valid sample"
            log(f"tuning: {self.done}/{total} trials, task #{task_id}{best}, {time.perf_counter() - self.start:.0f} s")

    return Progress()


#: the module of ``tvm.s_tir.tensor_intrin`` that holds each CPU architecture's tensor intrinsics
_INTRINSICS = {"x86_64": "x86", "aarch64": "arm_cpu", "riscv64": "riscv_cpu"}


def cpu_intrinsics_only(arch: str) -> None:
    """Register only ``arch``'s tensor intrinsics when MetaSchedule imports ``tvm.s_tir.tensor_intrin``.

    Every ``TuneContext`` and every builder worker imports that package, whose ``__init__`` registers
    the intrinsics of every target TVM knows; its CUDA part alone took 42 s of CPU here (the whole
    package 60 s, minutes on a loaded machine), once in the tuning process and again in every fresh
    builder worker. CPU tuning uses only the CPU's own (x86: VNNI / AVX-512 dot products). The package
    is entered unexecuted, so its other submodules still import when asked for by name."""
    import importlib
    import importlib.util

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules or arch not in _INTRINSICS:
        return
    import tvm.s_tir

    spec = importlib.util.find_spec(name)
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    tvm.s_tir.tensor_intrin = package
    importlib.import_module(f"{name}.{_INTRINSICS[arch]}")


def _persistent_builder(timeout_s: float, restart_every: int = 25, arch: Optional[str] = None):
    """MetaSchedule's ``LocalBuilder``, but its worker processes live across batches.

    ``LocalBuilder`` starts a fresh pool of worker processes for every batch of candidates, and
    each worker's first build imports ``tvm.s_tir.tensor_intrin``: 25 s of CPU on this machine,
    paid again in every scheduler round (2 candidates took 30 s to build, 8 took 33 s). Here the
    workers stay up for ``restart_every`` batches (``LocalBuilder`` restarts them because they grow
    in memory over many builds), and a worker that times out is replaced by the pool."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import _serialize_params, _worker_func
    from tvm.s_tir.meta_schedule.utils import cpu_count
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PersistentBuilder(PyBuilder):
        def __init__(self) -> None:
            super().__init__()
            self.pool, self.batches = None, 0

        def build(self, build_inputs):
            if self.pool is None or self.batches >= restart_every:
                if self.pool is not None:
                    self.pool.shutdown()
                init = dict(initializer=cpu_intrinsics_only, initargs=(arch,)) if arch else {}
                self.pool, self.batches = PopenPoolExecutor(max_workers=cpu_count(logical=True), timeout=timeout_s, **init), 0
            self.batches += 1
            jobs = [(None, None, b.mod, b.target, _serialize_params(b.params)) for b in build_inputs]
            results = []
            for r in self.pool.map_with_error_catching(lambda job: _worker_func(*job), jobs):
                if r.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(r.value, None))
                elif r.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"build timed out after {timeout_s} s"))
                else:
                    results.append(BuilderResult(None, f"build failed: {r.value}"))
            return results

        def close(self) -> None:
            """Stop the worker processes (call once tuning is done; garbage collection may come much later)."""
            if self.pool is not None:
                self.pool.shutdown()
                self.pool = None

    return PersistentBuilder()


@contextlib.contextmanager
def _measuring_threads(threads):
    """``TVM_NUM_THREADS`` for the processes MetaSchedule starts to time candidates.

    A measuring worker's TVM pool sizes itself from the variable (else from half the logical
    CPUs on x86-64: one thread on a 2-core CPU), so without it the candidates of a 2-thread
    schedule are timed on one thread, and tuning ranks them for a machine the network never
    runs on. The variable is restored afterwards; this process's own pool is not touched."""
    if not isinstance(threads, int):  # GPU targets: the measuring workers run kernels on the GPU
        yield
        return
    saved = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = saved


TRANSFORM_SUFFIX = "_transform_params"
TRANSFORM_PARAMS = "main" + TRANSFORM_SUFFIX


def transform_params(function: str) -> str:
    """The once-per-load weight transform ``LiftTransformParams`` makes for ``function``."""
    return function + TRANSFORM_SUFFIX


def lower(mod, target: TargetDict, layout: str = DEFAULT_LAYOUT):
    """Relax ``main(x, *weights)`` -> ``main_transform_params(weights)`` + ``main(x, *transformed)``, legalized and fused
    (likewise for every other function of ``mod`` that takes the weights, such as a package's whole-frame function).

    With ``layout="NHWC"`` the convolutions (and the element-wise work between them) run
    channels-last: the input and output keep the exported NCHW, one transpose each, and the
    weights' layout change is lifted into ``main_transform_params`` with the rest of the
    weight-only work."""
    import tvm
    from tvm import relax

    convert = []
    if layout != "NCHW":  # the exported layout
        mod = clip_as_min_max(mod)
        convert = [relax.transform.ConvertLayout({"relax.nn.conv2d": [layout, LAYOUTS[layout]]}), relax.transform.Normalize()]
    mod = upsampling_into_argmax(mod)
    with tvm.target.Target(target):
        return tvm.transform.Sequential(
            [
                *convert,
                relax.transform.DecomposeOpsForInference(),
                relax.transform.CanonicalizeBindings(),
                relax.transform.LiftTransformParams(),
                relax.pipeline.zero_pipeline(),
            ]
        )(mod)


def per_frame_module(mod):
    """``mod`` without the once-per-load weight transforms: the kernels worth tuning (those of
    ``main`` and, in a package library, of the whole-frame function)."""
    import tvm
    from tvm import relax

    kept = {gv: f for gv, f in mod.functions.items() if not gv.name_hint.endswith(TRANSFORM_SUFFIX)}
    entries = [gv.name_hint for gv, f in kept.items() if isinstance(f, relax.Function)]
    return relax.transform.DeadCodeElimination(entries)(tvm.IRModule(kept, attrs=mod.attrs))


def extract_tasks(mod, target: TargetDict):
    """MetaSchedule tasks of the per-frame kernels of a lowered module."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    return ms.relax_integration.extract_tasks(per_frame_module(mod), tvm.target.Target(target))


def gpu_schedules(mod, target: TargetDict):
    """DLight's default GPU schedules for every kernel of a lowered module (what TVM's CUDA
    pipeline applies; done here so the tuning report says so and nothing reaches MetaSchedule)."""
    import tvm
    from tvm.s_tir import dlight as dl

    with tvm.target.Target(target):
        return dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
                                       dl.gpu.Fallback())(mod)


def untuned_tasks(tasks, database, target: TargetDict, retune: bool = False) -> list:
    """The tasks without a valid record in ``database`` (all of them with ``retune``)."""
    import tvm

    tvm_target = tvm.target.Target(target)
    return [t for t in tasks if retune or database is None or database.query_tuning_record(t.dispatched[0], tvm_target, t.task_name) is None]


def tune_and_apply(mod, target: TargetDict, options: TuningOptions, log: Log = lambda s: print(s, file=sys.stderr)):
    """Lower ``mod``, tune within the budget, apply the records of the target's ISA family; returns ``(mod, report)``.

    The returned module is what ``tvm.compile`` builds. Without any records (no database, none
    shipped) the module is only lowered (the default schedules apply at build time).
    """
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    tvm_target = tvm.target.Target(target)
    start = time.perf_counter()
    mod = lower(mod, target, options.layout)
    if target.get("kind") != "llvm":
        if options.trials > 0:
            log(f"{isa_family(target)}: GPU kernels get DLight's default schedules; the trial budget is for CPU targets")
        return gpu_schedules(mod, target), TuningReport(0, 0, 0, 0, time.perf_counter() - start, None, isa_family(target), [], "dlight")
    records = options.records(target, log)
    work_dir = records.writable
    if options.trials > 0 and work_dir is None:
        raise ValueError("tuning needs a records directory (--tuning-db)")
    database, user = records.open(write=options.trials > 0)
    if database is None:  # no records anywhere: the default schedules
        return mod, TuningReport(0, 0, 0, 0, time.perf_counter() - start, None, records.family)
    tasks = extract_tasks(mod, target)
    todo = untuned_tasks(tasks, database, target, options.retune)
    reused = len(tasks) - len(todo)
    trials = 0
    if options.trials > 0 and todo:
        log(f"tuning {len(todo)} of {len(tasks)} tasks ({reused} have records), budget {options.trials} trials, records to {work_dir}")
        threads = int(target.get("num-cores", 1))
        arch = target_arch(target) or host_arch()
        cpu_intrinsics_only(arch)
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(todo, str(work_dir), num_threads=threads, seed=options.seed)
        progress = _progress_callback(options.trials, log)
        builder = _persistent_builder(options.builder_timeout_s, arch=arch)
        try:
            with _measuring_threads(threads):
                ms.tune_tasks(
                    tasks=contexts,
                    task_weights=weights,
                    work_dir=str(work_dir),
                    max_trials_global=options.trials,
                    max_trials_per_task=min(options.trials_per_task, options.trials),
                    num_trials_per_iter=trials_per_round(options, len(todo)),
                    builder=builder,
                    runner=measuring_runner(),
                    database=user,
                    measure_callbacks=list(ms.measure_callback.MeasureCallback.create("default")) + [progress],
                )
        finally:
            builder.close()
        trials = progress.done
    elif todo:
        log(f"{len(todo)} of {len(tasks)} tasks have no tuning records for {records.family} (budget 0: default schedules)")
    with tvm_target, database:
        mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    tuned = len(todo) if trials else 0
    return mod, TuningReport(len(tasks), tuned, reused, trials, time.perf_counter() - start, str(work_dir) if work_dir else None,
                             records.family, [str(p) for p in records.readable()])
