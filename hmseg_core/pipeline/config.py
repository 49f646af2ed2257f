"""The zoo build's configuration: one YAML file with a section per stage (``config/zoo_camvid.yaml``).

Config flows one way: the typed defaults here -> the YAML file -> ``--data-root`` and
``-o section.key=value`` on the command line. The training and search recipes are the usual
config files (paths relative to the zoo config's folder) plus each section's ``overrides``; the
keys the pipeline sets itself (model, out_dir, data_root, the teacher, the latency table and target)
may not be overridden. Every error is a :class:`~hmseg_core.config.ConfigError` of one line that
names the file and the key; nothing is written before the whole config has been checked.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import yaml

from ..config import ConfigError, TrainConfig, apply, load_config
from ..search.config import SearchConfig, load_search_config

#: TrainConfig / SearchConfig keys that the pipeline sets per variant or budget
TRAIN_SET_BY_PIPELINE = ("model", "out_dir", "data_root", "teacher", "teacher_digest")
SEARCH_SET_BY_PIPELINE = ("base", "lut", "target", "metric", "out_dir", "data_root")
ONNX_BACKENDS = ("onnxruntime", "openvino", "openvino-bf16")


@dataclass
class LutSection:
    """The latency table of this machine (as ``hmseg-core lut build``); the base is also timed end to end."""

    base: str = "mrms_tiny"
    classes: int = 11
    input_size: Tuple[int, int] = (360, 480)
    ratios: Tuple[float, float, float] = (0.4, 0.5, 0.6)
    threads: int = 2
    warmup: int = 5
    repeats: int = 20
    passes: int = 3
    calibrate: int = 10


@dataclass
class SearchSection:
    """One search per budget; a budget is a multiple of the base's latency measured by the lut stage."""

    config: str = "search_camvid.yaml"
    budgets: Tuple[float, ...] = (0.5, 1.0, 1.5)
    overrides: Dict[str, Any] = field(default_factory=dict)
    adopt: str = "shipped"  # a searches file whose results for this recipe are adopted, not searched again; "": none

    def adopt_file(self) -> Optional[Path]:
        """The searches file to adopt finished searches from (``shipped``: the one beside the shipped zoo)."""
        return _adopt_path(self.adopt, SEARCHES_FILE)


@dataclass
class TrainSection:
    """One recipe for every variant: the training config plus ``overrides``; ``teacher`` names a
    baseline that every variant of fewer MACs distils from once it is trained (empty: no distillation;
    :meth:`~hmseg_core.pipeline.build.ZooBuild.teacher_of`)."""

    config: str = "train_camvid.yaml"
    overrides: Dict[str, Any] = field(default_factory=dict)
    baselines: Tuple[str, ...] = ("mrms", "mrms_tiny")
    teacher: str = ""
    adopt: str = "shipped"  # a zoo index whose variants trained with this recipe are adopted, not trained again; "": none

    def adopt_index(self) -> Optional[Path]:
        """The zoo index to adopt finished variants from (``shipped``: the zoo installed with hmseg)."""
        return _adopt_path(self.adopt, "zoo.yaml")


#: beside a zoo index, the searches its variants came from (written by ``zoo publish``, adopted by ``zoo build``)
SEARCHES_FILE = "searches.yaml"


def _adopt_path(adopt: str, shipped_name: str) -> Optional[Path]:
    """Where ``adopt`` points: nowhere (empty), ``shipped_name`` beside the shipped zoo index, or a path."""
    from ..runtime.zoo import default_zoo_path

    if not adopt:
        return None
    return default_zoo_path().with_name(shipped_name) if adopt == "shipped" else Path(adopt).expanduser()


@dataclass
class ExportSection:
    """Model packages: ONNX by default; TVM ``targets`` (e.g. ``host``) compile and tune, which takes long."""

    input_size: Tuple[int, int] = (360, 480)
    targets: Tuple[str, ...] = ()
    onnx: bool = True


