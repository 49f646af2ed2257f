"""Differentiable search with straight-through Gumbel-softmax and the cost loss (Eq. 2-4).

:class:`GumbelSearch` alternates (Eq. 3) a weight step on one half of the training split
(sampled path, segmentation loss with boosting) and, after ``warmup_epochs``, an
architecture step on the other half (straight-through sample, segmentation loss +
``lambda * sign(F_cost(a) - R) * log E_cost(A)``). Its collaborators are passed in: the
search space, the :class:`~hmseg_core.search.cost.CostModel` (over a latency table loaded
from an explicit path) and the process context.

Resuming is exact, as in :mod:`hmseg_core.train`: data order comes from ``(seed, epoch)``,
augmentation from ``(seed, epoch, index)``, Gumbel noise from ``(seed, step)``, and
``last.pt`` (atomic) holds supernet, both optimizers and the step.

Under torchrun every rank draws the same path (same noise seeds), so the same parameters
get gradients everywhere; gradients are averaged explicitly instead of through
``DistributedDataParallel``, whose reducer expects one fixed set of used parameters per
forward pass and no gradients from outside it (the cost loss reaches ``alpha`` directly).
BatchNorm statistics are broadcast from rank 0 before every checkpoint.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from ..checkpoint import atomic_save, migrate_state_dict
from ..data.datasets import SegmentationDataset
from ..data.synthetic import write_dataset
from ..data.transforms import EpochBatchSampler, TrainTransform, TrainView, seeded_generator
from ..genotype import Genotype
from ..losses import SegLoss
from ..registry import get_genotype
from ..train import DistContext, replica_fingerprints, truncate_log
from .config import SearchConfig, save_search_config
from .cost import CostModel, cost_loss
from .lut import LatencyTable
from .plots import plot_search_log
from .space import SearchSpace
from .supernet import ArchSample, Supernet

CHECKPOINT_FORMAT = "hmseg-search-checkpoint"
CHECKPOINT_VERSION = 1


def temperature(step: int, total_steps: int, tau_max: float = 10.0, tau_min: float = 0.1) -> float:
    """Exponential annealing from ``tau_max`` (first step) to ``tau_min`` (last step)."""
    if total_steps <= 1:
        return tau_min
    t = min(max(step, 0), total_steps - 1) / (total_steps - 1)
    return tau_max * (tau_min / tau_max) ** t


class _Subset(torch.utils.data.Dataset):
    """A :class:`TrainView` restricted to ``indices`` (keys stay ``(index, epoch)``)."""

    def __init__(self, view: TrainView, indices: Sequence[int]) -> None:
        self.view, self.indices = view, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        index, epoch = key
        return self.view[(self.indices[index], epoch)]


def average_gradients(params: Sequence[torch.nn.Parameter], world_size: int) -> None:
    """All-reduce (mean) the gradients that exist; every rank must hold the same set.

    Not the ``DistributedDataParallel`` wrapper: a search step runs one sampled path (the
    other candidates get no gradient), and the weight and architecture updates alternate
    with separate optimizers over disjoint parameter sets, each from its own backward pass.
    Every rank draws the same path (same seed), so the same gradients exist everywhere and
    one ``all_reduce`` per existing gradient is the whole synchronisation."""
    if world_size <= 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size


def broadcast_buffers(module: torch.nn.Module, world_size: int) -> None:
    if world_size > 1:
        for b in module.buffers():
            dist.broadcast(b, 0)


def probabilities_record(net: Supernet) -> Dict[str, Any]:
    """Current distributions, for the log: per searchable layer ``{op: p}``, per branch ``{ratio: p}``."""
    with torch.no_grad():
        op_p, ratio_p = net.probabilities()
    return {
        "ops": {l.name: {op: round(float(v), 5) for op, v in zip(l.candidates, p)}
                for l, p in zip(net.space.layers, op_p) if l.searchable},
        "ratios": [{str(r): round(float(v), 5) for r, v in zip(c, p)} for c, p in zip(net.space.ratio_choices, ratio_p)],
    }


def budget_fit(net: Supernet, cost: CostModel, target: float, low: float) -> Tuple[Genotype, float, int]:
    """The supernet's most probable architecture moved into ``[low * target, target]`` (:meth:`CostModel.fit_to_budget`);
    choices the search does not update (ablation switches) stay at their argmax."""

    def logp(params: Sequence[torch.Tensor]) -> List[List[float]]:
        out = []
        for a in params:
            lp = F.log_softmax(a.detach().double().cpu(), 0)
            if not a.requires_grad:
                lp = torch.where(torch.arange(len(lp)) == int(torch.argmax(lp)), 0.0, float("-inf"))
            out.append(lp.tolist())
        return out

    ops, ratios, value, changes = cost.fit_to_budget(logp(net.alpha), logp(net.beta), target, low)
    return net.space.genotype(ops, ratios), value, changes


@dataclass
class _SearchRun:
    """What one run of :class:`GumbelSearch` works on: paths, data halves, schedule, supernet,
    optimizers, and progress (``step``; ``wall_s_before``: wall time of the runs it resumes)."""

    out: Path
    weight_half: _Subset
    arch_half: _Subset
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    net: Supernet
    w_opt: torch.optim.Optimizer
    a_opt: torch.optim.Optimizer
    criterion: SegLoss
    step: int = 0
    wall_s_before: float = 0.0
    t0: float = 0.0  # when this process started stepping

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def log_path(self) -> Path:
        return self.out / "search_log.jsonl"

    def wall_s(self) -> float:
        """Wall time over every run of a resumed search."""
        return self.wall_s_before + time.time() - self.t0


class GumbelSearch:
    """The paper's search strategy; ``run()`` returns a summary and writes the run folder."""

    def __init__(self, cfg: SearchConfig, space: SearchSpace, cost: CostModel, ctx: DistContext) -> None:
        self.cfg, self.space, self.cost, self.ctx = cfg, space, cost, ctx

    def run(self, train_set: SegmentationDataset, resume: bool = False, stop_at_step: Optional[int] = None,
            progress: bool = True) -> Dict[str, Any]:
        """Search (or resume) until the last step, or until ``stop_at_step``; then derive and write the results."""
        run = self._setup(train_set, resume)
        bar = tqdm(total=run.total_steps, initial=run.step, desc="search", unit="step", dynamic_ncols=True,
                   disable=not (progress and self.ctx.main))
        run.t0 = time.time()
        run.net.train()
        stopped = False
        while run.step < run.total_steps and not stopped:
            stopped = self._epoch(run, bar, stop_at_step)
        bar.close()
        return self._finish(run)

    # ------------------------------------------------------------------ steps
    def _setup(self, train_set: SegmentationDataset, resume: bool) -> _SearchRun:
        """The run folder, the two data halves, the supernet and its optimizers, resumed from ``last.pt`` if asked."""
        cfg, ctx, space = self.cfg, self.ctx, self.space
        out = Path(cfg.out_dir)
        if ctx.main:
            out.mkdir(parents=True, exist_ok=True)
            if (out / "last.pt").exists() and not resume:
                raise FileExistsError(f"{out / 'last.pt'} exists: pass --resume to continue that search, or choose another --out")
        ctx.barrier()

        spec = train_set.spec
        perm = torch.randperm(len(train_set), generator=seeded_generator(cfg.seed, 7919)).tolist()
        half = len(perm) // 2
        view = TrainView(train_set, TrainTransform(tuple(cfg.crop), tuple(cfg.scale), True, cfg.jitter, spec.mean, spec.std), cfg.seed)
        steps_per_epoch = EpochBatchSampler.steps_per_epoch(half, cfg.batch_size, ctx.world_size)
        if steps_per_epoch == 0:
            raise ValueError(f"half of {len(train_set)} training images is fewer than one batch of "
                             f"{cfg.batch_size} x {ctx.world_size} processes")

        torch.manual_seed(cfg.seed)  # same supernet on every rank and in every rerun
        net = Supernet(space, boosting=cfg.aux_weight > 0).to(ctx.device)
        run = _SearchRun(
            out=out, weight_half=_Subset(view, perm[:half]), arch_half=_Subset(view, perm[half:]),
            steps_per_epoch=steps_per_epoch, total_steps=cfg.epochs * steps_per_epoch,
            warmup_steps=cfg.warmup_epochs * steps_per_epoch, net=net,
            w_opt=torch.optim.SGD(net.weight_parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay),
            a_opt=torch.optim.Adam(net.arch_parameters(), lr=cfg.arch_lr, betas=(0.5, 0.999), weight_decay=cfg.arch_weight_decay),
            criterion=SegLoss(None, cfg.aux_weight).to(ctx.device),
        )
        if resume and run.last_path.exists():
            self._resume(run)
        if ctx.main:
            save_search_config(cfg, out / "config.yaml")
            truncate_log(run.log_path, run.step)
        return run

    def _resume(self, run: _SearchRun) -> None:
        """Supernet, optimizers, step and wall time from ``last.pt``, which must be this space's search."""
        ckpt = torch.load(run.last_path, map_location="cpu", weights_only=True)
        if ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{run.last_path}: not a version-{CHECKPOINT_VERSION} search checkpoint")
        if ckpt["base"] != self.space.base.format() or ckpt["space"] != self.space.switches.format():
            raise ValueError(f"{run.last_path}: searched {ckpt['space']} around {ckpt['base']!r}, not this config's space")
        run.net.load_state_dict(migrate_state_dict(ckpt["supernet"]))
        run.w_opt.load_state_dict(ckpt["w_opt"])
        run.a_opt.load_state_dict(ckpt["a_opt"])
        run.step = int(ckpt["step"])
        run.wall_s_before = float(ckpt.get("wall_s", 0.0))

    def _epoch(self, run: _SearchRun, bar: tqdm, stop_at_step: Optional[int]) -> bool:
        """The rest of the current epoch from ``run.step`` (or up to ``stop_at_step``), its summary line
        in the log once it is complete, and a checkpoint; returns whether it stopped at ``stop_at_step``."""
        cfg, ctx = self.cfg, self.ctx
        epoch, start = divmod(run.step, run.steps_per_epoch)
        loaders = [
            torch.utils.data.DataLoader(part, num_workers=cfg.num_workers, batch_sampler=EpochBatchSampler(
                len(part), cfg.batch_size, epoch, cfg.seed + k, ctx.rank, ctx.world_size, start))
            for k, part in enumerate((run.weight_half, run.arch_half))
        ]
        records: List[Dict[str, Any]] = []
        stopped = False
        for (xw, yw), (xa, ya) in zip(*loaders):
            record = self._weight_step(run, epoch, xw, yw)
            if run.step >= run.warmup_steps:
                record.update(self._arch_step(run, xa, ya))
            run.step += 1
            self._log(run, record)
            records.append(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss_w']:.3f}", cost=f"{record.get('expected_cost', float('nan')):.4g}")
            if stop_at_step is not None and run.step >= stop_at_step:
                stopped = True
                break
            if run.step % cfg.checkpoint_every == 0 and run.step % run.steps_per_epoch:
                self._checkpoint(run)
        if run.step % run.steps_per_epoch == 0:
            self._log(run, self._epoch_record(run, records))
        self._checkpoint(run)
        ctx.barrier()
        return stopped

    def _weight_step(self, run: _SearchRun, epoch: int, x: torch.Tensor, y: torch.Tensor) -> Dict[str, Any]:
        """Eq. 3, inner problem: one SGD step of the weights on a sampled path, fixed (no architecture gradient)."""
        cfg, ctx, net = self.cfg, self.ctx, run.net
        lr = cfg.lr * (1.0 - run.step / run.total_steps) ** 0.9
        for group in run.w_opt.param_groups:
            group["lr"] = lr
        drawn = net.sample(1.0, seeded_generator(cfg.seed, run.step, 0))
        run.w_opt.zero_grad(set_to_none=True)
        loss = run.criterion(net(x.to(ctx.device), ArchSample(drawn.op_indices, drawn.ratio_indices)), y.to(ctx.device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"weight loss is {loss.item()} at step {run.step}; lower lr (now {lr:.4g})")
        loss.backward()
        average_gradients(net.weight_parameters(), ctx.world_size)
        run.w_opt.step()
        return {"step": run.step + 1, "epoch": epoch, "loss_w": float(loss.detach()), "lr": lr}

    def _arch_step(self, run: _SearchRun, x: torch.Tensor, y: torch.Tensor) -> Dict[str, Any]:
        """Eq. 3, outer problem: one Adam step of ``alpha`` and ``beta`` on a straight-through sample,
        segmentation loss plus the cost loss (Eq. 4); returns what it adds to the step's log record."""
        cfg, ctx, net, cost = self.cfg, self.ctx, run.net, self.cost
        tau = temperature(run.step - run.warmup_steps, run.total_steps - run.warmup_steps, cfg.tau_max, cfg.tau_min)
        sample = net.sample(tau, seeded_generator(cfg.seed, run.step, 1))
        run.a_opt.zero_grad(set_to_none=True)
        loss_seg = run.criterion(net(x.to(ctx.device), sample), y.to(ctx.device))
        op_p, ratio_p = net.probabilities()
        expected = cost.expected(op_p, ratio_p)
        derived = cost.cost(net.genotype())
        loss_cost = cost_loss(expected, derived, cfg.target)
        loss_a = loss_seg + cfg.cost_weight * loss_cost
        loss_a.backward()
        average_gradients(net.arch_parameters(), ctx.world_size)
        run.a_opt.step()
        net.zero_grad(set_to_none=True)  # weight grads of this pass are not used
        return dict(tau=tau, loss_seg=float(loss_seg.detach()), loss_cost=float(loss_cost.detach()),
                    expected_cost=float(expected.detach()), derived_cost=derived, sampled_cost=cost.cost(net.genotype_of(sample)))

    def _epoch_record(self, run: _SearchRun, records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
        """The log line closing an epoch: mean losses and costs over its steps, the distributions now."""
        cfg, cost, net = self.cfg, self.cost, run.net
        op_p, ratio_p = net.probabilities()
        arch = [r for r in records if "expected_cost" in r]
        return {
            "step": run.step, "epoch_end": run.step // run.steps_per_epoch,
            "loss_w": sum(r["loss_w"] for r in records) / max(1, len(records)),
            "loss_a": (sum(r["loss_seg"] + cfg.cost_weight * r["loss_cost"] for r in arch) / len(arch)) if arch else None,
            "tau": arch[-1]["tau"] if arch else cfg.tau_max,
            "expected_cost": float(cost.expected(op_p, ratio_p).detach()),
            "sampled_cost": (sum(r["sampled_cost"] for r in arch) / len(arch)) if arch else None,
            "derived_cost": cost.cost(net.genotype()),
            "genotype": net.genotype().format(),
            "probabilities": probabilities_record(net),
        }

    def _log(self, run: _SearchRun, record: Dict[str, Any]) -> None:
        if self.ctx.main:
            with run.log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def _checkpoint(self, run: _SearchRun) -> None:
        """``last.pt`` (atomic): supernet, both optimizers, the step; BatchNorm statistics from rank 0 first."""
        broadcast_buffers(run.net, self.ctx.world_size)
        if self.ctx.main:
            space, net = self.space, run.net
            atomic_save({
                "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": run.step,
                "base": space.base.format(), "space": space.switches.format(),
                "genotype": net.genotype().format(), "config": self.cfg.to_dict(), "lut": self.cost.table.source,
                "supernet": net.state_dict(), "w_opt": run.w_opt.state_dict(), "a_opt": run.a_opt.state_dict(),
                "wall_s": run.wall_s(),
            }, run.last_path)

    def _finish(self, run: _SearchRun) -> Dict[str, Any]:
        """The derived and the budget-fitted genotypes and the summary, written to the run folder."""
        cfg, ctx, space, cost, net = self.cfg, self.ctx, self.space, self.cost, run.net
        genotype = net.genotype()
        band = [cfg.fit_low * cfg.target, cfg.fit_high * cfg.target]
        fitted, fitted_cost, changes = budget_fit(net, cost, band[1], cfg.fit_low / cfg.fit_high)
        summary: Dict[str, Any] = {
            "genotype": genotype.format(),
            "space": space.switches.format(),
            "metric": cost.metric,
            "target": cfg.target,
            "derived_cost": cost.cost(genotype),
            "predicted": {m: cost.table.predict(genotype, m) for m in ("latency_ms", "macs", "params")},
            "base_cost": cost.cost(space.base),
            # the argmax architecture lands wherever the last sign flips of Eq. 4 left it; this one
            # is the most probable found by changing choices until its cost is in the budget band
            "budget_fit": {"genotype": fitted.format(), "cost": fitted_cost, "changes": changes,
                           "band": band, "in_band": band[0] <= fitted_cost <= band[1]},
            "space_range": list(cost.bounds()),  # cheapest and most expensive architecture
            "steps": run.step,
            "total_steps": run.total_steps,
            "finished": run.step >= run.total_steps,
            "lut": cost.table.source,
            "wall_s": run.wall_s(),  # over every run of a resumed search
            "out_dir": str(run.out),
        }
        if ctx.world_size > 1:  # weights and architecture parameters alike, on every rank
            prints = replica_fingerprints(net)
            summary["replica_fingerprints"] = prints
            if any(p != prints[0] for p in prints):
                raise RuntimeError(f"search replicas diverged: parameter fingerprints per rank {prints}")
        if ctx.main:
            (run.out / "genotype.txt").write_text(genotype.format() + "\n")
            (run.out / "genotype_budget.txt").write_text(fitted.format() + "\n")
            (run.out / "summary.json").write_text(json.dumps(summary, indent=2))
            plot_search_log(run.log_path, run.out, cfg.target, cost.metric)
        return summary


def search(cfg: SearchConfig, table: LatencyTable, resume: bool = False, stop_at_step: Optional[int] = None,
           progress: bool = True) -> Dict[str, Any]:
    """Run a search per ``cfg`` with costs from ``table``; single process or under torchrun."""
    cfg.validate()
    ctx = DistContext()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        out = Path(cfg.out_dir)
        if cfg.data_root:
            root = Path(cfg.data_root)
        else:
            root = out / "synthetic"
            if ctx.main and not (root / f"{cfg.train_split}annot").is_dir():
                write_dataset(root, "camvid", {cfg.train_split: cfg.synthetic_train}, size=tuple(cfg.crop), seed=cfg.seed)
            ctx.barrier()
        train_set = SegmentationDataset(root, cfg.train_split, cfg.layout or None).preload()
        base = get_genotype(cfg.base, train_set.spec.num_classes)
        space = SearchSpace.from_genotype(base, cfg.space, cfg.ratios)
        cost = CostModel(space, table, cfg.metric)
        lo, hi = cost.bounds()
        if not lo <= cfg.target <= hi:
            warnings.warn(
                f"target {cfg.target:g} is outside what this space can reach ({lo:.4g} .. {hi:.4g} {cfg.metric}); "
                f"the search will end at the {'cheapest' if cfg.target < lo else 'most expensive'} architecture it finds",
                stacklevel=2,
            )
        return GumbelSearch(cfg, space, cost, ctx).run(train_set, resume, stop_at_step, progress)
    finally:
        ctx.close()

