"""Search space switches, supernet paths vs the built network, gradients, cost loss, temperature."""

import random

import pytest
import torch
import torch.nn.functional as F

from hmseg_core.genotype import Genotype
from hmseg_core.ops import SKIP
from hmseg_core.registry import get_genotype
from hmseg_core.search.cost import cost_loss
from hmseg_core.search.searcher import temperature
from hmseg_core.search.space import ABLATIONS, SearchSpace, Switches
from hmseg_core.search.supernet import Supernet

BASE = get_genotype("mrms_tiny", 11)
X = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 11, (2, 64, 96), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    return Supernet(SearchSpace.from_genotype(BASE, "O+D+R"))


def test_switches_define_the_ablation_spaces():
    assert Switches.parse("r+o") == Switches(True, False, True) and Switches.parse("D+R").format() == "D+R"
    for bad in ("", "X", "O+Q"):
        with pytest.raises(ValueError, match="O, D, R"):
            Switches.parse(bad)
    o, d = SearchSpace.from_genotype(BASE, "O"), SearchSpace.from_genotype(BASE, "D")
    assert all(SKIP not in l.candidates and len(l.candidates) == 9 for l in o.layers)
    assert o.ratio_choices == ((0.5,), (0.5,))
    for l in d.layers:
        same_shape = l.c_in == l.c_out and l.stride == 1
        assert l.candidates == ((BASE.stages[l.stage][l.index].op, SKIP) if same_shape else (BASE.stages[l.stage][l.index].op,))
    assert not d.layers[0].searchable and d.layers[2].searchable  # stem->16 changes channels; 24->24 may go
    full = SearchSpace.from_genotype(BASE, "O+D+R")
    assert full.ratio_choices == ((0.4, 0.5, 0.6),) * 2
    assert sum(SKIP in l.candidates for l in full.layers) == sum(len(l.candidates) == 2 for l in d.layers)


@pytest.mark.parametrize("switches", ABLATIONS)
def test_derived_genotypes_are_always_valid(switches):
    space = SearchSpace.from_genotype(BASE, switches)
    torch.manual_seed(len(switches))
    net = Supernet(space, boosting=False)
    for trial in range(5):
        with torch.no_grad():
            for a in list(net.alpha) + list(net.beta):
                a.normal_(0, 3)
        g = net.genotype()
        assert Genotype.parse(g.format()) == g  # canonical form, validated on construction
        assert space.encode(g) == (tuple(int(a.argmax()) for a in net.alpha), tuple(int(b.argmax()) for b in net.beta))
        sample = net.sample(1.0, torch.Generator().manual_seed(trial))
        assert space.encode(net.genotype_of(sample)) == (sample.op_indices, sample.ratio_indices)
    if switches == "D":
        assert all(l.op in (BASE.stages[si][li].op, SKIP) for si, s in enumerate(g.stages) for li, l in enumerate(s))
    if "R" not in switches:
        assert g.ratios == BASE.ratios


@pytest.mark.parametrize("training", [False, True])
def test_fixed_path_equals_the_built_network(supernet, training):
    rng = random.Random(7)
    for g in [BASE, supernet.space.sample(rng), supernet.space.sample(rng)]:
        net = supernet.extract(g)
        supernet.train(training)
        net.train(training)
        ours, theirs = supernet(X, supernet.fixed(g)), net(X)
        if training:
            assert set(ours) == set(theirs) == {"out", "aux_medium", "aux_low"}
            assert all(torch.equal(ours[k], theirs[k]) for k in ours)
        else:
            assert torch.equal(ours, theirs)
        assert not any("alpha" in k or "beta" in k for k in net.state_dict())  # the final network holds no architecture
    supernet.eval()


def test_straight_through_sample_runs_one_path_with_the_same_values(supernet):
    supernet.eval()
    sample = supernet.sample(2.0, torch.Generator().manual_seed(3))
    calls = []
    hooks = [op.register_forward_hook(lambda m, i, o, key=(li, k): calls.append(key))
             for li, mixed in enumerate(m for stage in supernet.encoder.stages for m in stage)
             for k, op in enumerate(mixed.ops)]
    with torch.no_grad():
        soft = supernet(X, sample)
    for h in hooks:
        h.remove()
    assert calls == list(enumerate(sample.op_indices))  # only the sampled candidate of each layer ran
    with torch.no_grad():
        hard = supernet(X, supernet.fixed(supernet.genotype_of(sample)))
    torch.testing.assert_close(soft, hard, rtol=1e-5, atol=1e-5)


def test_gradients_reach_alpha_and_beta(supernet):
    supernet.train()
    supernet.zero_grad(set_to_none=True)
    sample = supernet.sample(5.0, torch.Generator().manual_seed(0))
    out = supernet(X, sample)
    F.cross_entropy(out["out"], Y).backward()
    for layer, a in zip(supernet.space.layers, supernet.alpha):
        assert a.grad is not None and float(a.grad.abs().sum()) > 0, layer.name
    for b in supernet.beta:
        assert b.grad is not None and float(b.grad.abs().sum()) > 0
    # no noise, no architecture gradient: the weight step leaves alpha and beta alone
    supernet.zero_grad(set_to_none=True)
    F.cross_entropy(supernet(X, supernet.fixed(supernet.genotype_of(sample)))["out"], Y).backward()
    assert all(p.grad is None for p in supernet.arch_parameters())
    assert {id(p) for p in supernet.arch_parameters()}.isdisjoint(id(p) for p in supernet.weight_parameters())
    supernet.eval()


