"""Cost lookup table: decomposition into parts, file form and its errors, expected cost, fidelity report."""

import json
import random

import pytest
import torch

from hmseg_core.model import build_model
from hmseg_core.profile import count_macs, count_params
from hmseg_core.registry import get_genotype
from hmseg_core.search.cost import CostModel
from hmseg_core.search.lut import LatencyTable, LUTError, TorchTimer, check_fidelity, layer_input_sizes
from hmseg_core.search.space import SearchSpace

SIZE = (64, 96)


@pytest.fixture(scope="module")
def space():
    return SearchSpace.from_genotype(get_genotype("mrms_tiny", 11), "O+D+R")


@pytest.fixture(scope="module")
def table(space):
    return LatencyTable.measure(space, SIZE, TorchTimer(threads=1), warmup=0, repeats=1)


def _samples(space, n=4, seed=0):
    rng = random.Random(seed)
    return [space.base] + [space.sample(rng) for _ in range(n - 1)]


def test_parts_add_up_to_the_built_network(space, table):
    for g in _samples(space):
        net = build_model(g, boosting=False).eval()
        assert table.predict(g, "macs") == count_macs(net, SIZE)
        assert table.predict(g, "params") == count_params(net)
        assert table.predict(g) > 0


def test_layer_input_sizes_match_the_forward_pass(space):
    for g in _samples(space, seed=3):
        net = build_model(g, boosting=False).eval()
        layers = [m for stage in net.encoder.high for m in stage] + list(net.encoder.medium) + list(net.encoder.low)
        seen = []
        hooks = [m.register_forward_pre_hook(lambda m, inp: seen.append(tuple(inp[0].shape[-2:]))) for m in layers]
        net(torch.zeros(1, 3, *SIZE))
        for h in hooks:
            h.remove()
        assert seen == layer_input_sizes(g, SIZE)


def test_round_trip_and_fingerprint(space, table, tmp_path):
    path = table.save(tmp_path / "lut.json")
    here = TorchTimer(threads=1).fingerprint()
    loaded = LatencyTable.load(path, device=here)
    assert loaded.entries == table.entries and loaded.input_size == SIZE and loaded.settings["passes"] == 3
    g = _samples(space, seed=1)[-1]
    assert loaded.predict(g) == pytest.approx(table.predict(g))
    data = json.loads(path.read_text())
    assert data["format"] == "hmseg-latency-table" and data["version"] == 1
    assert {"cpu", "cores", "backend", "target", "threads", "versions"} <= set(data["fingerprint"])


def _write(tmp_path, table, **changes):
    data = table.to_dict()
    data.update(changes)
    p = tmp_path / "t.json"
    p.write_text(json.dumps(data))
    return p


def test_load_errors(table, tmp_path):
    with pytest.raises(LUTError, match="not found"):
        LatencyTable.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LUTError, match="not a JSON"):
        LatencyTable.load(bad)
    with pytest.raises(LUTError, match="not an hmseg latency table"):
        LatencyTable.load(_write(tmp_path, table, format="something-else"))
    with pytest.raises(LUTError, match="version 99"):
        LatencyTable.load(_write(tmp_path, table, version=99))
    key = next(iter(table.entries))
    with pytest.raises(LUTError, match="needs numbers"):
        LatencyTable.load(_write(tmp_path, table, entries={key: {"latency_ms": 1.0}}))


def test_other_device_is_refused(table, tmp_path):
    here = TorchTimer(threads=1).fingerprint()
    other = dict(table.fingerprint, cpu="Some Other CPU", cores=64)
    path = _write(tmp_path, table, fingerprint=other)
    with pytest.raises(LUTError, match="another device.*cpu: table 'Some Other CPU'"):
        LatencyTable.load(path, device=here)
    assert LatencyTable.load(path).fingerprint["cores"] == 64  # without a device to match: MACs/params use
    newer = dict(table.fingerprint, versions={"torch": "0.0"})
    with pytest.warns(UserWarning, match="latencies may have shifted"):
        LatencyTable.load(_write(tmp_path, table, fingerprint=newer), device=here)


def test_unknown_parts_are_errors_not_zero(space, table):
    with pytest.raises(LUTError, match="no entry 'layer:nope'"):
        table.lookup("layer:nope")
    with pytest.raises(LUTError, match="unknown cost metric"):
        table.lookup(next(iter(table.entries)), "joules")
    with pytest.raises(LUTError, match="no entry 'head:19"):  # other class count: other head
        table.predict(space.base.replace(num_classes=19))
    wider = SearchSpace.from_genotype(space.base, "O+D+R", (0.3, 0.5))
    with pytest.raises(LUTError, match="not in the table"):
        table.covers(wider)
    with pytest.raises(LUTError, match="not in the table"):
        CostModel(wider, table)


def test_expected_cost_is_exact(space, table):
    cost = CostModel(space, table, "macs")

    def one_hot(g):
        ops, ratios = space.encode(g)
        op_p = [torch.nn.functional.one_hot(torch.tensor(k), len(l.candidates)).double() for l, k in zip(space.layers, ops)]
        r_p = [torch.nn.functional.one_hot(torch.tensor(k), len(c)).double() for c, k in zip(space.ratio_choices, ratios)]
        return op_p, r_p

    a, b = _samples(space, n=3, seed=5)[1:]
    assert float(cost.expected(*one_hot(a))) == pytest.approx(table.predict(a, "macs"))
    # a's operators, each branch's ratio mixed 25/75 between a's and b's: the expectation over
    # the four ratio pairs, enumerated by hand
    ops_a, (ra0, ra1) = space.encode(a)
    _, (rb0, rb1) = space.encode(b)
    op_p, r_a = one_hot(a)
    _, r_b = one_hot(b)
    mixed = [0.25 * x + 0.75 * y for x, y in zip(r_a, r_b)]
    by_hand = 0.0
    for (i, pi), (j, pj) in [((i, pi), (j, pj)) for i, pi in ((ra0, 0.25), (rb0, 0.75)) for j, pj in ((ra1, 0.25), (rb1, 0.75))]:
        by_hand += pi * pj * table.predict(space.genotype(ops_a, (i, j)), "macs")
    assert float(cost.expected(op_p, mixed)) == pytest.approx(by_hand)
    lo_all, hi_all = cost.bounds()
    assert lo_all <= table.predict(space.base, "macs") <= hi_all


