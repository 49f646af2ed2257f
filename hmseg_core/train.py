"""Training from scratch: SGD + poly LR + boosting loss; resumable; single process or torchrun/DDP.

Resuming is exact: the data order of every epoch comes from ``(seed, epoch)``, each sample's
augmentation from ``(seed, epoch, index)``, and ``last.pt`` (written atomically every
``checkpoint_every`` steps) holds weights, optimizer state and the step counter. A run
killed at any moment and resumed with ``--resume`` reaches the same weights as one that
was never interrupted.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from .checkpoint import CheckpointError, atomic_save, load_checkpoint, make_checkpoint
from .config import TrainConfig, save_config
from .data.datasets import SegmentationDataset, enet_class_weights
from .data.synthetic import write_dataset
from .data.transforms import EpochBatchSampler, TrainTransform, TrainView
from .evaluate import evaluate
from .losses import SegLoss
from .model import build_model
from .plots import plot_training_log
from .registry import get_genotype


def poly_lr(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Linear warm-up, then ``lr * (1 - t)^power``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * (1.0 - min(step, total_steps - 1) / total_steps) ** cfg.poly_power


class DistContext:
    """Process-group bookkeeping; a plain single process when not launched by torchrun."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _prepare_data(cfg: TrainConfig, ctx: DistContext, out: Path) -> Path:
    if cfg.data_root:
        return Path(cfg.data_root)
    root = out / "synthetic"
    if ctx.main and not (root / "valannot").is_dir():
        write_dataset(root, "camvid", {cfg.train_split: cfg.synthetic_train, cfg.val_split: cfg.synthetic_val}, size=tuple(cfg.crop), seed=cfg.seed)
    ctx.barrier()
    return root


def truncate_log(log_path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be redone)."""
    if not log_path.is_file():
        return
    keep = [l for l in log_path.read_text().splitlines() if l.strip() and json.loads(l).get("step", 0) <= step]
    log_path.write_text("".join(k + "\n" for k in keep))


def replica_fingerprints(model: torch.nn.Module) -> list:
    """Per-rank parameter checksum (sum and sum of squares, float64), gathered on every rank."""
    with torch.no_grad():
        flat = torch.cat([p.detach().double().reshape(-1).cpu() for p in model.parameters()])
        mine = torch.stack([flat.sum(), (flat * flat).sum()])
    gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    return [g.tolist() for g in gathered]


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Train per ``cfg``; returns a summary (best val mIoU, steps, wall time, paths)."""
    cfg.validate()
    ctx = DistContext()
    try:
        return _train(cfg, ctx, resume, progress)
    finally:
        ctx.close()