def test_cost_loss_sign():
    def grad(derived, target):
        e = torch.tensor(8.0, requires_grad=True)
        loss = cost_loss(e, derived, target)
        loss.backward()
        return float(loss.detach()), float(e.grad)

    loss, g = grad(12.0, 10.0)  # above the target: descending lowers the expected cost
    assert loss == pytest.approx(torch.log(torch.tensor(8.0)).item()) and g == pytest.approx(1 / 8)
    loss, g = grad(9.0, 10.0)  # below: it raises it
    assert loss < 0 and g == pytest.approx(-1 / 8)
    assert grad(10.0, 10.0) == (0.0, 0.0)
    with pytest.raises(ValueError, match="not finite"):
        cost_loss(torch.tensor(1.0), float("nan"), 1.0)


def test_temperature_schedule():
    taus = [temperature(s, 101, 10.0, 0.1) for s in range(101)]
    assert taus[0] == pytest.approx(10.0) and taus[-1] == pytest.approx(0.1) and taus[50] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(taus, taus[1:]))
    assert temperature(500, 101) == pytest.approx(0.1) and temperature(-3, 101) == pytest.approx(10.0)
    assert temperature(0, 1) == 0.1


@pytest.fixture(scope="module")
def macs_cost():
    from hmseg_core.search.cost import CostModel
    from hmseg_core.search.lut import LatencyTable

    class NoTiming:  # MACs are counted, not timed: latency is unused here
        name = "none"

        def fingerprint(self):
            return {"backend": "none", "target": "-", "cpu": "-", "cores": 1, "threads": 1, "allocator": "system"}

        def measure(self, module, inputs, warmup, repeats):
            return 1.0

    space = SearchSpace.from_genotype(BASE, "O+D+R")
    table = LatencyTable.measure(space, (64, 96), NoTiming(), warmup=0, repeats=1, calibrate=0, passes=1)
    return space, CostModel(space, table, "macs")


@pytest.mark.parametrize("fraction", [0.3, 0.6, 1.0, 1.6])
def test_budget_fit_lands_in_the_band_from_above_and_below_and_keeps_frozen_choices(macs_cost, fraction):
    space, cost = macs_cost
    g = torch.Generator().manual_seed(int(fraction * 10))
    op_logp = [F.log_softmax(torch.randn(len(l.candidates), generator=g, dtype=torch.float64), 0).tolist() for l in space.layers]
    ratio_logp = [F.log_softmax(torch.randn(len(c), generator=g, dtype=torch.float64), 0).tolist() for c in space.ratio_choices]
    frozen = max(i for i, l in enumerate(space.layers) if l.searchable)
    keep = max(range(len(op_logp[frozen])), key=lambda k: op_logp[frozen][k])
    op_logp[frozen] = [0.0 if k == keep else float("-inf") for k in range(len(op_logp[frozen]))]
    argmax = [max(range(len(lp)), key=lambda k: lp[k]) for lp in op_logp]
    argmax_ratios = [max(range(len(lp)), key=lambda k: lp[k]) for lp in ratio_logp]
    target = fraction * cost.index_cost(argmax, argmax_ratios)
    ops, ratios, value, changes = cost.fit_to_budget(op_logp, ratio_logp, target, low=0.9)
    assert value == pytest.approx(cost.cost(space.genotype(ops, ratios)))  # index cost == the genotype's table cost
    assert ops[frozen] == keep
    if fraction == 1.0:
        assert changes == 0 and list(ops) == argmax and list(ratios) == argmax_ratios
        return
    assert changes >= 1
    if fraction in (0.6, 1.6):  # reachable from this start: the fit ends in the band
        assert 0.9 * target <= value <= target
    if not 0.9 * target <= value <= target:  # out of the band only if no single change moves towards it
        singles = [cost.index_cost(ops[:i] + (k,) + ops[i + 1:], ratios) for i, lp in enumerate(op_logp)
                   for k in range(len(lp)) if k != ops[i] and lp[k] > float("-inf")]
        singles += [cost.index_cost(ops, ratios[:i] + (k,) + ratios[i + 1:]) for i in range(2) for k in range(3) if k != ratios[i]]
        assert (min(singles) >= value) if value > target else all(c <= value or c > target for c in singles)
    Genotype.parse(space.genotype(ops, ratios).format())  # valid


def test_budget_fit_above_the_space_keeps_the_most_probable_architecture(macs_cost):
    space, cost = macs_cost
    g = torch.Generator().manual_seed(7)
    op_logp = [F.log_softmax(torch.randn(len(l.candidates), generator=g, dtype=torch.float64), 0).tolist() for l in space.layers]
    ratio_logp = [F.log_softmax(torch.randn(len(c), generator=g, dtype=torch.float64), 0).tolist() for c in space.ratio_choices]
    argmax = tuple(max(range(len(lp)), key=lambda k: lp[k]) for lp in op_logp)
    argmax_ratios = tuple(max(range(len(lp)), key=lambda k: lp[k]) for lp in ratio_logp)
    hi = cost.bounds()[1]
    assert cost.index_cost(argmax, argmax_ratios) < hi  # the fit could grow it, and must not
    ops, ratios, value, changes = cost.fit_to_budget(op_logp, ratio_logp, 1.5 * hi, low=0.9)
    assert (ops, ratios, changes) == (argmax, argmax_ratios, 0) and value == pytest.approx(cost.index_cost(argmax, argmax_ratios))
    # just inside the space's reach, the band binds again and the fit spends the budget
    ops, ratios, value, changes = cost.fit_to_budget(op_logp, ratio_logp, hi, low=0.9)
    assert changes > 0 and 0.9 * hi <= value <= hi


def test_budget_fit_rejects_a_bad_band(macs_cost):
    space, cost = macs_cost
    with pytest.raises(ValueError, match="low"):
        cost.fit_to_budget([[0.0]] * len(space.layers), [[0.0]] * 2, 1.0, low=0.0)