@dataclass
class MeasureSection:
    """Every variant timed on every backend, interleaved (:func:`hmseg_core.deploy.bench.bench`)."""

    backends: Tuple[str, ...] = ("torch", "onnxruntime")
    runs: int = 30
    warmup: int = 5
    block: int = 10
    threads: int = 2
    pareto: str = ""  # the backend whose p95 the Pareto plot and the index's ``latency_ms`` use; empty: the first
    published: str = "shipped"  # the zoo index ``zoo publish`` writes into: its entries this build does not make are
    #                             measured beside the build's variants, so all of its latencies come from one run
    #                             ("shipped": the zoo installed with hmseg; a path; "": the build's variants only)

    def published_index(self) -> Optional[Path]:
        """The zoo index whose other entries are measured too (``shipped``: the zoo installed with hmseg)."""
        return _adopt_path(self.published, "zoo.yaml")


SECTIONS = {"lut": LutSection, "search": SearchSection, "train": TrainSection, "export": ExportSection, "measure": MeasureSection}


@dataclass
class ZooConfig:
    name: str = ""  # the zoo's name: run folder ~/.cache/hmseg/zoo/<name>, shipped files <name>_<variant>.pt
    data_root: str = ""  # empty: every stage generates synthetic street scenes
    lut: LutSection = field(default_factory=LutSection)
    search: SearchSection = field(default_factory=SearchSection)
    train: TrainSection = field(default_factory=TrainSection)
    export: ExportSection = field(default_factory=ExportSection)
    measure: MeasureSection = field(default_factory=MeasureSection)
    path: Path = Path("<defaults>")  # the file it was read from (not a key)

    # ------------------------------------------------------------------ derived
    def budget_label(self, budget: float) -> str:
        return f"{budget:g}x"

    def budget_labels(self) -> List[str]:
        return [self.budget_label(b) for b in self.search.budgets]

    def variants(self) -> List[str]:
        """Every variant, in training order: the teacher first, the baselines, then one per budget."""
        names = list(self.train.baselines) + [f"search_{b}" for b in self.budget_labels()]
        return sorted(names, key=lambda n: n != self.train.teacher)

    def searched(self, variant: str) -> Optional[str]:
        """The budget label a variant was searched at; ``None`` for a baseline."""
        return variant[len("search_"):] if variant.startswith("search_") else None

    def _relative(self, name: str) -> Path:
        p = Path(name).expanduser()
        return p if p.is_absolute() else self.path.parent / p

    def train_recipe(self) -> TrainConfig:
        """The training config every variant shares (before model, out_dir, data_root and teacher)."""
        return _with_overrides(load_config(str(self._relative(self.train.config))), self.train.overrides, self.path, "train.overrides")

    def search_recipe(self) -> SearchConfig:
        """The search config every budget shares (before base, lut, target, out_dir and data_root)."""
        # the latency table is the lut stage's; a placeholder lets the file's other keys be checked now
        base = load_search_config(str(self._relative(self.search.config)), ["lut=<the lut stage's table>"])
        return _with_overrides(base, self.search.overrides, self.path, "search.overrides")


def _with_overrides(cfg: Any, overrides: Dict[str, Any], path: Path, where: str) -> Any:
    try:
        return apply(cfg, overrides, where)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _section(cls: type, values: Any, path: Path, name: str) -> Any:
    """``cls()`` with ``values`` (a mapping from the file) applied key by key, errors naming ``name.key``."""
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: {name}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    out = cls()
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{path}: {name}.{key}: unknown key; known: {', '.join(sorted(hints))}")
        try:
            out = apply(out, {key: value}, f"{name}")
        except ConfigError as e:
            raise ConfigError(f"{path}: {name}.{e}") from None
    return out


def _set_dotted(doc: Dict[str, Any], item: str) -> None:
    """``-o train.overrides.epochs=3``: set a nested key of the raw YAML document (value read as YAML)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected section.key=value")
    *parents, last = key.strip().split(".")
    node = doc
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {p} is not a section")
    node[last] = yaml.safe_load(value) if value.strip() else ""


def load_zoo_config(path: str | os.PathLike, overrides: Iterable[str] = (), data_root: Optional[str] = None) -> ZooConfig:
    """Defaults, then the YAML file at ``path``, then ``section.key=value`` overrides and ``data_root``; checked whole."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: zoo config file not found")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of zoo config sections")
    for item in overrides:
        _set_dotted(doc, item)
    if data_root is not None:
        doc["data_root"] = data_root
    cfg = ZooConfig(path=path)
    known = [f.name for f in dataclasses.fields(ZooConfig) if f.name != "path"]
    for key, value in doc.items():
        if key not in known:
            raise ConfigError(f"{path}: {key}: unknown key; known: {', '.join(known)}")
        if key in SECTIONS:
            setattr(cfg, key, _section(SECTIONS[key], value, path, key))
        elif not isinstance(value, str):
            raise ConfigError(f"{path}: {key}: expected a string, got {value!r}")
        else:
            setattr(cfg, key, value)
    cfg.name = cfg.name or path.stem
    return validate(cfg)


