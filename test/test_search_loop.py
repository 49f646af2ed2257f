"""The search loop: outputs, exact resume, the CLI."""

import json

import pytest
import torch
from conftest import run_cli_under_torchrun

from hmseg_core.cli import main as cli_main
from hmseg_core.genotype import Genotype
from hmseg_core.registry import get_genotype
from hmseg_core.search.config import load_search_config
from hmseg_core.search.lut import LatencyTable, TorchTimer
from hmseg_core.search.searcher import search
from hmseg_core.search.space import SearchSpace

TINY = dict(crop=(48, 64), scale=(0.75, 1.25), synthetic_train=8, batch_size=2, epochs=3, warmup_epochs=1,
            threads=1, checkpoint_every=1, metric="macs", target=3e6)  # reachable: 2.1e6 .. 7.5e6 MACs


@pytest.fixture(scope="module")
def lut_path(tmp_path_factory):
    space = SearchSpace.from_genotype(get_genotype("mrms_tiny", 11), "O+D+R")
    table = LatencyTable.measure(space, (48, 64), TorchTimer(threads=1), warmup=0, repeats=1)
    return str(table.save(tmp_path_factory.mktemp("lut") / "lut.json"))


def _cfg(out, lut_path, **kw):
    return load_search_config(None, [], **{**TINY, "lut": lut_path, "out_dir": str(out), **kw})


def _run(out, lut_path, resume=False, stop=None, **kw):
    return search(_cfg(out, lut_path, **kw), LatencyTable.load(lut_path), resume=resume, stop_at_step=stop, progress=False)


def test_search_writes_genotype_log_and_plots(tmp_path, lut_path):
    out = tmp_path / "run"
    summary = _run(out, lut_path, space="D+R")
    g = Genotype.parse((out / "genotype.txt").read_text().strip())
    assert g.format() == summary["genotype"] and summary["finished"] and summary["steps"] == 6
    assert summary["predicted"]["macs"] == summary["derived_cost"]
    fit = summary["budget_fit"]
    assert Genotype.parse((out / "genotype_budget.txt").read_text().strip()).format() == fit["genotype"]
    assert fit["band"] == [pytest.approx(0.85 * 3e6), pytest.approx(0.95 * 3e6)] and fit["in_band"]
    assert 0.85 * 3e6 <= fit["cost"] <= 0.95 * 3e6
    lo, hi = summary["space_range"]
    assert lo <= summary["derived_cost"] <= hi and lo <= fit["cost"] <= hi
    assert fit["changes"] > 0 or fit["genotype"] == summary["genotype"]
    records = [json.loads(l) for l in (out / "search_log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "epoch_end" in r]
    assert [r["epoch_end"] for r in epochs] == [1, 2, 3]
    assert epochs[0]["sampled_cost"] is None and epochs[-1]["sampled_cost"] > 0  # warm-up: weights only
    assert epochs[-1]["expected_cost"] > 0 and epochs[-1]["loss_a"] is not None
    probs = epochs[-1]["probabilities"]
    assert all(set(p) == {"ir_k3_e6", "skip"} for p in probs["ops"].values())  # the D space
    assert all(sum(p.values()) == pytest.approx(1, abs=1e-3) for p in list(probs["ops"].values()) + probs["ratios"])
    steps = [r for r in records if "epoch_end" not in r]
    assert [r["step"] for r in steps] == list(range(1, 7)) and "tau" not in steps[1] and steps[2]["tau"] == pytest.approx(10.0)
    assert steps[-1]["tau"] == pytest.approx(0.1)
    assert (out / "cost.png").is_file() and (out / "probs.png").is_file() and (out / "config.yaml").is_file()
    with pytest.raises(FileExistsError, match="--resume"):
        _run(out, lut_path, space="D+R")


def test_resume_equals_uninterrupted(tmp_path, lut_path):
    _run(tmp_path / "ref", lut_path)
    part = _run(tmp_path / "cut", lut_path, stop=3)  # stops mid-epoch, inside the architecture phase
    assert part["steps"] == 3 and not part["finished"]
    _run(tmp_path / "cut", lut_path, resume=True)
    ref = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert ref["step"] == cut["step"] == 6 and ref["genotype"] == cut["genotype"]
    for k, v in ref["supernet"].items():
        assert torch.equal(v, cut["supernet"][k]), k
    ref_log = (tmp_path / "ref" / "search_log.jsonl").read_text().splitlines()
    cut_log = (tmp_path / "cut" / "search_log.jsonl").read_text().splitlines()
    assert [json.loads(l).get("step") for l in ref_log] == [json.loads(l).get("step") for l in cut_log]


def test_cli_lut_and_search(tmp_path, lut_path, capsys):
    table = tmp_path / "lut.json"
    assert cli_main(["lut", "build", "--input-size", "48x64", "--warmup", "0", "--repeats", "1", "--threads", "1",
                     "--out", str(table)]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == len(json.loads(table.read_text())["entries"])
    assert cli_main(["lut", "check", "--table", str(table), "--genotypes", "1", "--warmup", "0", "--repeats", "1",
                     "--threads", "1", "--report", str(tmp_path / "fid.json")]) == 0
    assert "median error" in capsys.readouterr().out and json.loads((tmp_path / "fid.json").read_text())["count"] == 1
    args = ["search", "--lut", str(table), "--out", str(tmp_path / "s"), "--space", "O", "--epochs", "2",
            "--warmup-epochs", "1", "--batch-size", "2", "--threads", "1",
            "-o", "crop=48x64", "-o", "synthetic_train=8", "-o", "metric=macs", "-o", "target=3e6"]
    assert cli_main(args) == 0
    assert "skip" not in json.loads(capsys.readouterr().out)["genotype"]
    # a latency target needs a table from this device
    data = json.loads(table.read_text())
    data["fingerprint"]["cpu"] = "elsewhere"
    (tmp_path / "foreign.json").write_text(json.dumps(data))
    args = ["search", "--lut", str(tmp_path / "foreign.json"), "--out", str(tmp_path / "s2"), "--threads", "1"]
    assert cli_main(args) == 2
    assert "another device" in capsys.readouterr().err
    assert cli_main(["search", "--out", str(tmp_path / "s3"), "--lut", ""]) == 2
    assert "a latency table is required" in capsys.readouterr().err


def test_search_under_torchrun_keeps_replicas_identical(tmp_path, lut_path):
    out = tmp_path / "ddp"
    run_cli_under_torchrun(["search", "--lut", lut_path, "--out", str(out)], TINY)
    summary = json.loads((out / "summary.json").read_text())
    prints = summary["replica_fingerprints"]
    assert len(prints) == 2 and prints[0] == prints[1]
    # 8 images halved between weights and architecture: 4 per half, batch 2 x 2 processes -> 1 step per epoch
    assert summary["finished"] and summary["steps"] == TINY["epochs"]
    Genotype.parse((out / "genotype.txt").read_text().strip())


def test_unreachable_target_warns(tmp_path, lut_path):
    with pytest.warns(UserWarning, match="outside what this space can reach"):
        _run(tmp_path / "low", lut_path, target=1.0, epochs=2)
