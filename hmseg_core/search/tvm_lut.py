"""TVM latency backend for the cost lookup table: each part compiled for the deployment target.

A part goes through the same path as a deployed network (:mod:`hmseg_core.deploy`): batch
norm folded, ``torch.export``, Relax, weight transforms lifted out of ``main``, MetaSchedule
records applied, ``tvm.compile``. With a records directory and a trial budget per part, the
part's kernels are tuned into that directory; exporting a searched network later with the
same ``--tuning-db`` reuses every record whose kernel it shares (its layers are the table's
candidates at the same shapes), so the search pays for tuning once.

Untuned TVM kernels on a CPU are naive loops, many times slower than tuned ones (see
docs/DEPLOY.md): a table for ranking deployment latency needs a trial budget per part.
"""

from __future__ import annotations

import functools
import platform
import statistics
import time
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..deploy.targets import TargetDict, resolve_target, target_key
from ..deploy.tuning import TRANSFORM_PARAMS, TuningOptions
from ..hardware import allocator, cpu_model
from .lut import _cores


def _has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in module.modules())


class TVMBackend:
    """Compiles and times LUT parts with TVM on ``target`` (``host`` by default) with ``threads`` threads."""

    name = "tvm"

    def __init__(self, target: str | TargetDict = "host", threads: int = 0, tuning: Optional[TuningOptions] = None) -> None:
        try:
            import tvm  # noqa: F401
        except ImportError as e:
            raise RuntimeError(f"the tvm latency backend needs TVM: pip install 'hmseg[tvm]' ({e})") from None
        self.threads = int(threads or _cores())
        self.target = resolve_target(target, num_cores=self.threads)
        if self.target.get("kind") != "llvm":
            raise ValueError(f"the tvm latency backend measures on this machine's CPU; target {target_key(self.target)} is not llvm")
        self.tuning = tuning or TuningOptions()
        from ..deploy.bench import set_threads

        # what TVM's pool really runs (identity: tables from before the pool was sized ran on one thread)
        self.tvm_threads = set_threads(self.threads)

    def fingerprint(self) -> Dict[str, Any]:
        import tvm

        return {
            "backend": self.name,
            "target": target_key(self.target),
            "cpu": cpu_model(),
            "cores": _cores(),
            "threads": self.threads,
            "tvm_threads": self.tvm_threads,
            "allocator": allocator(),
            "versions": {"tvm": tvm.__version__, "torch": torch.__version__, "python": platform.python_version()},
            "tuning": {"trials_per_part": self.tuning.trials, "records": str(self.tuning.db_root) if self.tuning.db_root else None},
            "layout": self.tuning.layout,
        }

    def compile(self, module: nn.Module, inputs: Sequence[torch.Tensor]) -> Callable[[], Any]:
        """``module`` compiled at the shapes of ``inputs``; the returned function runs it on them
        (weights already transformed, inputs already on the device) and returns TVM's output."""
        import tvm
        from tvm import relax

        from ..deploy.export import parameter_names, to_relax
        from ..deploy.fold import fold_batchnorm
        from ..deploy.tuning import tune_and_apply

        net = module.eval()
        if _has_batchnorm(net):
            net = fold_batchnorm(net)
        with torch.no_grad():
            program = torch.export.export(net, tuple(inputs))
        mod, _ = tune_and_apply(to_relax(program), self.target, self.tuning, log=lambda s: None)
        vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target(self.target)), tvm.cpu(0))
        state = net.state_dict()
        weights = [tvm.runtime.tensor(state[n].detach().numpy()) for n in parameter_names(program)]
        if weights:
            weights = list(vm[TRANSFORM_PARAMS](weights))
        args = [tvm.runtime.tensor(np.ascontiguousarray(x.detach().numpy())) for x in inputs] + weights
        return functools.partial(vm["main"], *args)

    def measure(self, module: nn.Module, inputs: Sequence[torch.Tensor], warmup: int, repeats: int) -> float:
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        run = self.compile(module, inputs)
        for _ in range(max(1, warmup)):  # the first call also pages the library in
            run()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return 1000.0 * statistics.median(times)
