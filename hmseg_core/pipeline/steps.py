"""What each stage of a zoo build does, as thin calls into the library.

Each function does one stage's work for one item and returns its result for the marker (paths
relative to the run folder ``runs``). They assume their inputs are ready; :mod:`.build` decides
what runs. Training and search resume from their own ``last.pt`` when one is there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

from ..config import TrainConfig
from ..io import digest
from ..search.config import SearchConfig
from .config import ExportSection, LutSection, MeasureSection

Log = Callable[[str], None]


def relative(path: Path, runs: Path) -> str:
    return os.path.relpath(path, runs)


def build_lut(section: LutSection, out: Path, runs: Path) -> Dict[str, Any]:
    """The latency table of the O+D+R space around the base (as ``hmseg-core lut build``), and the
    base network timed end to end here: the budgets are multiples of that measured latency."""
    from ..registry import get_genotype
    from ..search.lut import LatencyTable, TorchTimer, measure_networks
    from ..search.space import SearchSpace

    space = SearchSpace.from_genotype(get_genotype(section.base, section.classes), "O+D+R", section.ratios)
    timer = TorchTimer("cpu", section.threads)
    table = LatencyTable.measure(space, section.input_size, timer, section.warmup, section.repeats, progress=True,
                                 calibrate=section.calibrate, passes=section.passes)
    path = table.save(out / "table.json")
    measured = measure_networks([space.base], section.input_size, timer, section.warmup, max(5, section.repeats),
                                passes=max(1, section.passes))[0]
    return {"table": relative(path, runs), "sha256": digest(path), "entries": len(table.entries), "base": section.base,
            "base_measured_ms": measured, "base_predicted_ms": table.predict(space.base), "fingerprint": table.fingerprint}


def run_search(cfg: SearchConfig, threads: int, runs: Path) -> Dict[str, Any]:
    """One search (resumed from its ``last.pt``); its result is the budget-fitted genotype."""
    from ..search.lut import LatencyTable, TorchTimer
    from ..search.searcher import search

    out = Path(cfg.out_dir)
    table = LatencyTable.load(cfg.lut, device=TorchTimer("cpu", threads).fingerprint())
    summary = search(cfg, table, resume=(out / "last.pt").exists())
    fit = summary["budget_fit"]
    return {"folder": relative(out, runs), "genotype": fit["genotype"], "argmax_genotype": summary["genotype"],
            "target_ms": cfg.target, "predicted_ms": fit["cost"], "in_band": fit["in_band"], "steps": summary["steps"],
            "wall_s": summary["wall_s"]}


def run_train(cfg: TrainConfig, runs: Path) -> Dict[str, Any]:
    """One variant's training (resumed from its ``last.pt``: the step counter and LR schedule continue)."""
    from ..checkpoint import load_checkpoint
    from ..train import train

    out = Path(cfg.out_dir)
    summary = train(cfg, resume=(out / "last.pt").exists())
    best = out / "best.pt"
    ckpt = load_checkpoint(best)
    return {"folder": relative(out, runs), "checkpoint": relative(best, runs), "sha256": digest(best),
            "genotype": ckpt["genotype"], "best_miou": summary["best_miou"], "steps": summary["steps"], "epochs": cfg.epochs,
            "teacher": cfg.teacher_digest or None}


def adopt_train(checkpoint: Path, cfg: TrainConfig, runs: Path) -> Dict[str, Any]:
    """A finished checkpoint trained with ``cfg``'s recipe elsewhere, copied in as the variant's ``best.pt``."""
    from ..checkpoint import atomic_save, load_checkpoint

    out = Path(cfg.out_dir)
    ckpt = load_checkpoint(checkpoint)
    best = out / "best.pt"
    atomic_save(ckpt, best)
    return {"folder": relative(out, runs), "checkpoint": relative(best, runs), "sha256": digest(best),
            "genotype": ckpt["genotype"], "best_miou": ckpt.get("best_miou"), "steps": ckpt.get("step"), "epochs": cfg.epochs,
            "teacher": cfg.teacher_digest or None, "adopted": str(checkpoint)}


