"""Search configuration: typed defaults in code -> YAML from ``config/`` -> command-line overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

import yaml

from ..config import ConfigError, load_dataclass_config
from .lut import METRICS
from .space import Switches


@dataclass
class SearchConfig:
    # space
    base: str = "mrms_tiny"  # registered name or genotype string
    space: str = "O+D+R"  # Table 6 switches: O, D, O+R, D+R, O+D+R (any '+'-joined subset)
    ratios: Tuple[float, float, float] = (0.4, 0.5, 0.6)
    # cost (Eq. 4)
    lut: str = ""  # latency table JSON (hmseg-core lut build)
    metric: str = "latency_ms"  # latency_ms | macs | params
    target: float = 10.0  # R, in the metric's unit (ms, MACs or parameters)
    cost_weight: float = 1.0  # lambda_cost
    # Gumbel-softmax temperature, annealed exponentially over the architecture steps
    tau_max: float = 10.0
    tau_min: float = 0.1
    # the budget-fitted genotype's cost lies in [fit_low * target, fit_high * target]: below R with a
    # margin for the table's error (median 5-7 % on a quiet CPU, see docs/RESULTS.md)
    fit_low: float = 0.85
    fit_high: float = 0.95
    # data (the training split is halved: one half for weights, the other for architecture)
    data_root: str = ""  # empty: synthetic street scenes in the run folder
    layout: str = ""
    train_split: str = "train"
    crop: Tuple[int, int] = (288, 384)
    scale: Tuple[float, float] = (0.5, 1.75)
    jitter: float = 0.25
    num_workers: int = 0
    synthetic_train: int = 32
    # optimisation
    epochs: int = 40
    warmup_epochs: int = 10  # weights only, before architecture updates start
    batch_size: int = 8
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    arch_lr: float = 0.03  # Adam; a few hundred architecture steps must be able to move a logit by several units
    arch_weight_decay: float = 1e-3
    aux_weight: float = 1.0
    # bookkeeping
    out_dir: str = "runs/search"
    seed: int = 0
    threads: int = 0
    checkpoint_every: int = 25  # steps

    def validate(self) -> "SearchConfig":
        try:
            Switches.parse(self.space)
        except ValueError as e:
            raise ConfigError(f"space: {e}") from None
        checks = [
            (self.metric in METRICS, "metric", f"must be one of {', '.join(METRICS)}"),
            (self.target > 0, "target", "must be > 0"),
            (self.cost_weight >= 0, "cost_weight", "must be >= 0"),
            (0 < self.fit_low <= 1, "fit_low", "must be in (0, 1]"),
            (self.fit_low <= self.fit_high <= 1, "fit_high", "must be in [fit_low, 1]"),
            (0 < self.tau_min <= self.tau_max, "tau_max", "needs 0 < tau_min <= tau_max"),
            (all(0 < r <= 1 for r in self.ratios), "ratios", "must be in (0, 1]"),
            (self.epochs >= 1 and 0 <= self.warmup_epochs < self.epochs, "warmup_epochs", "needs 0 <= warmup_epochs < epochs"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.lr > 0 and self.arch_lr > 0, "lr", "lr and arch_lr must be > 0"),
            (len(self.crop) == 2 and min(self.crop) >= 16, "crop", "must be two sizes >= 16"),
            (self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1"),
            (self.layout in ("", "camvid", "cityscapes"), "layout", "must be '', 'camvid' or 'cityscapes'"),
        ]
        for ok, key, msg in checks:
            if not ok:
                raise ConfigError(f"{key}: {msg} (got {getattr(self, key)!r})")
        if not self.lut:
            raise ConfigError("lut: a latency table is required (build one with 'hmseg-core lut build')")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def load_search_config(path: Optional[str] = None, overrides: Iterable[str] = (), **kwargs: Any) -> SearchConfig:
    """Defaults, then the YAML file, then ``key=value`` overrides, then non-None ``kwargs``."""
    return load_dataclass_config(SearchConfig, path, overrides, **kwargs)


def save_search_config(cfg: SearchConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
