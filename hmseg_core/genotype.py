"""Genotype: the complete, canonical description of one network of the MRMS family.

A genotype is data. It is frozen, validates itself on construction, and has exactly one
string form: ``Genotype.parse(g.format()) == g`` and ``Genotype.from_dict(g.to_dict()) == g``.

String grammar (fields separated by ``;``, always in this order)::

    classes=<int>;width=<float>;stem=<int>;head=<int>;ratios=<float>,<float>;lcf=<0|1>;lge=<0|1>;
    s1=<layers>;s2=<layers>;s3=<layers>;s4=<layers>;s5=<layers>

    layers := layer ("," layer)*
    layer  := op "_c" <channels> ["_s" <stride>] ["_d" <dilation>]
    op     := "ir_k" <k> "_e" <e> | "skip"

``classes``  number of output classes.
``width``    width multiplier applied to every channel count (``make_divisible(c * width, 8)``).
``stem``     channels of the stride-2 stem convolution (before ``width``).
``head``     channels of the segmentation head (before ``width``).
``ratios``   resolution downsampling ratio of the medium branch (applied to C3 before
             stage 4) and of the low branch (applied to C4 before stage 5).
``lcf/lge``  whether the head uses Lightweight Context Fusion / Lightweight Global Enhancement.
``s1..s5``   the layers of the five backbone stages. Stages 1-3 form the high-resolution
             branch (output C3), stage 4 the medium branch (C4), stage 5 the low branch (C5).

Example (one layer per stage)::

    classes=11;width=1.0;stem=32;head=128;ratios=0.5,0.5;lcf=1;lge=1;s1=ir_k3_e1_c16;s2=ir_k3_e6_c24_s2;
    s3=ir_k3_e6_c32_s2;s4=ir_k3_e6_c64_d2;s5=ir_k3_e6_c160_d2
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Tuple

from .ops import OP_NAMES, SKIP, make_divisible

NUM_STAGES = 5
STRIDES = (1, 2)
DILATIONS = (1, 2, 3, 4, 6, 8)
MAX_CLASSES = 255  # label images are uint8 and 255 is the ignore label

_LAYER_RE = re.compile(r"^(?P<op>ir_k\d+_e\d+|skip)_c(?P<c>\d+)(?:_s(?P<s>\d+))?(?:_d(?P<d>\d+))?$")
_HEADER_KEYS = ("classes", "width", "stem", "head", "ratios", "lcf", "lge")
_STAGE_KEYS = tuple(f"s{i}" for i in range(1, NUM_STAGES + 1))


class GenotypeError(ValueError):
    """A genotype field has an illegal value; the message names the field and what is allowed."""


@dataclass(frozen=True)
class LayerGene:
    """One backbone layer: operator key, output channels (before width), stride, dilation."""

    op: str
    channels: int
    stride: int = 1
    dilation: int = 1

    def format(self) -> str:
        s = f"{self.op}_c{self.channels}"
        if self.stride != 1:
            s += f"_s{self.stride}"
        if self.dilation != 1:
            s += f"_d{self.dilation}"
        return s

    @classmethod
    def parse(cls, text: str, field: str = "layer") -> "LayerGene":
        m = _LAYER_RE.match(text.strip())
        if not m:
            raise GenotypeError(
                f"{field}: cannot parse {text!r}; expected '<op>_c<channels>[_s<stride>][_d<dilation>]' "
                f"with op one of {', '.join(OP_NAMES)}"
            )
        return cls(m["op"], int(m["c"]), int(m["s"] or 1), int(m["d"] or 1))


def _check(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise GenotypeError(f"{field}: {msg}")


@dataclass(frozen=True)
class Genotype:
    """Frozen description of an MRMS-family network (see the module docstring for the grammar)."""

    stages: Tuple[Tuple[LayerGene, ...], ...]
    ratios: Tuple[float, float] = (0.5, 0.5)
    num_classes: int = 19
    width: float = 1.0
    stem_channels: int = 32
    head_channels: int = 128
    lcf: bool = True
    lge: bool = True

    def __post_init__(self) -> None:
        # Normalise containers so equal genotypes compare (and hash) equal.
        object.__setattr__(self, "stages", tuple(tuple(s) for s in self.stages))
        object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        _check(
            isinstance(self.num_classes, int) and 1 <= self.num_classes <= MAX_CLASSES,
            "num_classes", f"{self.num_classes!r} is not an integer in [1, {MAX_CLASSES}]",
        )
        _check(
            isinstance(self.width, (int, float)) and math.isfinite(self.width) and 0.0 < self.width <= 4.0,
            "width", f"{self.width!r} is not a number in (0, 4]",
        )
        for name in ("stem_channels", "head_channels"):
            v = getattr(self, name)
            _check(isinstance(v, int) and 1 <= v <= 4096, name, f"{v!r} is not an integer in [1, 4096]")
        _check(len(self.ratios) == 2, "ratios", f"needs 2 values (medium, low branch), got {len(self.ratios)}")
        for i, r in enumerate(self.ratios):
            _check(0.0 < r <= 1.0, f"ratios[{i}]", f"{r!r} is not in (0, 1]")
        _check(
            len(self.stages) == NUM_STAGES, "stages", f"needs {NUM_STAGES} stages, got {len(self.stages)}"
        )
        c_in = self.stem_channels
        for si, stage in enumerate(self.stages):
            _check(len(stage) >= 1, f"stages[{si}]", "a stage needs at least one layer")
            for li, layer in enumerate(stage):
                f = f"stages[{si}][{li}]"
                _check(isinstance(layer, LayerGene), f, f"expected a LayerGene, got {type(layer).__name__}")
                _check(layer.op in OP_NAMES, f"{f}.op", f"{layer.op!r} is not an operator; allowed: {', '.join(OP_NAMES)}")
                _check(
                    isinstance(layer.channels, int) and 1 <= layer.channels <= 4096,
                    f"{f}.channels", f"{layer.channels!r} is not an integer in [1, 4096]",
                )
                _check(layer.stride in STRIDES, f"{f}.stride", f"{layer.stride!r} not in {STRIDES}")
                _check(layer.dilation in DILATIONS, f"{f}.dilation", f"{layer.dilation!r} not in {DILATIONS}")
                if layer.op == SKIP:
                    _check(
                        layer.channels == c_in and layer.stride == 1,
                        f"{f}.op",
                        f"'skip' needs the input's channels ({c_in}) and stride 1, "
                        f"got channels={layer.channels}, stride={layer.stride}",
                    )
                c_in = layer.channels
        # Skip layers with equal base channels must also agree after the width multiplier.
        for si, li, c_in, layer in self.iter_layers():
            if layer.op == SKIP:
                _check(
                    self.scaled(c_in) == self.scaled(layer.channels),
                    f"stages[{si}][{li}].op", "'skip' changes channels after the width multiplier",
                )

    # ------------------------------------------------------------------ helpers
    def scaled(self, channels: int) -> int:
        """Channels after the width multiplier."""
        return make_divisible(channels * self.width, 8)

    def iter_layers(self) -> Iterator[Tuple[int, int, int, LayerGene]]:
        """Yield ``(stage, index, c_in, layer)`` with base (un-scaled) input channels."""
        c_in = self.stem_channels
        for si, stage in enumerate(self.stages):
            for li, layer in enumerate(stage):
                yield si, li, c_in, layer
                c_in = layer.channels

    @property
    def stage_channels(self) -> Tuple[int, ...]:
        """Base output channels of each stage."""
        return tuple(stage[-1].channels for stage in self.stages)

    def replace(self, **changes: Any) -> "Genotype":
        return dataclasses.replace(self, **changes)

    def with_layer(self, stage: int, index: int, op: str) -> "Genotype":
        """A copy with one layer's operator changed."""
        stages = [list(s) for s in self.stages]
        stages[stage][index] = dataclasses.replace(stages[stage][index], op=op)
        return self.replace(stages=tuple(tuple(s) for s in stages))

    # ------------------------------------------------------------------ string form
    def format(self) -> str:
        head = [
            f"classes={self.num_classes}",
            f"width={float(self.width)!r}",
            f"stem={self.stem_channels}",
            f"head={self.head_channels}",
            f"ratios={','.join(repr(float(r)) for r in self.ratios)}",
            f"lcf={int(self.lcf)}",
            f"lge={int(self.lge)}",
        ]
        stages = [f"{k}={','.join(l.format() for l in s)}" for k, s in zip(_STAGE_KEYS, self.stages)]
        return ";".join(head + stages)

    __str__ = format

    @classmethod
    def parse(cls, text: str) -> "Genotype":
        """Parse the canonical string form (see the module docstring)."""
        if not isinstance(text, str) or not text.strip():
            raise GenotypeError("genotype: expected a non-empty string")
        fields: Dict[str, str] = {}
        for part in text.strip().split(";"):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep:
                raise GenotypeError(f"genotype: {part!r} is not 'key=value'")
            if key not in _HEADER_KEYS + _STAGE_KEYS:
                raise GenotypeError(f"genotype: unknown field {key!r}; allowed: {', '.join(_HEADER_KEYS + _STAGE_KEYS)}")
            if key in fields:
                raise GenotypeError(f"genotype: field {key!r} given twice")
            fields[key] = value.strip()
        missing = [k for k in _HEADER_KEYS + _STAGE_KEYS if k not in fields]
        if missing:
            raise GenotypeError(f"genotype: missing field(s) {', '.join(missing)}")

        def number(key: str, kind: type) -> Any:
            try:
                return kind(fields[key])
            except ValueError:
                raise GenotypeError(f"{key}: {fields[key]!r} is not a valid {kind.__name__}") from None

        def flag(key: str) -> bool:
            if fields[key] not in ("0", "1"):
                raise GenotypeError(f"{key}: {fields[key]!r} must be 0 or 1")
            return fields[key] == "1"

        try:
            ratios = tuple(float(r) for r in fields["ratios"].split(","))
        except ValueError:
            raise GenotypeError(f"ratios: {fields['ratios']!r} is not two comma-separated numbers") from None
        stages = tuple(
            tuple(LayerGene.parse(tok, f"{key}[{i}]") for i, tok in enumerate(fields[key].split(",")))
            for key in _STAGE_KEYS
        )
        return cls(
            stages=stages,
            ratios=ratios,  # type: ignore[arg-type]
            num_classes=number("classes", int),
            width=number("width", float),
            stem_channels=number("stem", int),
            head_channels=number("head", int),
            lcf=flag("lcf"),
            lge=flag("lge"),
        )

    # ------------------------------------------------------------------ JSON form
    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stages"] = [[dataclasses.asdict(l) for l in s] for s in self.stages]
        d["ratios"] = list(self.ratios)
        return d

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Genotype":
        if not isinstance(data, dict):
            raise GenotypeError(f"genotype: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise GenotypeError(f"genotype: unknown field(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(known))}")
        if "stages" not in data:
            raise GenotypeError("stages: missing")
        stages = []
        for si, stage in enumerate(data["stages"]):
            layers = []
            for li, layer in enumerate(stage):
                try:
                    layers.append(LayerGene(**layer))
                except TypeError as e:
                    raise GenotypeError(f"stages[{si}][{li}]: {e}") from None
            stages.append(tuple(layers))
        kwargs = {k: v for k, v in data.items() if k != "stages"}
        if "ratios" in kwargs:
            kwargs["ratios"] = tuple(kwargs["ratios"])
        return cls(stages=tuple(stages), **kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Genotype":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenotypeError(f"genotype: invalid JSON ({e})") from None
        return cls.from_dict(data)
