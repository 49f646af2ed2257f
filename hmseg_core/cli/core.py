"""``hmseg-core models``, ``genotype``, ``train``, ``eval`` and ``demo``: networks, training, evaluation.

Importing this module imports neither torch nor the library; each handler imports what it runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import args as argtypes


# ---------------------------------------------------------------------------- models
def cmd_models(args: argparse.Namespace) -> int:
    from ..profile import count_macs, count_params
    from ..registry import create_model, list_models

    rows = []
    variants = [(n, {}) for n in list_models()]
    if args.ablation:
        variants += [(n, dict(lcf=lcf, lge=lge)) for n in list_models() for lcf, lge in ((False, False), (False, True), (True, False))]
    for name, switches in variants:
        row = {"model": name, "lcf": int(switches.get("lcf", True)), "lge": int(switches.get("lge", True))}
        for size, classes in args.sizes:
            net = create_model(name, classes, boosting=False, **switches).eval()
            row[f"params_{classes}c"] = count_params(net)
            row[f"gmacs_{size[0]}x{size[1]}"] = count_macs(net, size) / 1e9
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        cells = [f"{r[k] / 1e6:.3f}M" if k.startswith("params") else f"{r[k]:.3f}" if isinstance(r[k], float) else str(r.get(k, "")) for k in keys]
        print("| " + " | ".join(cells) + " |")
    return 0


# ---------------------------------------------------------------------------- genotype
def cmd_genotype(args: argparse.Namespace) -> int:
    from ..registry import get_genotype

    g = get_genotype(args.model, args.classes)
    print(json.dumps(g.to_dict(), indent=2) if args.json else g.format())
    return 0


# ---------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..train import train

    cfg = load_config(
        args.config, args.set, model=args.model, data_root=args.data_root, out_dir=args.out,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, threads=args.threads, teacher=args.teacher,
    )
    summary = train(cfg, resume=args.resume)
    if summary is not None:
        print(json.dumps(summary, indent=2))
    return 0


# ---------------------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    from ..metrics import format_table

    if args.backend:
        report = _eval_on_backend(args)
    else:
        from ..evaluate import evaluate_checkpoint

        report = evaluate_checkpoint(
            args.checkpoint, args.data_root, args.split, args.layout, args.input_size,
            Path(args.save_images) if args.save_images else None,
            Path(args.report) if args.report else None, args.threads,
        )
    print(format_table(report))
    print(f"\n{report['images']} images, split '{args.split}', mIoU {100 * report['miou']:.2f} %")
    if args.report:
        print(f"report: {args.report}")
    return 0


def _eval_on_backend(args: argparse.Namespace) -> dict:
    """The deployed path: a :class:`~hmseg_core.runtime.Segmenter` on ``args.backend`` (a package runs its
    compiled backends) over the split, frame by frame, at the images' own size."""
    from ..bag import dataset_drive, evaluate_frames
    from ..io import atomic_write_json
    from ..machine import set_threads
    from ..runtime import Segmenter

    if args.save_images or args.input_size:
        raise ValueError("--backend evaluates at the images' own size and saves no images; drop --input-size/--save-images")
    if args.threads:
        set_threads(args.threads)
    seg = Segmenter(args.checkpoint, args.backend)
    spec, frames = dataset_drive(args.data_root, args.split, args.layout)
    if spec.num_classes != seg.num_classes:
        raise ValueError(f"{args.checkpoint}: model predicts {seg.num_classes} classes, the data set has {spec.num_classes}")
    seen = []
    cm = evaluate_frames(seg, (seen.append(f.name) or f for f in frames), seg.num_classes)
    report = cm.report(seg.class_names)
    report.update(checkpoint=str(args.checkpoint), backend=seg.backend_name, genotype=seg.genotype, data_root=str(args.data_root),
                  split=args.split, images=len(seen), confusion_matrix=cm.matrix.tolist())
    if args.report:
        atomic_write_json(args.report, report)
    return report


# ---------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    """The built-in default job: train and evaluate mrms_tiny on generated street scenes."""
    import torch

    from ..checkpoint import model_from_checkpoint
    from ..config import load_config
    from ..machine import time_calls
    from ..train import train

    out = Path(args.out)
    cfg = load_config(
        None, [], model=args.model, out_dir=str(out), epochs=args.epochs, batch_size=8, lr=0.05,
        crop=(192, 256), scale=(0.75, 1.25), eval_every=args.epochs, checkpoint_every=20,
        synthetic_train=48, synthetic_val=12, num_workers=0, threads=args.threads,
    )
    summary = train(cfg, resume=(out / "last.pt").exists())
    model, _ = model_from_checkpoint(out / "best.pt")
    x = torch.randn(1, 3, 360, 480)
    with torch.no_grad():
        times = sorted(time_calls(lambda: model(x), 20, warmup=3))
    print(
        f"\n{cfg.model}: synthetic val mIoU {100 * summary['best_miou']:.1f} % after {summary['steps']} steps; "
        f"PyTorch eager latency at 360x480: median {times[len(times) // 2]:.1f} ms "
        f"({torch.get_num_threads()} threads)\nrun folder: {out}"
    )
    return 0


# ---------------------------------------------------------------------------- parser
def register(sub: argparse._SubParsersAction) -> None:
    """Add ``models``, ``genotype``, ``train``, ``eval`` and ``demo`` to ``sub``."""
    m = sub.add_parser("models", help="list registered variants with params and MACs")
    m.add_argument("--sizes", type=argtypes.sizes, nargs="+", default=[((768, 1536), 19), ((360, 480), 11)], metavar="HxW@CLASSES")
    m.add_argument("--ablation", action="store_true", help="also list the LCF/LGE ablation switches (paper Table 4)")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)

    g = sub.add_parser("genotype", help="print a variant's genotype (canonical string or JSON)")
    g.add_argument("model", help="registered name or genotype string")
    g.add_argument("--classes", type=int, default=None,
                   help="class count (default: a genotype string's own; 19 for a registered name)")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_genotype)

    t = sub.add_parser("train", help="train from scratch (resumable; works under torchrun)")
    t.add_argument("--config", help="YAML file of TrainConfig keys (e.g. config/train_camvid.yaml)")
    t.add_argument("--model")
    t.add_argument("--data-root", help="data set root (CamVid or Cityscapes layout); default: generated scenes")
    t.add_argument("--out", help="run folder (checkpoints, log, config)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--threads", type=int)
    t.add_argument("--teacher", metavar="CKPT",
                   help="distil from this trained checkpoint (KL on softened logits beside the label loss; "
                        "distill_weight, distill_temperature)")
    t.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    t.add_argument("--set", "-o", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="mIoU of a checkpoint on a data set split")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data-root", required=True)
    e.add_argument("--split", default="val")
    e.add_argument("--layout", choices=["camvid", "cityscapes"])
    e.add_argument("--input-size", type=argtypes.size, help="resize inputs to HxW for the network (labels stay native)")
    e.add_argument("--save-images", help="folder for colourised predictions")
    e.add_argument("--report", help="write the JSON report here")
    e.add_argument("--threads", type=int, default=0)
    e.add_argument("--backend", help="evaluate the deployed path on this backend (a package: tvm, onnxruntime, openvino, "
                                     "openvino-bf16, torch, auto); default: the checkpoint's network in PyTorch")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="built-in default job: train + evaluate on generated street scenes")
    d.add_argument("--model", default="mrms_tiny")
    d.add_argument("--epochs", type=int, default=30)
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--threads", type=int, default=0)
    d.set_defaults(func=cmd_demo)
