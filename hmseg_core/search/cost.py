"""Expected cost under the architecture distribution, and the resource-aware cost loss (Eq. 4).

A layer's cost depends on its operator and on the input shape it sees, which depends on
the resolution ratios chosen upstream. :class:`CostModel` therefore enumerates the ratio
pairs (at most ``|L|^2`` of them) and, for each, tabulates the cost of every candidate of
every layer plus the fixed parts from a :class:`~hmseg_core.search.lut.LatencyTable`:

    E_cost = sum_c P(c) * ( fixed_c + sum_l sum_k p_l(k) * cost_l,k|c )

(with the table's latency calibration ``scale · Σ + offset`` folded into the fixed and layer costs)

with ``P(c)`` the product of the two branches' ratio probabilities. This is exact for the
factorised distribution the supernet samples from.
"""

from __future__ import annotations

import itertools
import math
from typing import List, Sequence, Tuple

import torch

from ..genotype import Genotype
from .lut import METRICS, LatencyTable, decompose, layer_key, layer_input_sizes
from .space import SearchSpace


class CostModel:
    """Costs of a search space's candidates, from a LUT, in one ``metric``."""

    def __init__(self, space: SearchSpace, table: LatencyTable, metric: str = "latency_ms") -> None:
        if metric not in METRICS:
            raise ValueError(f"unknown cost metric {metric!r}; choose from {', '.join(METRICS)}")
        table.covers(space)
        self.space, self.table, self.metric = space, table, metric
        g0 = space.base
        self.combos = list(itertools.product(*(range(len(c)) for c in space.ratio_choices)))
        fixed = []  # fixed[c]
        layer_costs: List[List[List[float]]] = [[] for _ in space.layers]
        for combo in self.combos:
            g = space.genotype([0] * len(space.layers), combo)
            parts = decompose(g, table.input_size)
            fixed.append(sum(table.lookup(p.key, metric) for p in parts if p.kind != "layer"))
            for i, (layer, hw) in enumerate(zip(space.layers, layer_input_sizes(g, table.input_size))):
                cin, cout = g0.scaled(layer.c_in), g0.scaled(layer.c_out)
                layer_costs[i].append([
                    table.lookup(layer_key(op, cin, cout, layer.stride, layer.dilation, hw), metric)
                    for op in layer.candidates
                ])
        # the table's calibration is affine, so it passes through the expectation unchanged
        scale, offset = table.affine(metric)
        self.fixed = scale * torch.tensor(fixed, dtype=torch.float64) + offset
        self.layer_costs = [scale * torch.tensor(c, dtype=torch.float64) for c in layer_costs]
        self.combo_index = torch.tensor(self.combos, dtype=torch.long)

    def expected(self, op_probs: Sequence[torch.Tensor], ratio_probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """``E_cost(A)``, differentiable in the probabilities."""
        p_combo = ratio_probs[0][self.combo_index[:, 0]] * ratio_probs[1][self.combo_index[:, 1]]
        per_combo = self.fixed.to(p_combo)
        for p, costs in zip(op_probs, self.layer_costs):
            per_combo = per_combo + costs.to(p) @ p
        return (p_combo * per_combo).sum()

    def cost(self, genotype: Genotype) -> float:
        """``F_cost(a)``: cost of one architecture."""
        return self.table.predict(genotype, self.metric)

    def index_cost(self, ops: Sequence[int], ratios: Sequence[int]) -> float:
        """``F_cost`` of the architecture given by candidate indices (equals :meth:`cost` of its genotype)."""
        c = self.combos.index(tuple(ratios))
        return float(self.fixed[c] + sum(float(costs[c][k]) for costs, k in zip(self.layer_costs, ops)))

    def fit_to_budget(
        self, op_logp: Sequence[Sequence[float]], ratio_logp: Sequence[Sequence[float]], target: float,
        low: float = 0.9, max_moves: int = 200,
    ) -> Tuple[Tuple[int, ...], Tuple[int, ...], float, int]:
        """A probable architecture whose cost lies in ``[low * target, target]``.

        Starts from the most probable choice everywhere and changes one choice at a time: a
        change that lands in the band and loses the least log-probability if there is one,
        otherwise the change towards the band that loses the least log-probability per unit of
        cost (never past the band: above ``target`` when raising the cost, below it when
        lowering, unless nothing else lowers it). Stops in the band, or when no change moves
        towards it. When even the most expensive architecture of the space costs less than
        ``low * target``, the band is out of reach and only ``target`` binds: an architecture within
        it stays as it is, rather than growing into the most expensive one for no reason but cost.
        Returns ``(ops, ratios, cost, changes)``.
        """
        if not 0.0 < low <= 1.0:
            raise ValueError(f"low must be in (0, 1], got {low}")
        if self.bounds()[1] < low * target:
            low = 0.0
        ops = [max(range(len(lp)), key=lambda k: lp[k]) for lp in op_logp]
        ratios = [max(range(len(lp)), key=lambda k: lp[k]) for lp in ratio_logp]
        current = self.index_cost(ops, ratios)
        moves = 0
        while moves < max_moves and not low * target <= current <= target:
            down = current > target
            landing, towards, overshoot = None, None, None
            for choices, logps, is_op in ((ops, op_logp, True), (ratios, ratio_logp, False)):
                for i, lp in enumerate(logps):
                    for k in range(len(lp)):
                        if k == choices[i] or not math.isfinite(lp[k]):  # -inf: a choice the search may not change
                            continue
                        trial = list(choices)
                        trial[i] = k
                        cost = self.index_cost(trial, ratios) if is_op else self.index_cost(ops, trial)
                        delta, loss = cost - current, lp[choices[i]] - lp[k]
                        if (down and delta >= 0) or (not down and (delta <= 0 or cost > target)):
                            continue
                        move = (is_op, i, k, cost)
                        if low * target <= cost <= target:
                            if landing is None or loss < landing[0]:
                                landing = (loss, move)
                        elif cost < low * target and down:  # jumps over the band: only if nothing else helps
                            if overshoot is None or loss < overshoot[0]:
                                overshoot = (loss, move)
                        elif towards is None or loss / abs(delta) < towards[0]:
                            towards = (loss / abs(delta), move)
            chosen = landing or towards or overshoot
            if chosen is None:
                break
            is_op, i, k, current = chosen[1]
            (ops if is_op else ratios)[i] = k
            moves += 1
        return tuple(ops), tuple(ratios), current, moves

    def bounds(self) -> tuple:
        """Cheapest and most expensive architecture of the space (for choosing a target)."""
        best = [float(self.fixed[c] + sum(float(costs[c].min()) for costs in self.layer_costs)) for c in range(len(self.combos))]
        worst = [float(self.fixed[c] + sum(float(costs[c].max()) for costs in self.layer_costs)) for c in range(len(self.combos))]
        return min(best), max(worst)


def cost_loss(expected: torch.Tensor, derived_cost: float, target: float) -> torch.Tensor:
    """Eq. 4: ``sign(F_cost(a) - R) * log(E_cost(A))``.

    Above the target the gradient lowers the expected cost, below it raises it (so the search
    spends the budget on accuracy), exactly at the target it is zero.
    """
    if not math.isfinite(derived_cost):
        raise ValueError(f"derived cost {derived_cost!r} is not finite")
    sign = (derived_cost > target) - (derived_cost < target)
    return sign * torch.log(expected)
