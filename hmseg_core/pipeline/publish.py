"""``zoo publish``: finished variants of a build copied into a shipped zoo (``hmseg_core/zoo``) as weights only.

Each variant whose validation is done is written as ``<to>/<zoo name>_<variant>.pt``
(:func:`~hmseg_core.checkpoint.inference_checkpoint`: no optimizer state, no boosting heads) with an
index entry carrying its val mIoU, genotype, params, MACs and, once measured, its latencies on the
build machine. A variant the shipped index already has with an mIoU at least as high is kept (its
latencies replaced by the build's when it is the same network, so that all are of one run); one that
replaces a shipped entry of the same network keeps that entry's latencies until the build measures
its own; entries the build does not make are kept too, with the latencies the build measured beside its
variants (``measure.published``) when those were their weights. The index is rewritten atomically, its
leading comment kept.

Beside the index, ``searches.yaml`` keeps each finished search (its recipe, the budget-fitted genotype,
the machine that searched), so that a build on a fresh machine adopts it instead of searching again
(``search.adopt``); a search the file already has with the same recipe is kept as it is.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List

import yaml

from .build import BuildError, ZooBuild, same_recipe, latency_entry
from .config import SEARCHES_FILE

Log = Callable[[str], None]

#: the index keys of a variant that the measure stage writes (:func:`publish`'s ``measured``)
MEASURED = ("latency_ms", "latency", "measured_on")


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
    from ..runtime.source import file_digest
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

    def measured(name: str) -> Dict[str, Any]:
        """The build's latencies of ``name`` as index keys (none before the measure stage)."""
        if name not in latency:
            return {}
        return {"latency_ms": latency[name].get(backend, {}).get("total_p95_ms"),
                "latency": {b: latency_entry(s) for b, s in latency[name].items()},
                "measured_on": f"{cpu_model()}, {cfg.measure.threads} threads"}

    for name in cfg.variants():
        ev = build.state("eval", name)
        if ev.state != "done":
            report.append({"variant": name, "action": "not finished", "state": ev.state})
            continue
        miou = ev.marker["result"]["miou"]
        old, trained, lat = entries.get(name), build.result("train", name), measured(name)
        if old is not None and old.miou >= miou:
            log(f"keep shipped {name}: val mIoU {100 * old.miou:.2f} % >= built {100 * miou:.2f} %")
            report.append({"variant": name, "action": "kept shipped", "shipped_miou": old.miou, "built_miou": miou})
            if lat and old.extra.get("genotype") == trained["genotype"]:
                # the same network, so the build's latencies are the shipped one's: every entry measured in one run
                entries[name] = replace(old, extra={**old.extra, **lat})
                report[-1]["latencies"] = "measured"
            continue
        dest = to / f"{cfg.name}_{name}.pt"
        atomic_save(inference_checkpoint(load_checkpoint(build.runs / trained["checkpoint"])), dest)
        params, macs = network_costs(dest, cfg.export.input_size)
        extra: Dict[str, Any] = {"genotype": trained["genotype"], "params": params, "macs": macs,
                                 "input_size": list(cfg.export.input_size), "epochs": trained["epochs"]}
        teacher = build.teacher_of(name)
        if teacher:
            extra["distilled_from"] = teacher
        if not lat and old is not None and old.extra.get("genotype") == trained["genotype"]:
            lat = {k: old.extra[k] for k in MEASURED if k in old.extra}  # the same network: its latencies stand
        entries[name] = Variant(name, dest, miou, {**extra, **lat})
        log(f"publish {name}: val mIoU {100 * miou:.2f} % -> {dest}")
        report.append({"variant": name, "action": "published", "miou": miou, "file": str(dest)})
    kept = measure.marker["result"].get("kept", {}) if measure.state == "done" else {}
    for name, digest in kept.items():  # entries the build does not make, measured beside its variants
        old = entries.get(name)
        if old is None or name not in latency or file_digest(old.checkpoint) != digest:
            continue  # not in this index, or not the weights that were measured
        entries[name] = replace(old, extra={**old.extra, **measured(name)})
        log(f"keep shipped {name} (not built here): latencies of this build's run")
        report.append({"variant": name, "action": "kept shipped", "latencies": "measured"})
    if any(r["action"] == "published" or "latencies" in r for r in report):
        order = [v.name for v in shipped] + [n for n in entries if n not in {v.name for v in shipped}]
        comment = _comment(index) or f"Trained {cfg.name} variants; mIoU on the validation split (hmseg-core zoo publish)."
        ModelZoo([entries[n] for n in order], index).save(index, comment=comment)
    return report + publish_searches(build, to / SEARCHES_FILE, log)


def publish_searches(build: ZooBuild, path: Path, log: Log = print) -> List[Dict[str, Any]]:
    """Write the build's finished searches into the searches file ``path``; returns what happened to each."""
    from ..io import atomic_write_text

    shipped = (yaml.safe_load(path.read_text()) or {}).get("searches") or {} if path.is_file() else {}
    lut = build.state("lut")
    searched_on = (lut.inputs or {}).get("machine", {}).get("cpu") if lut.state == "done" else None
    report = []
    for budget in build.cfg.search.budgets:
        label = build.cfg.budget_label(budget)
        st = build.state("search", label)
        if st.state != "done":
            continue
        settings, old = st.inputs["search"], shipped.get(label)
        if isinstance(old, dict) and isinstance(old.get("settings"), dict) and same_recipe("search", old["settings"], settings, ("target",)):
            report.append({"search": label, "action": "kept shipped"})
            continue
        result = {k: v for k, v in st.marker["result"].items() if k not in ("folder", "adopted")}
        shipped[label] = {"settings": {k: v for k, v in settings.items() if k != "data_root"},  # a machine's path
                          "result": result, "searched_on": searched_on,
                          "base_measured_ms": lut.marker["result"]["base_measured_ms"]}
        log(f"publish search {label}: {result['genotype']} -> {path}")
        report.append({"search": label, "action": "published", "file": str(path)})
    if any(r["action"] == "published" for r in report):
        header = ("# Finished searches of the shipped zoo (hmseg-core zoo publish): `zoo build` adopts the one of a\n"
                  "# budget whose recipe it plans instead of searching again (search.adopt).\n")
        atomic_write_text(path, header + yaml.safe_dump({"searches": shipped}, sort_keys=False))
    return report


__all__ = ["publish"]
