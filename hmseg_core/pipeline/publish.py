"""``zoo publish``: finished variants of a build copied into a shipped zoo (``hmseg_core/zoo``) as weights only.

Each variant whose validation is done is written as ``<to>/<zoo name>_<variant>.pt``
(:func:`~hmseg_core.checkpoint.inference_checkpoint`: no optimizer state, no boosting heads) with an
index entry carrying its val mIoU, genotype, params, MACs and, once measured, its latencies on the
build machine. A variant the shipped index already has with an mIoU at least as high is kept as it
is; entries the build does not make are kept too. The index is rewritten atomically, its leading
comment kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List

from .build import BuildError, ZooBuild, latency_entry

Log = Callable[[str], None]


def _comment(index: Path) -> str:
    if not index.is_file():
        return ""
    lines = []
    for line in index.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip())
    return "\n".join(lines)


def publish(build: ZooBuild, to: Path, allow_synthetic: bool = False, log: Log = print) -> List[Dict[str, Any]]:
    """Copy the finished variants of ``build`` into the zoo folder ``to``; returns what happened to each."""
    from ..checkpoint import atomic_save, inference_checkpoint, load_checkpoint
    from ..machine import cpu_model
    from ..runtime.zoo import ModelZoo, Variant
    from .steps import network_costs

    cfg = build.cfg
    if not cfg.data_root and not allow_synthetic:
        raise BuildError(f"{cfg.path}: this build trains on generated street scenes (no data_root); "
                         "pass --allow-synthetic to publish its models anyway")
    index = to / "zoo.yaml"
    shipped = ModelZoo.load(index).variants if index.is_file() else []
    entries = {v.name: v for v in shipped}
    measure = build.state("measure")
    latency = measure.marker["result"]["latency"] if measure.state == "done" else {}
    backend = build.pareto_backend()
    report = []
    for name in cfg.variants():
        ev = build.state("eval", name)
        if ev.state != "done":
            report.append({"variant": name, "action": "not finished", "state": ev.state})
            continue
        miou = ev.marker["result"]["miou"]
        old = entries.get(name)
        if old is not None and old.miou >= miou:
            log(f"keep shipped {name}: val mIoU {100 * old.miou:.2f} % >= built {100 * miou:.2f} %")
            report.append({"variant": name, "action": "kept shipped", "shipped_miou": old.miou, "built_miou": miou})
            continue
        trained = build.result("train", name)
        dest = to / f"{cfg.name}_{name}.pt"
        atomic_save(inference_checkpoint(load_checkpoint(build.runs / trained["checkpoint"])), dest)
        params, macs = network_costs(dest, cfg.export.input_size)
        extra: Dict[str, Any] = {"genotype": trained["genotype"], "params": params, "macs": macs,
                                 "input_size": list(cfg.export.input_size), "epochs": trained["epochs"]}
        if cfg.train.teacher and name != cfg.train.teacher:
            extra["distilled_from"] = cfg.train.teacher
        if name in latency:
            extra["latency_ms"] = latency[name].get(backend, {}).get("total_p95_ms")
            extra["latency"] = {b: latency_entry(s) for b, s in latency[name].items()}
            extra["measured_on"] = f"{cpu_model()}, {cfg.measure.threads} threads"
        entries[name] = Variant(name, dest, miou, extra)
        log(f"publish {name}: val mIoU {100 * miou:.2f} % -> {dest}")
        report.append({"variant": name, "action": "published", "miou": miou, "file": str(dest)})
    if any(r["action"] == "published" for r in report):
        order = [v.name for v in shipped] + [n for n in entries if n not in {v.name for v in shipped}]
        comment = _comment(index) or f"Trained {cfg.name} variants; mIoU on the validation split (hmseg-core zoo publish)."
        ModelZoo([entries[n] for n in order], index).save(index, comment=comment)
    return report


__all__ = ["publish"]
