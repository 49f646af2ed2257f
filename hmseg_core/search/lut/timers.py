"""Timers: what runs a latency table's parts on the target and times them.

:class:`TorchTimer` runs eager PyTorch (CPU or CUDA); :class:`TVMTimer` compiles each part
through the same path as a deployed network (:mod:`hmseg_core.deploy`): batch norm folded,
``torch.export``, Relax, weight transforms lifted out of ``main``, MetaSchedule records applied,
``tvm.compile``. With a records directory and a trial budget per part, the part's kernels are
tuned into that directory; exporting a searched network later with the same ``--tuning-db``
reuses every record whose kernel it shares (its layers are the table's candidates at the same
shapes), so the search pays for tuning once. Untuned TVM kernels on a CPU are naive loops,
many times slower than tuned ones (see docs/DEPLOY.md): a table for ranking deployment latency
needs a trial budget per part.

Both time with :func:`hmseg_core.machine.time_calls` and describe the device with
:func:`hmseg_core.machine.fingerprint`. Importing this module imports neither TVM nor
:mod:`hmseg_core.deploy`.
"""

from __future__ import annotations

import functools
import statistics
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from ...machine import fingerprint, retain_freed_memory, set_threads, time_calls, torch_target, usable_cores

if TYPE_CHECKING:
    from ...deploy.targets import TargetDict
    from ...deploy.tuning import TuningOptions


class Timer(Protocol):
    """Runs modules on the target and reports their latency."""

    name: str

    def fingerprint(self) -> Dict[str, Any]:
        """The device and software identity; :data:`hmseg_core.machine.IDENTITY_FIELDS` must be among the keys."""
        ...

    def measure(self, module: nn.Module, inputs: Sequence[torch.Tensor], warmup: int, repeats: int) -> float:
        """Median latency in ms of ``module(*inputs)`` over ``repeats`` runs after ``warmup`` runs."""
        ...


class TorchTimer:
    """Eager PyTorch in inference mode (fp32, batch 1)."""

    name = "torch"

    def __init__(self, device: str = "cpu", threads: int = 0) -> None:
        self.device = torch.device(device)
        retain_freed_memory()  # as deployment runs: see hmseg_core.machine
        if threads:
            torch.set_num_threads(threads)

    def fingerprint(self) -> Dict[str, Any]:
        return fingerprint(self.name, torch_target(str(self.device)))

    @torch.inference_mode()
    def measure(self, module: nn.Module, inputs: Sequence[torch.Tensor], warmup: int, repeats: int) -> float:
        module = module.to(self.device).eval()
        inputs = [x.to(self.device) for x in inputs]
        sync = functools.partial(torch.cuda.synchronize, self.device) if self.device.type == "cuda" else None
        return statistics.median(time_calls(lambda: module(*inputs), repeats, warmup, sync))


def _has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in module.modules())


class TVMTimer:
    """Compiles and times parts with TVM on ``target`` (``host`` by default) with ``threads`` threads."""

    name = "tvm"

    def __init__(self, target: str | TargetDict = "host", threads: int = 0, tuning: Optional[TuningOptions] = None) -> None:
        try:
            import tvm  # noqa: F401
        except ImportError as e:
            raise RuntimeError(f"the tvm latency backend needs TVM: pip install 'hmseg[tvm]' ({e})") from None
        from ...deploy.targets import resolve_target, target_key
        from ...deploy.tuning import TuningOptions

        self.threads = int(threads or usable_cores())
        self.target = resolve_target(target, num_cores=self.threads)
        if self.target.get("kind") != "llvm":
            raise ValueError(f"the tvm latency backend measures on this machine's CPU; target {target_key(self.target)} is not llvm")
        self.tuning = tuning or TuningOptions()
        # what TVM's pool really runs (identity: tables from before the pool was sized ran on one thread)
        self.tvm_threads = set_threads(self.threads)

    def fingerprint(self) -> Dict[str, Any]:
        from ...deploy.targets import target_key

        tuning = {"trials_per_part": self.tuning.trials, "records": str(self.tuning.db_root) if self.tuning.db_root else None}
        return fingerprint(self.name, target_key(self.target), self.threads, tvm_threads=self.tvm_threads,
                           tuning=tuning, layout=self.tuning.layout)

    def compile(self, module: nn.Module, inputs: Sequence[torch.Tensor]) -> Callable[[], Any]:
        """``module`` compiled at the shapes of ``inputs``; the returned function runs it on them
        (weights already transformed, inputs already on the device) and returns TVM's output."""
        import tvm
        from tvm import relax

        from ...deploy.export import parameter_names, to_relax
        from ...deploy.fold import fold_batchnorm
        from ...deploy.tuning import TRANSFORM_PARAMS, tune_and_apply

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
        if repeats < 1:  # before compiling, which may take minutes
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        # at least one untimed call: the first also pages the library in
        return statistics.median(time_calls(self.compile(module, inputs), repeats, max(1, warmup)))
