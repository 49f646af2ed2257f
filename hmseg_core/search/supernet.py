"""The supernet: every candidate of a :class:`SearchSpace` in one module, one sampled path per step.

Each searchable layer is a :class:`MixedOp` holding one module per candidate, built by the
same :func:`hmseg_core.ops.build_op` the final network uses; each branch's resolution layer
is a :class:`MixedResolution`. Architecture parameters: ``alpha`` (one vector per layer,
over its candidates) and ``beta`` (one vector per branch, over its ratios).

Sampling is straight-through Gumbel-softmax (Eq. 2): :meth:`Supernet.sample` draws Gumbel
noise ``o`` and picks ``argmax(log p + o)`` per choice; the forward pass runs only that
path, scaled by ``w = 1 - p_hat.detach() + p_hat`` of the chosen candidate (value exactly
the hard one-hot, gradient that of the soft ``p_hat = softmax((log p + o) / tau)``).

Where the scaled output feeds a batch-normalised convolution (every stage's last layer
before a channel change, and both resolution layers) the scale cancels and ``w`` would get
no gradient. The product of the path weights upstream of each output therefore also scales
that output's logits: every choice gets the path-level signal "would the loss fall if this
path were more likely", and layers with a residual consumer get their local signal on top. A
sample without noise (:meth:`Supernet.fixed`) runs the path with no scaling at all, which is
bit-for-bit the network :func:`hmseg_core.model.build_model` builds for that genotype
(:meth:`Supernet.extract` copies the weights over).

The supernet is for search only; training, export and ROS see the network built from
:meth:`Supernet.genotype`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..genotype import Genotype
from ..model import BoostingHeads, HMSegNet, ModelOutput, ResolutionLayer, SegmentationHead, build_model, init_weights
from ..ops import ConvBNAct, build_op
from .space import SearchSpace


@dataclass(frozen=True)
class ArchSample:
    """One path through the supernet: candidate indices, and the Gumbel noise they came from.

    ``noise is None``: a fixed path (no gradient to the architecture parameters).
    """

    op_indices: Tuple[int, ...]
    ratio_indices: Tuple[int, int]
    noise: Optional[Tuple[Tuple[torch.Tensor, ...], Tuple[torch.Tensor, ...]]] = None
    tau: float = 1.0


class MixedOp(nn.Module):
    """The candidates of one layer; runs only the sampled one."""

    def __init__(self, candidates: Sequence[str], c_in: int, c_out: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.candidates = tuple(candidates)
        self.ops = nn.ModuleList(build_op(op, c_in, c_out, stride, dilation) for op in self.candidates)

    def forward(self, x: torch.Tensor, index: int, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.ops[index](x)
        return out if weight is None else out * weight


class MixedResolution(nn.Module):
    """The ratio choices of one branch's resolution layer; applies only the sampled one."""

    def __init__(self, ratios: Sequence[float]) -> None:
        super().__init__()
        self.ratios = tuple(float(r) for r in ratios)
        self.layers = nn.ModuleList(ResolutionLayer(r) for r in self.ratios)

    def forward(self, x: torch.Tensor, index: int) -> torch.Tensor:
        # its path weight scales the logits downstream (see the module docstring)
        return self.layers[index](x)