def validate(cfg: ZooConfig) -> ZooConfig:
    """Every check that can be made before anything runs (the recipes are loaded and validated too)."""
    from ..registry import list_models

    p = cfg.path
    checks = [
        (bool(cfg.search.budgets) and all(b > 0 for b in cfg.search.budgets), "search.budgets", "must be one or more multiples > 0"),
        (len(set(cfg.budget_labels())) == len(cfg.search.budgets), "search.budgets", "must be distinct"),
        (bool(cfg.train.baselines) and all(b in list_models() for b in cfg.train.baselines), "train.baselines",
         f"must be registered models ({', '.join(list_models())})"),
        (cfg.train.teacher in ("",) + tuple(cfg.train.baselines), "train.teacher", "must be empty or one of train.baselines"),
        (cfg.lut.base in list_models(), "lut.base", f"must be a registered model ({', '.join(list_models())})"),
        (min(cfg.lut.input_size) >= 16 and min(cfg.export.input_size) >= 16, "input_size", "sides must be >= 16"),
        (cfg.lut.repeats >= 1 and cfg.lut.passes >= 1 and cfg.lut.calibrate >= 0, "lut.repeats", "repeats, passes >= 1, calibrate >= 0"),
        (bool(cfg.measure.backends), "measure.backends", "must name at least one backend"),
        (cfg.export.onnx or not set(cfg.measure.backends) & set(ONNX_BACKENDS), "measure.backends",
         f"{', '.join(sorted(set(cfg.measure.backends) & set(ONNX_BACKENDS)))} runs the ONNX export: set export.onnx: true"),
        (bool(cfg.export.targets) or "tvm" not in cfg.measure.backends, "measure.backends", "tvm needs export.targets (e.g. [host])"),
        (cfg.measure.pareto in ("",) + tuple(cfg.measure.backends), "measure.pareto", "must be empty or one of measure.backends"),
        (cfg.measure.runs >= 1 and cfg.measure.block >= 1, "measure.runs", "runs and block must be >= 1"),
    ]
    for ok, key, msg in checks:
        if not ok:
            raise ConfigError(f"{p}: {key}: {msg} (got {_value(cfg, key)!r})")
    for key, section, fixed in (("train.overrides", cfg.train, TRAIN_SET_BY_PIPELINE), ("search.overrides", cfg.search, SEARCH_SET_BY_PIPELINE)):
        bad = sorted(set(section.overrides) & set(fixed))
        if bad:
            raise ConfigError(f"{p}: {key}.{bad[0]}: set by the zoo build per variant, not a recipe key")
    for name, recipe in (("train", cfg.train_recipe), ("search", cfg.search_recipe)):
        try:
            recipe().validate()
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith(str(p)) else f"{p}: {name}: {msg}") from None
    return cfg


def _value(cfg: ZooConfig, key: str) -> Any:
    section, _, name = key.partition(".")
    obj = getattr(cfg, section, None)
    return getattr(obj, name, None) if name else obj


def default_runs_root() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "hmseg" / "zoo"


def runs_dir(cfg: ZooConfig, runs: Optional[str] = None) -> Path:
    """The run folder: ``--runs``, else ``$HMSEG_RUNS``, else ``~/.cache/hmseg/zoo/<name>``."""
    chosen = runs or os.environ.get("HMSEG_RUNS")
    return Path(chosen).expanduser() if chosen else default_runs_root() / cfg.name


__all__ = ["SEARCHES_FILE", "ExportSection", "LutSection", "MeasureSection", "SearchSection", "TrainSection", "ZooConfig", "load_zoo_config", "runs_dir"]
