"""Training from scratch: SGD + poly LR + boosting loss; resumable; single process or torchrun/DDP.

Resuming is exact: the data order of every epoch comes from ``(seed, epoch)``, each sample's
augmentation from ``(seed, epoch, index)``, and ``last.pt`` (written atomically every
``checkpoint_every`` steps) holds weights, optimizer state and the step counter. A run
killed at any moment and resumed with ``--resume`` reaches the same weights as one that
was never interrupted.

With ``teacher`` set, the student also learns from a trained teacher's logits
(:func:`~hmseg_core.losses.distillation_loss`, FasterSeg's teacher -> student); the teacher runs
without gradients, in eval mode without boosting heads, under the student's autocast and memory
format. The teacher file's digest is recorded in the config and checked on resume.

With ``ema_decay`` set, an exponential moving average of the weights follows the training
(:func:`update_average`, timm's ModelEma); it is what validation measures and what ``best.pt`` and
the final weights hold, and ``last.pt`` carries it for an exact resume.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from .checkpoint import CheckpointError, atomic_save, load_checkpoint, make_checkpoint, model_from_checkpoint
from .config import ConfigError, TrainConfig, save_config
from .data.datasets import DatasetSpec, SegmentationDataset, enet_class_weights
from .data.synthetic import write_dataset
from .data.transforms import EpochBatchSampler, TrainTransform, TrainView
from .evaluate import evaluate
from .io import stale_temporaries
from .io import digest
from .losses import SegLoss, distillation_loss
from .model import HMSegNet, build_model
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
    cfg = pin_teacher(cfg.validate())
    ctx = DistContext()
    try:
        return _train(cfg, ctx, resume, progress)
    finally:
        ctx.close()


def pin_teacher(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the teacher's absolute path and file digest (``teacher_digest``), which the
    checkpoints then record; a digest already set must match the file. No teacher: ``cfg``."""
    if not cfg.teacher:
        return cfg
    path = Path(cfg.teacher)
    if not path.is_file():
        raise ConfigError(f"{path}: teacher checkpoint not found")
    actual = digest(path)
    if cfg.teacher_digest and cfg.teacher_digest != actual:
        raise ConfigError(f"{path}: teacher_digest {cfg.teacher_digest[:16]}... does not match the file ({actual[:16]}...)")
    return dataclasses.replace(cfg, teacher=str(path.resolve()), teacher_digest=actual)


def load_teacher(cfg: TrainConfig, class_names, device: torch.device, memory_format: torch.memory_format) -> HMSegNet:
    """The teacher as the student's loss runs it: eval mode, no boosting heads, no gradients,
    the student's memory format. It must predict the data set's classes (``class_names``)."""
    model, ckpt = model_from_checkpoint(cfg.teacher, boosting=False)
    if list(ckpt["class_names"]) != list(class_names):
        raise ConfigError(f"{cfg.teacher}: teacher predicts {list(ckpt['class_names'])}, the data set {list(class_names)}")
    return model.to(device, memory_format=memory_format).requires_grad_(False).eval()


@dataclass
class _TrainRun:
    """What one training run works on: data, network, optimizer, schedule and progress."""

    out: Path
    train_set: SegmentationDataset
    val_set: Optional[SegmentationDataset]
    view: TrainView
    model: HMSegNet
    net: torch.nn.Module  # the model, wrapped in DDP under torchrun
    memory_format: torch.memory_format
    class_weights: Optional[torch.Tensor]
    criterion: SegLoss
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    total_steps: int
    step: int = 0
    best_miou: float = -1.0
    t0: float = 0.0  # when this process started stepping
    loss_ema: Optional[float] = None
    teacher: Optional[HMSegNet] = None  # distillation: the trained teacher (inference only)
    average: Optional[HMSegNet] = None  # ema_decay: the moving average of the weights

    @property
    def shipped(self) -> HMSegNet:
        """The weights validation measures and ``best.pt`` holds: the average's when there is one."""
        return self.model if self.average is None else self.average

    @property
    def spec(self) -> DatasetSpec:
        return self.train_set.spec

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "best.pt"

    @property
    def log_path(self) -> Path:
        return self.out / "log.jsonl"