def test_fidelity_report(space, table):
    report = check_fidelity(table, space, TorchTimer(threads=1), count=2, warmup=0, repeats=1)
    assert report["count"] == 2 and len(report["rows"]) == 2
    assert report["rows"][0]["genotype"] == space.base.format()
    assert 0 <= report["median_abs_rel_error"] <= report["worst_abs_rel_error"]
    assert all(r["measured_ms"] > 0 and r["predicted_ms"] > 0 for r in report["rows"])


def test_calibration_fit():
    from hmseg_core.search.lut import Calibration

    cal = Calibration.fit([("a", 1.0, 1.1), ("b", 2.0, 2.2), ("c", 4.0, 9.0)])  # one slow spell: ignored
    assert (cal.scale, cal.offset_ms) == (pytest.approx(1.1), 0.0)
    assert cal.apply(10.0) == pytest.approx(11.0)
    assert Calibration.fit([("a", 2.0, 3.0)]).scale == pytest.approx(1.5)
    assert Calibration.fit([]).apply(5.0) == 5.0


def test_calibration_is_fitted_stored_and_applied_to_latency_only(space, table, tmp_path):
    from hmseg_core.search.lut import Calibration

    assert len(table.calibration.rows) == 10 and table.calibration.scale > 0 and table.calibration.offset_ms == 0
    g = _samples(space, seed=2)[-1]
    raw = table.predict(g, calibrated=False)
    assert table.predict(g) == pytest.approx(table.calibration.apply(raw))
    assert table.predict(g, "macs") == table.predict(g, "macs", calibrated=False)
    table2 = LatencyTable(**{**table.__dict__, "calibration": Calibration(2.0, 0.5)})
    loaded = LatencyTable.load(table2.save(tmp_path / "lut.json"))
    assert loaded.calibration.scale == 2.0 and loaded.predict(g) == pytest.approx(2.0 * raw + 0.5)
    # the search's expected cost carries the same calibration
    cost = CostModel(space, loaded)
    ops, ratios = space.encode(g)
    op_p = [torch.nn.functional.one_hot(torch.tensor(k), len(l.candidates)).double() for l, k in zip(space.layers, ops)]
    r_p = [torch.nn.functional.one_hot(torch.tensor(k), len(c)).double() for c, k in zip(space.ratio_choices, ratios)]
    assert float(cost.expected(op_p, r_p)) == pytest.approx(loaded.predict(g))
    with pytest.raises(LUTError, match="malformed 'calibration'"):
        LatencyTable.load(_write(tmp_path, table, calibration={"scale": "x"}))


def test_fidelity_is_not_checked_on_the_calibration_architectures(space, table):
    from hmseg_core.search.lut import CALIBRATION_SEED

    with pytest.raises(ValueError, match="calibration"):
        check_fidelity(table, space, TorchTimer(threads=1), count=2, seed=CALIBRATION_SEED, warmup=0, repeats=1)


class ParamClock:
    """A timer whose 'latency' is k ms per thousand parameters: parts add up to the network exactly."""

    name = "torch"

    def __init__(self, k):
        self.k = k

    def fingerprint(self):
        return TorchTimer(threads=1).fingerprint()

    def measure(self, module, inputs, warmup, repeats):
        return self.k * sum(p.numel() for p in module.parameters()) / 1e3


def test_recalibration_refits_the_scale_keeps_the_parts_and_the_history(space, tmp_path):
    table = LatencyTable.measure(space, SIZE, ParamClock(1.0), warmup=0, repeats=1, calibrate=4, passes=1)
    assert table.calibration.scale == pytest.approx(1.0)
    entries, g = json.loads(json.dumps(table.entries)), _samples(space, seed=5)[-1]
    before = table.predict(g)
    cal = table.calibrate(space, ParamClock(2.0), count=4, warmup=0, repeats=1)  # the machine got twice as slow
    assert cal.scale == pytest.approx(2.0) and table.calibration is cal and len(cal.rows) == 4
    assert table.entries == entries and table.predict(g) == pytest.approx(2.0 * before)
    loaded = LatencyTable.load(table.save(tmp_path / "lut.json"))
    assert loaded.calibration.scale == pytest.approx(2.0)
    assert [c["scale"] for c in loaded.settings["calibrations"]] == [pytest.approx(1.0)]


def test_cli_recalibrate_in_place(table, tmp_path, capsys):
    from hmseg_core.cli import main

    path = table.save(tmp_path / "lut.json")
    assert main(["lut", "recalibrate", "--table", str(path), "--threads", "1", "--warmup", "0", "--repeats", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    loaded = LatencyTable.load(path)
    assert report["scale"] == pytest.approx(loaded.calibration.scale) and report["architectures"] == 10
    assert report["scale_before"] == pytest.approx(table.calibration.scale)
    assert loaded.settings["calibrations"][0]["scale"] == pytest.approx(table.calibration.scale)
    assert loaded.entries == json.loads(json.dumps(table.entries))
