"""MetaSchedule tuning with a trial budget, a progress display, and a records database per target.

The weights stay function parameters (one ``params.npz`` serves every library), and
``LiftTransformParams`` moves what depends on them alone (bias reshapes, layout changes) into
``main_transform_params``, which the runtime calls once at load; only ``main``'s kernels are
tuned and run per frame.

Records live in ``<db_root>/<target key>/`` (MetaSchedule's JSON database). A task whose
workload already has a valid record there is not tuned again, so exporting a second network
built from the same operators (every searched variant shares the operator table) costs no
tuning; ``retune=True`` tunes every task again and adds records.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from ..tensor_layouts import DEFAULT_LAYOUT, LAYOUTS
from .relax_rewrites import clip_as_min_max, upsampling_into_argmax
from .targets import TargetDict, target_key

Log = Callable[[str], None]


@dataclass(frozen=True)
class TuningOptions:
    """How much to tune, and where the records live."""

    trials: int = 0                      # total trial budget; 0 = only apply existing records
    db_root: Optional[Path] = None       # records directory root (one sub-directory per target)
    trials_per_task: int = 64
    retune: bool = False                 # tune tasks that already have records, too
    builder_timeout_s: float = 120.0     # generous: a loaded 2-core machine builds slowly
    seed: int = 0
    layout: str = DEFAULT_LAYOUT         # activation layout of the convolutions: NCHW (as exported) or NHWC

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r}: choose one of {', '.join(LAYOUTS)}")

    def work_dir(self, target: TargetDict) -> Optional[Path]:
        return None if self.db_root is None else Path(self.db_root) / target_key(target)


@dataclass
class TuningReport:
    tasks: int
    tasks_tuned: int
    tasks_reused: int
    trials: int
    seconds: float
    work_dir: Optional[str]

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


def trials_per_round(options: TuningOptions, tasks: int) -> int:
    """Trials per task per scheduler round: the first round over all tasks spends about half the
    budget, so every task leaves its naive (single-threaded) schedule; the scheduler gives the rest to
    the tasks whose improvement lowers end-to-end latency most."""
    return max(1, min(64, options.trials_per_task, options.trials // max(1, 2 * tasks)))


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


def _persistent_builder(timeout_s: float, restart_every: int = 25):
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
                self.pool, self.batches = PopenPoolExecutor(max_workers=cpu_count(logical=True), timeout=timeout_s), 0
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


def tune_and_apply(mod, target: TargetDict, options: TuningOptions, log: Log = lambda s: print(s, file=sys.stderr)):
    """Lower ``mod`` for tuning, tune within the budget, apply the records; returns ``(mod, report)``.

    The returned module is what ``tvm.compile`` builds. Without a database directory the
    module is only lowered (the default schedules apply at build time).
    """
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    tvm_target = tvm.target.Target(target)
    start = time.perf_counter()
    mod = lower(mod, target, options.layout)
    work_dir = options.work_dir(target)
    if work_dir is None:
        if options.trials > 0:
            raise ValueError("tuning needs a records directory (--tuning-db)")
        return mod, TuningReport(0, 0, 0, 0, 0.0, None)
    work_dir.mkdir(parents=True, exist_ok=True)
    database = ms.database.JSONDatabase(work_dir=str(work_dir))
    tasks = extract_tasks(mod, target)
    todo = [
        t for t in tasks
        if options.retune or database.query_tuning_record(t.dispatched[0], tvm_target, "main") is None
    ]
    reused = len(tasks) - len(todo)
    trials = 0
    if options.trials > 0 and todo:
        log(f"tuning {len(todo)} of {len(tasks)} tasks ({reused} reused from {work_dir}), budget {options.trials} trials")
        threads = int(target.get("num-cores", 1)) if target.get("kind") == "llvm" else "physical"
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(todo, str(work_dir), num_threads=threads, seed=options.seed)
        progress = _progress_callback(options.trials, log)
        builder = _persistent_builder(options.builder_timeout_s)
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
                    database=database,
                    measure_callbacks=list(ms.measure_callback.MeasureCallback.create("default")) + [progress],
                )
        finally:
            builder.close()
        trials = progress.done
    elif todo:
        log(f"{len(todo)} of {len(tasks)} tasks have no tuning records in {work_dir} (budget 0: default schedules)")
    with tvm_target:
        mod = relax.transform.MetaScheduleApplyDatabase(str(work_dir))(mod)
    tuned = len(todo) if trials else 0
    return mod, TuningReport(len(tasks), tuned, reused, trials, time.perf_counter() - start, str(work_dir))