def _train(cfg: TrainConfig, ctx: DistContext, resume: bool, progress: bool) -> Dict[str, Any]:
    """Set up (or resume), run the epochs, summarise."""
    run = _setup(cfg, ctx, resume)
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    bar = tqdm(total=run.total_steps, initial=run.step, desc="train", unit="step", dynamic_ncols=True, disable=not (progress and ctx.main))
    run.t0 = time.time()
    run.net.train()
    while run.step < run.total_steps:
        _epoch(cfg, ctx, run, autocast, bar)
        if ctx.main:
            _end_epoch(cfg, ctx, run, bar)
        ctx.barrier()
    bar.close()
    return _finish(cfg, ctx, run)


def _setup(cfg: TrainConfig, ctx: DistContext, resume: bool) -> _TrainRun:
    """The run folder, the data, the network, loss and optimizer; resumed from ``last.pt`` if asked."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    last_path = out / "last.pt"
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        if last_path.exists() and not resume:
            raise FileExistsError(f"{last_path} exists: pass --resume to continue that run, or choose another --out")
        if resume and not last_path.exists():
            print(f"train: nothing to resume in {out} (no last.pt): starting a new run", file=sys.stderr)
        # a process killed while writing a checkpoint (SIGKILL, power loss) leaves its temporary file behind
        for stale in stale_temporaries(last_path) + stale_temporaries(out / "best.pt"):
            stale.unlink()
    ctx.barrier()

    train_set, val_set = _datasets(cfg, ctx, out)
    spec = train_set.spec
    genotype = get_genotype(cfg.model, spec.num_classes)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank and in every rerun
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = build_model(genotype, boosting=cfg.boosting).to(ctx.device, memory_format=memory_format)
    teacher = load_teacher(cfg, spec.class_names, ctx.device, memory_format) if cfg.teacher else None

    ckpt = _resume_checkpoint(cfg, ctx, last_path, genotype.format()) if resume and last_path.exists() else None
    if ckpt is not None:
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

    average = _weight_average(cfg, model, ckpt, last_path) if cfg.ema_decay else None
    net = DDP(model) if ctx.world_size > 1 else model
    steps_per_epoch = EpochBatchSampler.steps_per_epoch(len(train_set), cfg.batch_size, ctx.world_size)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_set)} training images are fewer than one batch of {cfg.batch_size} x {ctx.world_size} processes")
    view = train_view(cfg, train_set)
    run = _TrainRun(out, train_set, val_set, view, model, net, memory_format, class_weights, criterion, optimizer,
                    steps_per_epoch, cfg.epochs * steps_per_epoch, step, best_miou, teacher=teacher, average=average)
    if ctx.main:
        save_config(cfg, out / "config.yaml")
        truncate_log(run.log_path, step)
    return run


def _weight_average(cfg: TrainConfig, model: HMSegNet, ckpt: Optional[Dict[str, Any]], last_path: Path) -> HMSegNet:
    """The moving average of ``model``'s weights: a copy of them, or the one ``ckpt`` carries when resuming."""
    average = copy.deepcopy(model).requires_grad_(False)
    if ckpt is not None and ckpt.get("ema") is not None:
        average.load_state_dict(ckpt["ema"])
    elif ckpt is not None:
        print(f"train: {last_path} has no weight average (trained without ema_decay): the average starts from its weights",
              file=sys.stderr)
    return average


