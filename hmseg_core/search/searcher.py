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
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from ..checkpoint import atomic_save
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


class GumbelSearch:
    """The paper's search strategy; ``run()`` returns a summary and writes the run folder."""

    def __init__(self, cfg: SearchConfig, space: SearchSpace, cost: CostModel, ctx: DistContext) -> None:
        self.cfg, self.space, self.cost, self.ctx = cfg, space, cost, ctx

    def run(self, train_set: SegmentationDataset, resume: bool = False, stop_at_step: Optional[int] = None,
            progress: bool = True) -> Dict[str, Any]:
        cfg, ctx, space, cost = self.cfg, self.ctx, self.space, self.cost
        out = Path(cfg.out_dir)
        last_path, log_path = out / "last.pt", out / "search_log.jsonl"
        if ctx.main:
            out.mkdir(parents=True, exist_ok=True)
            if last_path.exists() and not resume:
                raise FileExistsError(f"{last_path} exists: pass --resume to continue that search, or choose another --out")
        ctx.barrier()

        spec = train_set.spec
        perm = torch.randperm(len(train_set), generator=seeded_generator(cfg.seed, 7919)).tolist()
        half = len(perm) // 2
        view = TrainView(train_set, TrainTransform(tuple(cfg.crop), tuple(cfg.scale), True, cfg.jitter, spec.mean, spec.std), cfg.seed)
        weight_half, arch_half = _Subset(view, perm[:half]), _Subset(view, perm[half:])
        steps_per_epoch = EpochBatchSampler.steps_per_epoch(half, cfg.batch_size, ctx.world_size)
        if steps_per_epoch == 0:
            raise ValueError(f"half of {len(train_set)} training images is fewer than one batch of "
                             f"{cfg.batch_size} x {ctx.world_size} processes")
        total_steps = cfg.epochs * steps_per_epoch
        warmup_steps = cfg.warmup_epochs * steps_per_epoch

        torch.manual_seed(cfg.seed)  # same supernet on every rank and in every rerun
        net = Supernet(space, boosting=cfg.aux_weight > 0).to(ctx.device)
        w_opt = torch.optim.SGD(net.weight_parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        a_opt = torch.optim.Adam(net.arch_parameters(), lr=cfg.arch_lr, betas=(0.5, 0.999), weight_decay=cfg.arch_weight_decay)
        criterion = SegLoss(None, cfg.aux_weight).to(ctx.device)
        step, elapsed_before = 0, 0.0
        if resume and last_path.exists():
            ckpt = torch.load(last_path, map_location="cpu", weights_only=True)
            if ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("version") != CHECKPOINT_VERSION:
                raise ValueError(f"{last_path}: not a version-{CHECKPOINT_VERSION} search checkpoint")
            if ckpt["base"] != space.base.format() or ckpt["space"] != space.switches.format():
                raise ValueError(f"{last_path}: searched {ckpt['space']} around {ckpt['base']!r}, not this config's space")
            net.load_state_dict(ckpt["supernet"])
            w_opt.load_state_dict(ckpt["w_opt"])
            a_opt.load_state_dict(ckpt["a_opt"])
            step = int(ckpt["step"])
            elapsed_before = float(ckpt.get("wall_s", 0.0))
        if ctx.main:
            save_search_config(cfg, out / "config.yaml")
            truncate_log(log_path, step)

        def checkpoint() -> None:
            broadcast_buffers(net, ctx.world_size)
            if ctx.main:
                atomic_save({
                    "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": step,
                    "base": space.base.format(), "space": space.switches.format(),
                    "genotype": net.genotype().format(), "config": cfg.to_dict(), "lut": cost.table.source,
                    "supernet": net.state_dict(), "w_opt": w_opt.state_dict(), "a_opt": a_opt.state_dict(),
                    "wall_s": elapsed_before + time.time() - t0,
                }, last_path)

        def log(record: Dict[str, Any]) -> None:
            if ctx.main:
                with log_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")

        bar = tqdm(total=total_steps, initial=step, desc="search", unit="step", dynamic_ncols=True,
                   disable=not (progress and ctx.main))
        t0 = time.time()
        net.train()
        stopped = False
        while step < total_steps and not stopped:
            epoch, start = divmod(step, steps_per_epoch)
            loaders = [
                torch.utils.data.DataLoader(part, num_workers=cfg.num_workers, batch_sampler=EpochBatchSampler(
                    len(part), cfg.batch_size, epoch, cfg.seed + k, ctx.rank, ctx.world_size, start))
                for k, part in enumerate((weight_half, arch_half))
            ]
            epoch_records: List[Dict[str, Any]] = []
            for (xw, yw), (xa, ya) in zip(*loaders):
                # ---- weights (Eq. 3, inner problem): the sampled path, fixed
                lr = cfg.lr * (1.0 - step / total_steps) ** 0.9
                for group in w_opt.param_groups:
                    group["lr"] = lr
                drawn = net.sample(1.0, seeded_generator(cfg.seed, step, 0))
                w_opt.zero_grad(set_to_none=True)
                loss_w = criterion(net(xw.to(ctx.device), ArchSample(drawn.op_indices, drawn.ratio_indices)), yw.to(ctx.device))
                if not torch.isfinite(loss_w):
                    raise FloatingPointError(f"weight loss is {loss_w.item()} at step {step}; lower lr (now {lr:.4g})")
                loss_w.backward()
                average_gradients(net.weight_parameters(), ctx.world_size)
                w_opt.step()
                record: Dict[str, Any] = {"step": step + 1, "epoch": epoch, "loss_w": float(loss_w.detach()), "lr": lr}
                # ---- architecture (Eq. 3, outer problem): straight-through sample + cost loss
                if step >= warmup_steps:
                    tau = temperature(step - warmup_steps, total_steps - warmup_steps, cfg.tau_max, cfg.tau_min)
                    sample = net.sample(tau, seeded_generator(cfg.seed, step, 1))
                    a_opt.zero_grad(set_to_none=True)
                    loss_seg = criterion(net(xa.to(ctx.device), sample), ya.to(ctx.device))
                    op_p, ratio_p = net.probabilities()
                    expected = cost.expected(op_p, ratio_p)
                    derived = cost.cost(net.genotype())
                    loss_cost = cost_loss(expected, derived, cfg.target)
                    loss_a = loss_seg + cfg.cost_weight * loss_cost
                    loss_a.backward()
                    average_gradients(net.arch_parameters(), ctx.world_size)
                    a_opt.step()
                    net.zero_grad(set_to_none=True)  # weight grads of this pass are not used
                    record.update(tau=tau, loss_seg=float(loss_seg.detach()), loss_cost=float(loss_cost.detach()),
                                  expected_cost=float(expected.detach()), derived_cost=derived,
                                  sampled_cost=cost.cost(net.genotype_of(sample)))
                step += 1
                log(record)
                epoch_records.append(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss_w']:.3f}", cost=f"{record.get('expected_cost', float('nan')):.4g}")
                if stop_at_step is not None and step >= stop_at_step:
                    stopped = True
                    break
                if step % cfg.checkpoint_every == 0 and step % steps_per_epoch:
                    checkpoint()
            if step % steps_per_epoch == 0:
                op_p, ratio_p = net.probabilities()
                arch = [r for r in epoch_records if "expected_cost" in r]
                log({
                    "step": step, "epoch_end": step // steps_per_epoch,
                    "loss_w": sum(r["loss_w"] for r in epoch_records) / max(1, len(epoch_records)),
                    "loss_a": (sum(r["loss_seg"] + cfg.cost_weight * r["loss_cost"] for r in arch) / len(arch)) if arch else None,
                    "tau": arch[-1]["tau"] if arch else cfg.tau_max,
                    "expected_cost": float(cost.expected(op_p, ratio_p).detach()),
                    "sampled_cost": (sum(r["sampled_cost"] for r in arch) / len(arch)) if arch else None,
                    "derived_cost": cost.cost(net.genotype()),
                    "genotype": net.genotype().format(),
                    "probabilities": probabilities_record(net),
                })
            checkpoint()
            ctx.barrier()
        bar.close()

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
            "steps": step,
            "total_steps": total_steps,
            "finished": step >= total_steps,
            "lut": cost.table.source,
            "wall_s": elapsed_before + time.time() - t0,  # over every run of a resumed search
            "out_dir": str(out),
        }
        if ctx.world_size > 1:  # weights and architecture parameters alike, on every rank
            prints = replica_fingerprints(net)
            summary["replica_fingerprints"] = prints
            if any(p != prints[0] for p in prints):
                raise RuntimeError(f"search replicas diverged: parameter fingerprints per rank {prints}")
        if ctx.main:
            (out / "genotype.txt").write_text(genotype.format() + "\n")
            (out / "genotype_budget.txt").write_text(fitted.format() + "\n")
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
            plot_search_log(log_path, out, cfg.target, cost.metric)
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