def run_eval(checkpoint: Path, data_root: Path, cfg: TrainConfig, report: Path, runs: Path) -> Dict[str, Any]:
    """Validation mIoU of ``checkpoint`` with the runtime's pre- and post-processing (``hmseg-core eval``)."""
    from ..evaluate import evaluate_checkpoint

    r = evaluate_checkpoint(checkpoint, data_root, cfg.val_split, cfg.layout or None, report_path=report, threads=cfg.threads)
    return {"miou": r["miou"], "pixel_accuracy": r.get("pixel_accuracy"), "images": r["images"], "split": cfg.val_split,
            "report": relative(report, runs)}


def run_export(checkpoint: Path, out: Path, section: ExportSection, name: str, runs: Path, log: Log) -> Dict[str, Any]:
    """A model package (``hmseg-core export``): ONNX unless switched off, TVM only for configured targets."""
    from ..deploy.export import ExportOptions, export_package
    from ..runtime.source import file_digest

    options = ExportOptions(input_size=tuple(section.input_size), targets=tuple(section.targets), onnx=section.onnx,
                            name=name, overwrite=True)  # no marker: any files there are from a killed export
    package = export_package(checkpoint, out, options, log)
    return {"package": relative(out, runs), "metadata_sha256": file_digest(out), "input_size": list(package.input_size),
            "onnx": package.onnx is not None, "libraries": [lib["file"] for lib in package.libraries]}


def run_measure(packages: Dict[str, Path], section: MeasureSection, log: Log) -> Dict[str, Any]:
    """Every variant on every backend, in interleaved sweeps in this process (:func:`hmseg_core.deploy.bench.bench`)."""
    from ..deploy.bench import bench
    from ..deploy.package import ModelPackage
    from ..machine import cpu_model, usable_cores

    rows = bench(list(packages.values()), section.backends, section.runs, section.warmup, section.threads, log=log, block=section.block)
    by_name = {Path(p).name: name for name, p in packages.items()}
    genotype = {name: ModelPackage.load(p).metadata["genotype"] for name, p in packages.items()}
    latency: Dict[str, Dict[str, Dict[str, float]]] = {name: {} for name in packages}
    for row in rows:
        latency[by_name[row.package]][row.backend] = row.stats()
    for name in packages:  # bench times one torch row per genotype: variants with the same one share it
        for other in packages:
            for backend, stats in latency[other].items():
                if backend not in latency[name] and genotype[other] == genotype[name] and backend in ("torch", "torch.compile"):
                    latency[name][backend] = stats
    return {"latency": latency, "backends": list(section.backends), "threads": section.threads,
            "machine": {"cpu": cpu_model(), "cores": usable_cores()}}


def network_costs(checkpoint: Path, input_size: Sequence[int]) -> Tuple[int, int]:
    """Parameters and MACs of the inference network (boosting heads dropped) at ``input_size``."""
    from ..checkpoint import model_from_checkpoint
    from ..profile import count_macs, count_params

    model, _ = model_from_checkpoint(checkpoint)
    return count_params(model), count_macs(model, tuple(input_size))


def write_index(runs: Path, rows: List[Dict[str, Any]], pareto_backend: str) -> Dict[str, Any]:
    """``<runs>/zoo.yaml`` (a :class:`~hmseg_core.runtime.zoo.ModelZoo` of the packages, with genotype,
    params, MACs and latencies as extra keys) and ``<runs>/pareto.png``."""
    from ..plots import plot_pareto
    from ..runtime.zoo import ModelZoo, Variant
    from .pareto import hand_designed_name

    variants = [Variant(r["name"], runs / r["package"], r["miou"], {k: v for k, v in r.items() if k not in ("name", "package", "miou")})
                for r in rows]
    path = ModelZoo(variants).save(runs / "zoo.yaml", comment=f"built by `hmseg-core zoo build`; latency_ms: end-to-end p95 on {pareto_backend}, this machine")
    ModelZoo.load(path)  # what the node will read
    points = [(r["name"], r["latency_ms"], r["miou"]) for r in rows if r.get("latency_ms") is not None]
    hand = [v.name for v in variants if hand_designed_name(v)]
    plot_pareto(points, runs / "pareto.png", f"measured latency, end-to-end p95 on {pareto_backend} (ms)", hand)
    return {"index": relative(path, runs), "pareto": "pareto.png", "variants": [r["name"] for r in rows]}


__all__ = ["build_lut", "network_costs", "run_eval", "run_export", "run_measure", "run_search", "run_train", "write_index"]