@torch.no_grad()
def update_average(average: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """One step of the moving average after optimizer step ``step`` (0-based): every floating-point tensor
    of the state (weights and BatchNorm statistics) moves to ``model``'s by ``1 - d``, with ``d =
    min(decay, (1 + step) / (10 + step))`` so that the first steps do not keep the random initialisation;
    the rest (BatchNorm's batch counters) is copied."""
    d = min(decay, (1 + step) / (10 + step))
    for a, m in zip(average.state_dict().values(), model.state_dict().values()):
        if a.is_floating_point():
            a.lerp_(m, 1.0 - d)
        else:
            a.copy_(m)


def train_view(cfg: TrainConfig, train_set: SegmentationDataset) -> TrainView:
    """The augmented training samples of ``cfg``'s recipe, keyed ``(index, epoch)``: ``early_crop`` for the
    first ``early_epochs`` epochs, then ``crop``."""
    spec = train_set.spec

    def transform(crop: Tuple[int, int]) -> TrainTransform:
        return TrainTransform(tuple(crop), tuple(cfg.scale), True, cfg.jitter, spec.mean, spec.std)

    early = (cfg.early_epochs, transform(cfg.early_crop)) if cfg.early_crop is not None else None
    return TrainView(train_set, transform(cfg.crop), cfg.seed, early)


def _datasets(cfg: TrainConfig, ctx: DistContext, out: Path) -> Tuple[SegmentationDataset, Optional[SegmentationDataset]]:
    """The training split and, when validation is configured, the validation split (preloaded with ``cache``)."""
    root = _prepare_data(cfg, ctx, out)
    train_set = SegmentationDataset(root, cfg.train_split, cfg.layout or None)
    val_set = SegmentationDataset(root, cfg.val_split, train_set.layout) if cfg.eval_every else None
    if cfg.cache:
        for d in (train_set, val_set):
            if d is not None:
                d.preload()
    return train_set, val_set


def _resume_checkpoint(cfg: TrainConfig, ctx: DistContext, path: Path, genotype: str) -> Dict[str, Any]:
    """``last.pt`` to resume from; it must hold the configured model (``genotype``, canonical string)."""
    ckpt = load_checkpoint(path)
    if ckpt["genotype"] != genotype:
        raise CheckpointError(f"{path}: trained genotype differs from config model {cfg.model!r}")
    recorded = (ckpt.get("config") or {}).get("teacher_digest", "")
    if recorded != cfg.teacher_digest:  # the distillation target must stay the same for an exact resume
        raise ConfigError(f"{path}: trained with teacher digest {recorded[:16] or 'none'}, config teacher "
                          f"{cfg.teacher or 'none'} has {cfg.teacher_digest[:16] or 'none'}")
    if ckpt.get("world_size", 1) != ctx.world_size:
        print(f"warning: resuming a {ckpt.get('world_size')}-process run with {ctx.world_size} processes; data order changes")
    return ckpt


def _epoch(cfg: TrainConfig, ctx: DistContext, run: _TrainRun, autocast: torch.autocast, bar: tqdm) -> None:
    """The rest of the current epoch from ``run.step``: steps, their log lines, periodic checkpoints."""
    epoch, start = divmod(run.step, run.steps_per_epoch)
    sampler = EpochBatchSampler(len(run.train_set), cfg.batch_size, epoch, cfg.seed, ctx.rank, ctx.world_size, start)
    loader = torch.utils.data.DataLoader(
        run.view, batch_sampler=sampler, num_workers=cfg.num_workers, persistent_workers=False,
    )
    for images, labels in loader:
        lr = poly_lr(cfg, run.step, run.total_steps)
        value, kd = _step(cfg, ctx, run, images, labels, lr, autocast)
        run.loss_ema = value if run.loss_ema is None else 0.95 * run.loss_ema + 0.05 * value
        if ctx.main:
            bar.update(1)
            bar.set_postfix(loss=f"{run.loss_ema:.3f}", lr=f"{lr:.2e}", epoch=f"{run.step / run.steps_per_epoch:.1f}")
            record = {"step": run.step, "loss": value, "lr": lr, "time": time.time() - run.t0}
            if kd is not None:
                record["kd"] = kd
            with run.log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if run.step % cfg.checkpoint_every == 0 and run.step % run.steps_per_epoch:
                _checkpoint(cfg, ctx, run, run.last_path)


def _step(cfg: TrainConfig, ctx: DistContext, run: _TrainRun, images: torch.Tensor, labels: torch.Tensor, lr: float,
          autocast: torch.autocast) -> Tuple[float, Optional[float]]:
    """One SGD step at learning rate ``lr`` (forward under ``autocast``, loss in fp32); returns the loss
    and, when distilling, its distillation term (before ``distill_weight``)."""
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    images = images.to(ctx.device, non_blocking=True).contiguous(memory_format=run.memory_format)
    labels = labels.to(ctx.device, non_blocking=True)
    with autocast:
        outputs = run.net(images)
    loss = run.criterion(outputs, labels)
    kd = None
    if run.teacher is not None:
        with torch.no_grad(), autocast:
            target = run.teacher(images)
        kd = distillation_loss(outputs["out"] if isinstance(outputs, dict) else outputs, target, labels, cfg.distill_temperature)
        loss = loss + cfg.distill_weight * kd
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at step {run.step}; lower lr (now {lr:.4g})")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    if run.average is not None:
        update_average(run.average, run.model, cfg.ema_decay, run.step)
    run.step += 1
    return float(loss.detach()), (None if kd is None else float(kd.detach()))


def _end_epoch(cfg: TrainConfig, ctx: DistContext, run: _TrainRun, bar: tqdm) -> None:
    """After an epoch (main process): validation when due (``best.pt`` on a new best mIoU), then ``last.pt``."""
    epoch_done = run.step // run.steps_per_epoch
    final = run.step >= run.total_steps
    if run.val_set is not None and (final or epoch_done % cfg.eval_every == 0):
        spec = run.spec
        report = evaluate(run.shipped, run.val_set, spec.mean, spec.std, progress=False).report(spec.class_names)
        record = {"step": run.step, "epoch": epoch_done, "val": report}
        line = f"epoch {epoch_done}/{cfg.epochs} step {run.step}: val mIoU {100 * report['miou']:.2f}"
        if run.average is not None:  # the trained weights beside their average
            raw = evaluate(run.model, run.val_set, spec.mean, spec.std, progress=False).report(spec.class_names)
            record["val_raw"] = {k: raw[k] for k in ("miou", "pixel_accuracy") if k in raw}
            line += f" (weight average; trained weights {100 * raw['miou']:.2f})"
        bar.write(line)
        with run.log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if report["miou"] > run.best_miou:
            run.best_miou = report["miou"]
            _checkpoint(cfg, ctx, run, run.best_path, val=report)
    _checkpoint(cfg, ctx, run, run.last_path)


def _checkpoint(cfg: TrainConfig, ctx: DistContext, run: _TrainRun, path: Path, **extra: Any) -> None:
    """A self-describing checkpoint of the run as it stands (weights, optimizer, progress), written atomically.
    ``last.pt`` holds the trained weights to resume from (and their average, ``ema``); any other, the
    weights that ship (:attr:`_TrainRun.shipped`)."""
    spec = run.spec
    resume = path == run.last_path
    if resume and run.average is not None:
        extra["ema"] = run.average.state_dict()
    payload = make_checkpoint(
        run.model if resume else run.shipped, spec.class_names, spec.palette, spec.mean, spec.std, cfg.to_dict(),
        step=run.step, epoch=run.step // run.steps_per_epoch, total_steps=run.total_steps, best_miou=run.best_miou,
        optimizer=run.optimizer.state_dict(), world_size=ctx.world_size,
        class_weights=None if run.class_weights is None else run.class_weights.tolist(), **extra,
    )
    atomic_save(payload, path)


def _finish(cfg: TrainConfig, ctx: DistContext, run: _TrainRun) -> Dict[str, Any]:
    """The summary (replicas checked under torchrun), ``best.pt`` if no validation chose one, the curves."""
    summary = {"steps": run.step, "epochs": cfg.epochs, "best_miou": run.best_miou, "out_dir": str(run.out),
               "wall_s": time.time() - run.t0}
    if ctx.world_size > 1:
        prints = replica_fingerprints(run.model)
        summary["replica_fingerprints"] = prints
        if any(p != prints[0] for p in prints):
            raise RuntimeError(f"DDP replicas diverged: parameter fingerprints per rank {prints}")
    if ctx.main:
        if not run.best_path.exists():  # no validation configured: the final weights are the result
            _checkpoint(cfg, ctx, run, run.best_path)
        plot_training_log(run.log_path, run.out / "curves.png")
        (run.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
