"""The search space: which choices exist around a base genotype (paper §3.2, Fig. 4).

Every backbone layer of the base genotype keeps its channels, stride and dilation; what may
change is its operator (a key of :data:`hmseg_core.ops.OPS`) and, per branch, the resolution
downsampling ratio. The paper's ablation (Table 6) switches the three aspects on and off:

* ``O`` operators: every inverted residual ``e in {1,3,6} x k in {3,5,7}`` (no identity)
* ``D`` depth: the base operator or ``skip`` where the layer keeps its shape
* ``O+D``: every inverted residual plus ``skip`` where allowed
* ``R`` resolution: each branch picks its ratio from ``ratio_choices`` (else the base ratio)

A point of the space is given by indices into the candidate tuples and maps to a plain,
validated :class:`~hmseg_core.genotype.Genotype`; skipped layers stay in the genotype as
``skip`` genes, so layer positions never move.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Sequence, Tuple

from ..genotype import Genotype
from ..ops import SKIP, candidate_ops, op_allowed

DEFAULT_RATIOS: Tuple[float, ...] = (0.4, 0.5, 0.6)
#: The paper's Table 6 settings, in its order.
ABLATIONS: Tuple[str, ...] = ("O", "D", "O+R", "D+R", "O+D+R")


@dataclass(frozen=True)
class Switches:
    """Which aspects are searched: operators (O), depth (D), resolution (R)."""

    operators: bool = True
    depth: bool = True
    resolution: bool = True

    def __post_init__(self) -> None:
        if not (self.operators or self.depth or self.resolution):
            raise ValueError("search space: switch on at least one of O, D, R")

    @classmethod
    def parse(cls, text: str) -> "Switches":
        """``"O+D+R"``, ``"D+R"``, ``"O"``... (any order, case-insensitive)."""
        parts = {p.strip().upper() for p in text.split("+") if p.strip()}
        unknown = parts - {"O", "D", "R"}
        if unknown or not parts:
            raise ValueError(f"search space {text!r}: expected '+'-joined letters from O, D, R (e.g. 'O+D+R')")
        return cls("O" in parts, "D" in parts, "R" in parts)

    def format(self) -> str:
        return "+".join(k for k, on in zip("ODR", (self.operators, self.depth, self.resolution)) if on)


@dataclass(frozen=True)
class LayerChoice:
    """One backbone layer of the space: its fixed shape (base channels) and operator candidates."""

    stage: int
    index: int
    c_in: int
    c_out: int
    stride: int
    dilation: int
    candidates: Tuple[str, ...]

    @property
    def searchable(self) -> bool:
        return len(self.candidates) > 1

    @property
    def name(self) -> str:
        return f"s{self.stage + 1}.{self.index}"


@dataclass(frozen=True)
class SearchSpace:
    """Candidates per layer and per branch around ``base``; build with :meth:`from_genotype`."""

    base: Genotype
    switches: Switches
    layers: Tuple[LayerChoice, ...]
    ratio_choices: Tuple[Tuple[float, ...], Tuple[float, ...]]

    @classmethod
    def from_genotype(
        cls, base: Genotype, switches: Switches | str = "O+D+R", ratios: Sequence[float] = DEFAULT_RATIOS
    ) -> "SearchSpace":
        sw = Switches.parse(switches) if isinstance(switches, str) else switches
        layers = []
        for si, li, c_in, gene in base.iter_layers():
            skippable = op_allowed(SKIP, c_in, gene.channels, gene.stride)
            if sw.operators:
                cands = candidate_ops(c_in, gene.channels, gene.stride, allow_skip=sw.depth)
            elif sw.depth and skippable and gene.op != SKIP:
                cands = (gene.op, SKIP)
            else:
                cands = (gene.op,)
            layers.append(LayerChoice(si, li, c_in, gene.channels, gene.stride, gene.dilation, cands))
        if sw.resolution:
            choices = tuple(sorted({float(r) for r in ratios}))
            if not choices or not all(0.0 < r <= 1.0 for r in choices):
                raise ValueError(f"ratio choices {tuple(ratios)!r} must be numbers in (0, 1]")
            ratio_choices = (choices, choices)
        else:
            ratio_choices = ((base.ratios[0],), (base.ratios[1],))
        return cls(base, sw, tuple(layers), ratio_choices)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ points of the space
    def genotype(self, op_indices: Sequence[int], ratio_indices: Sequence[int]) -> Genotype:
        """The (validated) genotype at these candidate indices."""
        if len(op_indices) != len(self.layers) or len(ratio_indices) != 2:
            raise ValueError(
                f"expected {len(self.layers)} operator indices and 2 ratio indices, "
                f"got {len(op_indices)} and {len(ratio_indices)}"
            )
        stages = [list(s) for s in self.base.stages]
        for layer, k in zip(self.layers, op_indices):
            stages[layer.stage][layer.index] = dataclasses.replace(
                stages[layer.stage][layer.index], op=layer.candidates[int(k)]
            )
        ratios = tuple(c[int(k)] for c, k in zip(self.ratio_choices, ratio_indices))
        return self.base.replace(stages=tuple(tuple(s) for s in stages), ratios=ratios)

    def encode(self, genotype: Genotype) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        """Candidate indices of ``genotype``; ``ValueError`` if it is not a point of this space."""
        ops = []
        for layer in self.layers:
            gene = genotype.stages[layer.stage][layer.index] if len(genotype.stages[layer.stage]) > layer.index else None
            if gene is None or gene.op not in layer.candidates:
                raise ValueError(f"layer {layer.name}: {gene.op if gene else 'missing'!r} is not among {layer.candidates}")
            ops.append(layer.candidates.index(gene.op))
        ratios = []
        for b, (choices, r) in enumerate(zip(self.ratio_choices, genotype.ratios)):
            if r not in choices:
                raise ValueError(f"ratio of branch {b}: {r} is not among {choices}")
            ratios.append(choices.index(r))
        if self.genotype(ops, ratios) != genotype:
            raise ValueError("genotype differs from the base genotype outside the searched choices")
        return tuple(ops), tuple(ratios)

    def sample(self, rng: random.Random) -> Genotype:
        """A uniformly random point of the space."""
        ops = [rng.randrange(len(l.candidates)) for l in self.layers]
        ratios = [rng.randrange(len(c)) for c in self.ratio_choices]
        return self.genotype(ops, ratios)

    @property
    def searchable_layers(self) -> Tuple[LayerChoice, ...]:
        return tuple(l for l in self.layers if l.searchable)

    def size(self) -> int:
        """Number of distinct architectures in the space."""
        n = 1
        for l in self.layers:
            n *= len(l.candidates)
        for c in self.ratio_choices:
            n *= len(c)
        return n

    def describe(self) -> str:
        return (
            f"space {self.switches.format()}: {len(self.searchable_layers)}/{len(self.layers)} searchable layers, "
            f"ratios {self.ratio_choices[0]} / {self.ratio_choices[1]}, {self.size():.3g} architectures"
        )
