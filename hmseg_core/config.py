"""Training configuration: typed defaults in code -> YAML file -> command-line overrides.

The resolved configuration is written into the run folder and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import yaml


class ConfigError(ValueError):
    """A configuration key or value is not valid."""


@dataclass
class TrainConfig:
    # model
    model: str = "mrms_tiny"  # registered name or genotype string
    boosting: bool = True
    aux_weight: float = 1.0
    # data
    data_root: str = ""  # empty: a synthetic street-scene data set is generated in the run folder
    layout: str = ""  # camvid | cityscapes; empty: detected from the folders
    train_split: str = "train"
    val_split: str = "val"
    crop: Tuple[int, int] = (360, 480)
    scale: Tuple[float, float] = (0.5, 2.0)
    jitter: float = 0.25
    early_crop: Optional[Tuple[int, int]] = None  # smaller crops for the first early_epochs epochs (cheaper steps)
    early_epochs: int = 0
    cache: bool = True
    num_workers: int = 1
    # optimisation (paper: SGD, lr 0.01, weight decay 5e-4, poly schedule)
    epochs: int = 100
    batch_size: int = 8
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    warmup_steps: int = 0
    class_weighting: str = "none"  # none | enet
    ohem_thresh: Optional[float] = None
    ohem_min_kept: int = 100_000
    # speed: channels-last activations and bfloat16 autocast (weights, optimizer and loss stay fp32)
    channels_last: bool = False
    precision: str = "fp32"  # fp32 | bf16
    # distillation (FasterSeg's teacher -> student): T^2 * KL(teacher || student) of the class
    # distributions softened by the temperature T, on the main output, beside the label loss
    teacher: str = ""  # a trained checkpoint predicting the data set's classes; empty: no distillation
    teacher_digest: str = ""  # SHA-256 of the teacher file: recorded when training starts, checked on resume
    distill_weight: float = 1.0
    distill_temperature: float = 1.0
    # an exponential moving average of the weights (timm's ModelEma), its decay warmed up as
    # min(ema_decay, (1 + step) / (10 + step)); validation, best.pt and the final weights are the
    # average's (val_raw in the log: the trained weights'). 0: off
    ema_decay: float = 0.0
    # bookkeeping
    out_dir: str = "runs/train"
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0: torch's default
    eval_every: int = 5  # epochs
    checkpoint_every: int = 50  # steps
    synthetic_train: int = 64
    synthetic_val: int = 16

    def validate(self) -> "TrainConfig":
        checks = [
            (self.epochs >= 1, "epochs", "must be >= 1"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.lr > 0, "lr", "must be > 0"),
            (0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
            (len(self.crop) == 2 and min(self.crop) >= 16, "crop", "must be two sizes >= 16 (height, width)"),
            (len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1], "scale", "must be (min, max) with 0 < min <= max"),
            (self.early_crop is None or (len(self.early_crop) == 2 and min(self.early_crop) >= 16), "early_crop",
             "must be empty or two sizes >= 16 (height, width)"),
            (0 <= self.early_epochs < self.epochs and (self.early_epochs > 0) == (self.early_crop is not None), "early_epochs",
             "must be in [0, epochs), and > 0 exactly when early_crop is given"),
            (self.class_weighting in ("none", "enet"), "class_weighting", "must be 'none' or 'enet'"),
            (self.ohem_thresh is None or 0 < self.ohem_thresh < 1, "ohem_thresh", "must be empty or in (0, 1)"),
            (self.precision in ("fp32", "bf16"), "precision", "must be 'fp32' or 'bf16'"),
            (self.distill_weight >= 0, "distill_weight", "must be >= 0"),
            (self.distill_temperature > 0, "distill_temperature", "must be > 0"),
            (0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1) (0: no weight average; e.g. 0.999)"),
            (self.layout in ("", "camvid", "cityscapes"), "layout", "must be '', 'camvid' or 'cityscapes'"),
            (self.eval_every >= 0 and self.checkpoint_every >= 1, "eval_every/checkpoint_every", "must be >= 0 / >= 1"),
        ]
        for ok, key, msg in checks:
            if not ok:
                raise ConfigError(f"{key}: {msg} (got {getattr(self, key.split('/')[0])!r})")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def _convert(name: str, hint: Any, value: Any) -> Any:
    """Coerce a YAML or command-line value to the field's declared type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{name}: may not be empty")
    if origin is typing.Union and type(None) in args:  # Optional[X]
        inner = next(a for a in args if a is not type(None))
        if isinstance(value, str) and value.lower() in ("", "none", "null"):
            return None
        return _convert(name, inner, value)
    if origin in (tuple, Tuple) and len(args) == 2 and args[1] is Ellipsis:  # Tuple[X, ...]: any length
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return tuple(_convert(name, args[0], v) for v in value)
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping of keys to values, got {value!r}")
        return dict(value)
    if origin in (tuple, Tuple):
        if isinstance(value, str):
            value = [v for v in value.replace("x", ",").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{name}: expected {len(args)} values, got {value!r}")
        return tuple(_convert(name, a, v) for a, v in zip(args, value))
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            return bool(value)
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return hint(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a valid {getattr(hint, '__name__', hint)}") from None


def apply(cfg: Any, values: Dict[str, Any], source: str) -> Any:
    """A copy of the config dataclass ``cfg`` with ``values`` coerced to the declared field types."""
    hints = typing.get_type_hints(type(cfg))
    changes = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in hints:
            raise ConfigError(f"{source}: unknown key {key!r}; known: {', '.join(sorted(hints))}")
        changes[key] = _convert(key, hints[key], value)
    return dataclasses.replace(cfg, **changes)


def load_dataclass_config(cls: type, path: Optional[str] = None, overrides: Iterable[str] = (), **kwargs: Any) -> Any:
    """``cls()`` defaults, then the YAML file at ``path``, then ``key=value`` overrides, then non-None ``kwargs``."""
    cfg = cls()
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping of config keys")
        cfg = apply(cfg, data, str(p))
    pairs: Dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected key=value")
        pairs[key.strip()] = value.strip()
    cfg = apply(cfg, pairs, "override")
    cfg = apply(cfg, {k: v for k, v in kwargs.items() if v is not None}, "argument")
    return cfg.validate()


def load_config(path: Optional[str] = None, overrides: Iterable[str] = (), **kwargs: Any) -> TrainConfig:
    """Training config: defaults, then the YAML file at ``path``, then overrides, then ``kwargs``."""
    return load_dataclass_config(TrainConfig, path, overrides, **kwargs)


def save_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def config_keys() -> List[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]