def _train(cfg: TrainConfig, ctx: DistContext, resume: bool, progress: bool) -> Dict[str, Any]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    last_path, best_path, log_path = out / "last.pt", out / "best.pt", out / "log.jsonl"
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        if last_path.exists() and not resume:
            raise FileExistsError(f"{last_path} exists: pass --resume to continue that run, or choose another --out")
    ctx.barrier()

    root = _prepare_data(cfg, ctx, out)
    train_set = SegmentationDataset(root, cfg.train_split, cfg.layout or None)
    val_set = SegmentationDataset(root, cfg.val_split, train_set.layout) if cfg.eval_every else None
    if cfg.cache:
        for d in (train_set, val_set):
            if d is not None:
                d.preload()
    spec = train_set.spec
    genotype = get_genotype(cfg.model, spec.num_classes)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank and in every rerun
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = build_model(genotype, boosting=cfg.boosting).to(ctx.device, memory_format=memory_format)

    ckpt: Optional[Dict[str, Any]] = None
    if resume and last_path.exists():
        ckpt = load_checkpoint(last_path)
        if ckpt["genotype"] != genotype.format():
            raise CheckpointError(f"{last_path}: trained genotype differs from config model {cfg.model!r}")
        if ckpt.get("world_size", 1) != ctx.world_size:
            print(f"warning: resuming a {ckpt.get('world_size')}-process run with {ctx.world_size} processes; data order changes")
        model.load_state_dict(ckpt["model"])

    if ckpt is not None and ckpt.get("class_weights") is not None:
        class_weights = torch.tensor(ckpt["class_weights"])
    elif cfg.class_weighting == "enet":
        class_weights = torch.from_numpy(enet_class_weights(train_set.class_frequencies()))
    else:
        class_weights = None
    criterion = SegLoss(class_weights, cfg.aux_weight, cfg.ohem_thresh, cfg.ohem_min_kept).to(ctx.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    step, best_miou = 0, -1.0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        step, best_miou = int(ckpt["step"]), float(ckpt.get("best_miou", -1.0))

    net = DDP(model) if ctx.world_size > 1 else model
    steps_per_epoch = EpochBatchSampler.steps_per_epoch(len(train_set), cfg.batch_size, ctx.world_size)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_set)} training images are fewer than one batch of {cfg.batch_size} x {ctx.world_size} processes")
    total_steps = cfg.epochs * steps_per_epoch
    view = TrainView(
        train_set,
        TrainTransform(tuple(cfg.crop), tuple(cfg.scale), True, cfg.jitter, spec.mean, spec.std),
        cfg.seed,
    )
    if ctx.main:
        save_config(cfg, out / "config.yaml")
        truncate_log(log_path, step)

    def checkpoint(path: Path, **extra: Any) -> None:
        payload = make_checkpoint(
            model, spec.class_names, spec.palette, spec.mean, spec.std, cfg.to_dict(),
            step=step, epoch=step // steps_per_epoch, total_steps=total_steps, best_miou=best_miou,
            optimizer=optimizer.state_dict(), world_size=ctx.world_size,
            class_weights=None if class_weights is None else class_weights.tolist(), **extra,
        )
        atomic_save(payload, path)

    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True, disable=not (progress and ctx.main))
    t0, loss_ema = time.time(), None
    net.train()
    while step < total_steps:
        epoch, start = divmod(step, steps_per_epoch)
        sampler = EpochBatchSampler(len(train_set), cfg.batch_size, epoch, cfg.seed, ctx.rank, ctx.world_size, start)
        loader = torch.utils.data.DataLoader(
            view, batch_sampler=sampler, num_workers=cfg.num_workers, persistent_workers=False,
        )
        for images, labels in loader:
            lr = poly_lr(cfg, step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = images.to(ctx.device, non_blocking=True).contiguous(memory_format=memory_format)
            labels = labels.to(ctx.device, non_blocking=True)
            with autocast:
                outputs = net(images)
            loss = criterion(outputs, labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower lr (now {lr:.4g})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            value = float(loss.detach())
            loss_ema = value if loss_ema is None else 0.95 * loss_ema + 0.05 * value
            if ctx.main:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_ema:.3f}", lr=f"{lr:.2e}", epoch=f"{step / steps_per_epoch:.1f}")
                with log_path.open("a") as f:
                    f.write(json.dumps({"step": step, "loss": value, "lr": lr, "time": time.time() - t0}) + "\n")
                if step % cfg.checkpoint_every == 0 and step % steps_per_epoch:
                    checkpoint(last_path)
        epoch_done = step // steps_per_epoch
        if ctx.main:
            final = step >= total_steps
            if val_set is not None and (final or epoch_done % cfg.eval_every == 0):
                cm = evaluate(model, val_set, spec.mean, spec.std, progress=False)
                report = cm.report(spec.class_names)
                bar.write(f"epoch {epoch_done}/{cfg.epochs} step {step}: val mIoU {100 * report['miou']:.2f}")
                with log_path.open("a") as f:
                    f.write(json.dumps({"step": step, "epoch": epoch_done, "val": report}) + "\n")
                if report["miou"] > best_miou:
                    best_miou = report["miou"]
                    checkpoint(best_path, val=report)
            checkpoint(last_path)
        ctx.barrier()
    bar.close()
    summary = {"steps": step, "epochs": cfg.epochs, "best_miou": best_miou, "out_dir": str(out), "wall_s": time.time() - t0}
    if ctx.world_size > 1:
        prints = replica_fingerprints(model)
        summary["replica_fingerprints"] = prints
        if any(p != prints[0] for p in prints):
            raise RuntimeError(f"DDP replicas diverged: parameter fingerprints per rank {prints}")
    if ctx.main:
        if not best_path.exists():  # no validation configured: the final weights are the result
            checkpoint(best_path)
        plot_training_log(log_path, out / "curves.png")
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
