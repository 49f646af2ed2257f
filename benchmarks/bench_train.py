"""Training speed on this CPU: the old path (fp32, contiguous) against the new one (channels_last + bf16
autocast), and where one real epoch of ``hmseg-core train`` spends its time.

    python benchmarks/bench_train.py --steps 40 --models mrms_tiny,mrms --threads 2 [--json steps.json]
    python benchmarks/bench_train.py --profile-epoch --config config/train_camvid.yaml --data-root <camvid> \\
        -o model=mrms -o channels_last=true -o precision=bf16 [--max-steps 20] [--json epoch.json]

Steps mode: per model and path, one timed step is what ``hmseg_core.train`` does per batch (forward
under autocast, boosting loss in fp32, backward, SGD step) on a fixed random batch (no data loading).
The rows run interleaved in one process, ``--block`` steps each in turn, so load changes on this
shared machine spread over every row instead of landing on whichever ran last; each row keeps its
median and p95 seconds per step.

Profile mode: the training loop of ``hmseg-core train`` (same data, sampler, augmentation, network,
loss and optimizer, built from the same config) for one epoch or ``--max-steps``, then one
validation pass, with the wall time of each stage: ``data`` is the time the loop waits for the next
batch (with ``num_workers >= 1`` the worker decodes and augments in parallel, on the same cores),
``forward`` includes the loss, ``teacher`` is the distillation teacher's forward (when configured).
Without it, ``log.jsonl`` of a run gives only whole steps: its ``time`` field is the wall time since
the process started, so the differences between lines are seconds per step (data + forward +
backward + optimizer; checkpoints land on the step that writes them), and validation is the gap
before each line with a ``val`` key.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from typing import Dict, List

import numpy as np
import torch

from hmseg_core.config import load_config
from hmseg_core.losses import SegLoss
from hmseg_core.machine import cpu_model, retain_freed_memory
from hmseg_core.model import build_model
from hmseg_core.registry import get_genotype

#: the two paths compared: (memory format, autocast dtype or None)
PATHS = {
    "fp32 contiguous": (torch.contiguous_format, None),
    "channels_last bf16": (torch.channels_last, torch.bfloat16),
}


class StepRow:
    """One (model, path): a network, its optimizer and a fixed batch; ``step()`` is one training step."""

    def __init__(self, model: str, path: str, batch: int, crop, classes: int = 11) -> None:
        self.model, self.path = model, path
        self.memory_format, dtype = PATHS[path]
        torch.manual_seed(0)
        self.net = build_model(get_genotype(model, classes), boosting=True).to(memory_format=self.memory_format).train()
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.criterion = SegLoss(None, 1.0)
        self.autocast = torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None)
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(batch, 3, *crop, generator=g).contiguous(memory_format=self.memory_format)
        self.labels = torch.randint(0, classes, (batch, *crop), generator=g)
        self.seconds: List[float] = []

    def step(self) -> float:
        t = time.perf_counter()
        with self.autocast:
            outputs = self.net(self.images)
        loss = self.criterion(outputs, self.labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t

    def stats(self) -> Dict[str, float]:
        s = np.asarray(self.seconds)
        median = float(np.median(s))
        return {"model": self.model, "path": self.path, "steps": int(s.size), "median_s": median,
                "p95_s": float(np.percentile(s, 95)), "steps_per_s": 1.0 / median}


def bench_steps(args: argparse.Namespace) -> Dict:
    rows = [StepRow(m, p, args.batch, args.crop) for m in args.models for p in PATHS]
    for row in rows:  # allocations, thread pool, oneDNN kernels: before any timing
        for _ in range(args.warmup):
            row.step()
    while any(len(r.seconds) < args.steps for r in rows):
        for row in rows:
            for _ in range(min(args.block, args.steps - len(row.seconds))):
                row.seconds.append(row.step())
        print(f"{min(len(r.seconds) for r in rows)}/{args.steps} steps per row", file=sys.stderr)
    results = [r.stats() for r in rows]
    for r in results:
        old = next(o for o in results if o["model"] == r["model"] and o["path"] == "fp32 contiguous")
        r["speedup"] = old["median_s"] / r["median_s"]
    return {"mode": "steps", "cpu": cpu_model(), "threads": torch.get_num_threads(), "batch": args.batch,
            "crop": list(args.crop), "block": args.block, "rows": results}


def print_steps(doc: Dict) -> None:
    print(f"{doc['cpu']}, {doc['threads']} threads; batch {doc['batch']} at {doc['crop'][0]}x{doc['crop'][1]}, "
          f"one forward + backward + SGD step, rows interleaved in blocks of {doc['block']}")
    print("| model | path | steps | median s/step | p95 s/step | steps/s | speed-up |\n|---|---|---:|---:|---:|---:|---:|")
    for r in doc["rows"]:
        print(f"| {r['model']} | {r['path']} | {r['steps']} | {r['median_s']:.3f} | {r['p95_s']:.3f} | "
              f"{r['steps_per_s']:.3f} | {r['speedup']:.2f}x |")


def profile_epoch(args: argparse.Namespace) -> Dict:
    """One epoch (or ``--max-steps``) of the training loop and one validation pass, timed by stage."""
    from hmseg_core.data.datasets import SegmentationDataset, enet_class_weights
    from hmseg_core.data.transforms import EpochBatchSampler
    from hmseg_core.evaluate import evaluate
    from hmseg_core.train import load_teacher, pin_teacher, poly_lr, train_view

    cfg = pin_teacher(load_config(args.config, args.set, data_root=args.data_root, threads=args.threads or None))
    if not cfg.data_root:
        raise SystemExit("--profile-epoch needs a data set (--data-root or data_root in the config)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    times: Dict[str, float] = defaultdict(float)
    t = time.perf_counter()
    train_set = SegmentationDataset(cfg.data_root, cfg.train_split, cfg.layout or None)
    val_set = SegmentationDataset(cfg.data_root, cfg.val_split, train_set.layout)
    if cfg.cache:
        train_set.preload(), val_set.preload()
    spec = train_set.spec
    weights = torch.from_numpy(enet_class_weights(train_set.class_frequencies())) if cfg.class_weighting == "enet" else None
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    torch.manual_seed(cfg.seed)
    model = build_model(get_genotype(cfg.model, spec.num_classes), boosting=cfg.boosting).to(memory_format=memory_format).train()
    teacher = load_teacher(cfg, spec.class_names, torch.device("cpu"), memory_format) if cfg.teacher else None
    criterion = SegLoss(weights, cfg.aux_weight, cfg.ohem_thresh, cfg.ohem_min_kept)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    view = train_view(cfg, train_set)
    sampler = EpochBatchSampler(len(train_set), cfg.batch_size, 0, cfg.seed, 0, 1, 0)
    loader = torch.utils.data.DataLoader(view, batch_sampler=sampler, num_workers=cfg.num_workers)
    steps_per_epoch = EpochBatchSampler.steps_per_epoch(len(train_set), cfg.batch_size, 1)
    total = steps_per_epoch * cfg.epochs
    times["setup (once per process)"] = time.perf_counter() - t

    steps = 0
    t_epoch = t = time.perf_counter()
    for images, labels in loader:
        times["data"] += time.perf_counter() - t
        for group in opt.param_groups:
            group["lr"] = poly_lr(cfg, steps, total)
        t = time.perf_counter()
        images = images.contiguous(memory_format=memory_format)
        with autocast:
            outputs = model(images)
        loss = criterion(outputs, labels)
        times["forward"] += time.perf_counter() - t
        if teacher is not None:
            from hmseg_core.losses import distillation_loss

            t = time.perf_counter()
            with torch.no_grad(), autocast:
                target = teacher(images)
            loss = loss + cfg.distill_weight * distillation_loss(outputs["out"], target, labels, cfg.distill_temperature)
            times["teacher"] += time.perf_counter() - t
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        times["backward"] += time.perf_counter() - t
        t = time.perf_counter()
        opt.step()
        times["optimizer"] += time.perf_counter() - t
        steps += 1
        print(f"step {steps}/{min(steps_per_epoch, args.max_steps or steps_per_epoch)}: loss {float(loss.detach()):.3f}", file=sys.stderr)
        if args.max_steps and steps >= args.max_steps:
            break
        t = time.perf_counter()
    train_s = time.perf_counter() - t_epoch
    t = time.perf_counter()
    cm = evaluate(model, val_set, spec.mean, spec.std, progress=False)
    times["eval"] = time.perf_counter() - t
    stages = [{"stage": k, "seconds": v, "per_step_s": v / steps if k not in ("eval", "setup (once per process)") else None}
              for k, v in times.items()]
    return {"mode": "profile-epoch", "cpu": cpu_model(), "threads": torch.get_num_threads(), "model": cfg.model,
            "channels_last": cfg.channels_last, "precision": cfg.precision, "batch": cfg.batch_size, "crop": list(cfg.crop),
            "num_workers": cfg.num_workers, "steps": steps, "steps_per_epoch": steps_per_epoch, "train_loop_s": train_s,
            "val_images": len(val_set), "val_miou": cm.report(spec.class_names)["miou"], "stages": stages}


def print_profile(doc: Dict) -> None:
    print(f"{doc['cpu']}, {doc['threads']} threads; {doc['model']} ({'channels_last' if doc['channels_last'] else 'contiguous'}, "
          f"{doc['precision']}), batch {doc['batch']} at {doc['crop'][0]}x{doc['crop'][1]}, {doc['num_workers']} loader workers; "
          f"{doc['steps']} of {doc['steps_per_epoch']} steps per epoch, then validation on {doc['val_images']} images")
    timed = sum(s["seconds"] for s in doc["stages"] if not s["stage"].startswith("setup"))
    print("| stage | seconds | per step s | share |\n|---|---:|---:|---:|")
    for s in doc["stages"]:
        share = "" if s["stage"].startswith("setup") else f"{100 * s['seconds'] / timed:.1f} %"
        per = "" if s["per_step_s"] is None else f"{s['per_step_s']:.3f}"
        print(f"| {s['stage']} | {s['seconds']:.2f} | {per} | {share} |")
    if doc["steps"] < doc["steps_per_epoch"]:
        steps = [s for s in doc["stages"] if s["per_step_s"] is not None]
        epoch = sum(s["per_step_s"] for s in steps) * doc["steps_per_epoch"]
        print(f"one epoch extrapolated: {epoch:.0f} s of steps + {next(s['seconds'] for s in doc['stages'] if s['stage'] == 'eval'):.0f} s validation")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40, help="timed steps per row (steps mode)")
    p.add_argument("--models", type=lambda s: [m for m in s.split(",") if m], default=["mrms_tiny", "mrms"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=lambda s: tuple(int(v) for v in s.split("x")), default=(288, 384), help="HxW")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per row before the first timed one")
    p.add_argument("--block", type=int, default=5, help="steps per row before switching to the next")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--profile-epoch", action="store_true", help="profile one epoch of hmseg-core train by stage")
    p.add_argument("--config", default="config/train_camvid.yaml", help="profile mode: the training config")
    p.add_argument("--data-root", help="profile mode: the data set")
    p.add_argument("-o", "--set", action="append", default=[], metavar="KEY=VALUE", help="profile mode: override a config key")
    p.add_argument("--max-steps", type=int, default=0, help="profile mode: stop the epoch after this many steps")
    args = p.parse_args(argv)
    retain_freed_memory()  # as hmseg-core train runs
    torch.set_num_threads(args.threads)
    doc = profile_epoch(args) if args.profile_epoch else bench_steps(args)
    (print_profile if args.profile_epoch else print_steps)(doc)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