class SupernetEncoder(nn.Module):
    """MRMS backbone with mixed layers; ``forward`` returns ``[C3, C4, C5]`` like :class:`MRMSEncoder`."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        g = space.base
        self.stem = ConvBNAct(3, g.scaled(g.stem_channels), 3, stride=2)
        self.stages = nn.ModuleList(nn.ModuleList() for _ in g.stages)
        for layer in space.layers:
            self.stages[layer.stage].append(
                MixedOp(layer.candidates, g.scaled(layer.c_in), g.scaled(layer.c_out), layer.stride, layer.dilation)
            )
        self.resolutions = nn.ModuleList(MixedResolution(c) for c in space.ratio_choices)
        self.out_channels = tuple(g.scaled(c) for c in g.stage_channels[2:])

    def forward(
        self, x: torch.Tensor, sample: ArchSample, op_w: Sequence[Optional[torch.Tensor]],
        ratio_w: Sequence[Optional[torch.Tensor]],
    ) -> Tuple[List[torch.Tensor], List[Optional[torch.Tensor]]]:
        """``[C3, C4, C5]`` and, for each, the product of the path weights upstream of it (None on a fixed path)."""
        x = self.stem(x)
        feats, gates, i = [], [], 0
        gate: Optional[torch.Tensor] = None

        def times(g: Optional[torch.Tensor], w: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return w if g is None else g if w is None else g * w

        for si, stage in enumerate(self.stages):
            if si >= 3:
                b = si - 3
                x = self.resolutions[b](x, sample.ratio_indices[b])
                gate = times(gate, ratio_w[b])
            for mixed in stage:
                x = mixed(x, sample.op_indices[i], op_w[i])
                gate = times(gate, op_w[i])
                i += 1
            if si >= 2:
                feats.append(x)
                gates.append(gate)
        return feats, gates

    def layers(self) -> List[MixedOp]:
        """The mixed layers in :attr:`SearchSpace.layers` order, as :meth:`MRMSEncoder.layers` lists the built ones."""
        return [mixed for stage in self.stages for mixed in stage]


class Supernet(nn.Module):
    """Weights of every candidate plus the architecture parameters ``alpha`` and ``beta``."""

    def __init__(self, space: SearchSpace, boosting: bool = True) -> None:
        super().__init__()
        self.space = space
        g = space.base
        self.encoder = SupernetEncoder(space)
        self.head = SegmentationHead.for_genotype(g, self.encoder.out_channels)
        self.boost = BoostingHeads.for_genotype(g, self.encoder.out_channels) if boosting else None
        init_weights(self)
        # uniform initial distributions; fixed choices (one candidate) take no gradient
        self.alpha = nn.ParameterList(
            nn.Parameter(torch.zeros(len(l.candidates)), requires_grad=l.searchable) for l in space.layers
        )
        self.beta = nn.ParameterList(
            nn.Parameter(torch.zeros(len(c)), requires_grad=len(c) > 1) for c in space.ratio_choices
        )

    # ------------------------------------------------------------------ parameters
    def arch_parameters(self) -> List[nn.Parameter]:
        return [p for p in list(self.alpha) + list(self.beta) if p.requires_grad]

    def weight_parameters(self) -> List[nn.Parameter]:
        arch = {id(p) for p in list(self.alpha) + list(self.beta)}
        return [p for p in self.parameters() if id(p) not in arch]

    def probabilities(self) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Softmax of ``alpha`` per layer and of ``beta`` per branch (differentiable)."""
        return [F.softmax(a, 0) for a in self.alpha], [F.softmax(b, 0) for b in self.beta]

    # ------------------------------------------------------------------ paths
    def sample(self, tau: float, generator: Optional[torch.Generator] = None) -> ArchSample:
        """Draw a path with Gumbel noise (Eq. 2); every choice with one candidate takes index 0."""

        def draw(logits: Sequence[torch.Tensor]) -> Tuple[Tuple[int, ...], Tuple[torch.Tensor, ...]]:
            idx, noise = [], []
            for a in logits:
                u = torch.rand(a.shape, generator=generator).clamp_(1e-10, 1.0 - 1e-7)
                o = -torch.log(-torch.log(u))
                noise.append(o)
                idx.append(int(torch.argmax(F.log_softmax(a.detach().cpu(), 0) + o)))
            return tuple(idx), tuple(noise)

        ops, op_noise = draw(self.alpha)
        ratios, ratio_noise = draw(self.beta)
        return ArchSample(ops, ratios, (op_noise, ratio_noise), float(tau))  # type: ignore[arg-type]

    def fixed(self, genotype: Optional[Genotype] = None) -> ArchSample:
        """The fixed path of ``genotype`` (default: the derived genotype), without noise."""
        ops, ratios = self.space.encode(genotype or self.genotype())
        return ArchSample(ops, ratios)  # type: ignore[arg-type]

    def _path_weights(self, sample: ArchSample) -> Tuple[List[Optional[torch.Tensor]], List[Optional[torch.Tensor]]]:
        if sample.noise is None:
            return [None] * len(self.alpha), [None] * len(self.beta)

        def st(params: Sequence[nn.Parameter], noise: Sequence[torch.Tensor], idx: Sequence[int]) -> List[Optional[torch.Tensor]]:
            out: List[Optional[torch.Tensor]] = []
            for a, o, k in zip(params, noise, idx):
                if not a.requires_grad:
                    out.append(None)
                    continue
                soft = F.softmax((F.log_softmax(a, 0) + o.to(a.device)) / sample.tau, 0)[k]
                out.append(1.0 - soft.detach() + soft)
            return out

        return st(self.alpha, sample.noise[0], sample.op_indices), st(self.beta, sample.noise[1], sample.ratio_indices)

    def forward(self, x: torch.Tensor, sample: ArchSample) -> ModelOutput:
        """Run the path ``sample``; outputs as :class:`~hmseg_core.model.HMSegNet` (dict with boosting in training)."""
        size = x.shape[-2:]
        op_w, ratio_w = self._path_weights(sample)
        features, (_, gate4, gate5) = self.encoder(x, sample, op_w, ratio_w)

        def gated(t: torch.Tensor, gate: Optional[torch.Tensor]) -> torch.Tensor:
            return t if gate is None else t * gate

        logits = gated(self.head(features, size), gate5)
        if not (self.training and self.boost is not None):
            return logits
        aux = self.boost(features, size)
        return {"out": logits, "aux_medium": gated(aux["aux_medium"], gate4), "aux_low": gated(aux["aux_low"], gate5)}

    # ------------------------------------------------------------------ results
    def genotype(self) -> Genotype:
        """The derived architecture: the most probable candidate everywhere."""
        ops = [int(torch.argmax(a.detach())) for a in self.alpha]
        ratios = [int(torch.argmax(b.detach())) for b in self.beta]
        return self.space.genotype(ops, ratios)

    def genotype_of(self, sample: ArchSample) -> Genotype:
        return self.space.genotype(sample.op_indices, sample.ratio_indices)

    def extract(self, genotype: Optional[Genotype] = None, boosting: bool = True) -> HMSegNet:
        """The final network for ``genotype`` (default: derived), holding this supernet's weights for that path."""
        g = genotype or self.genotype()
        ops, _ = self.space.encode(g)
        net = build_model(g, boosting=boosting and self.boost is not None)
        # (built module, supernet module holding its weights): the stem, each layer's chosen candidate, the heads
        pairs = [(net.encoder.stem, self.encoder.stem), (net.head, self.head)]
        pairs += [(built, mixed.ops[k]) for built, mixed, k in zip(net.encoder.layers(), self.encoder.layers(), ops)]
        if net.boost is not None:
            pairs.append((net.boost, self.boost))
        names = {module: name for name, module in net.named_modules()}
        state = {f"{names[built]}.{key}": value.clone() for built, own in pairs for key, value in own.state_dict().items()}
        net.load_state_dict(state, strict=True)
        return net
