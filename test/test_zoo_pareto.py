"""``zoo pareto``: the Pareto front of an index and the searched variants against the hand-designed line."""

from pathlib import Path

import pytest

from hmseg_core.cli import main as cli_main
from hmseg_core.pipeline.pareto import Point, format_report, hand_designed_name, line_at, pareto_report
from hmseg_core.registry import get_genotype
from hmseg_core.runtime.zoo import ModelZoo, Variant, default_zoo_path

SEARCHED = "classes=11;width=0.5;stem=32;head=128;ratios=0.4,0.4;lcf=1;lge=1;s1=ir_k5_e1_c16;s2=ir_k3_e1_c24_s2,ir_k3_e1_c24;" \
           "s3=ir_k3_e1_c32_s2,skip_c32,skip_c32;s4=ir_k7_e6_c64,ir_k7_e3_c64_d2,skip_c64_d2,skip_c64_d2,ir_k5_e3_c96_d2," \
           "skip_c96_d2,ir_k5_e6_c96_d2;s5=ir_k5_e3_c160,ir_k5_e1_c160_d2,ir_k7_e1_c160_d2,ir_k5_e1_c320_d2"


def _variant(name: str, ms: float, miou: float, genotype: str = SEARCHED) -> Variant:
    return Variant(name, Path(f"{name}.pt"), miou, {"genotype": genotype, "latency": {"onnxruntime": {"p95_ms": ms, "p50_ms": ms - 1}}})


def _zoo() -> ModelZoo:
    """Hand-designed mrms_tiny 10 ms / 65 %, mrms 20 ms / 70 %: their line is 67.5 % at 15 ms."""
    return ModelZoo([
        _variant("mrms_tiny", 10.0, 0.65, get_genotype("mrms_tiny", 11).format()),
        _variant("mrms", 20.0, 0.70, get_genotype("mrms", 11).format()),
        _variant("above", 15.0, 0.69), _variant("below", 15.0, 0.66), _variant("dominated", 12.0, 0.64),
        _variant("fast", 5.0, 0.60), _variant("slow", 30.0, 0.72),
        Variant("unmeasured", Path("u.pt"), 0.5, {"genotype": SEARCHED}),
    ])


def test_the_searched_variants_are_judged_against_the_hand_designed_line():
    report = pareto_report(_zoo())
    rows = {r["name"]: r for r in report["rows"]}
    assert [r["name"] for r in report["rows"]] == ["fast", "mrms_tiny", "dominated", "above", "below", "mrms", "slow"]
    assert rows["mrms"]["hand_designed"] and rows["mrms_tiny"]["hand_designed"] and not rows["above"]["hand_designed"]
    assert rows["above"]["line_miou"] == pytest.approx(0.675) and rows["above"]["margin"] == pytest.approx(0.015)
    assert rows["above"]["claim"] == "holds" and rows["above"]["verdict"] == "above the hand-designed line by +1.50"
    assert rows["below"]["claim"] == "fails" and rows["below"]["verdict"] == "below the hand-designed line by -1.50"
    assert rows["dominated"]["claim"] == "fails" and rows["dominated"]["verdict"].endswith("dominated by mrms_tiny")
    assert rows["fast"]["claim"] == rows["slow"]["claim"] == "untested" and rows["fast"]["line_miou"] is None
    assert rows["fast"]["verdict"].startswith("faster and less accurate") and rows["slow"]["verdict"].startswith("slower and more")
    # the front: nothing at most as slow and at least as accurate
    assert [r["name"] for r in report["rows"] if r["front"]] == ["fast", "mrms_tiny", "above", "mrms", "slow"]
    assert report["claim"] == {"holds": ["above"], "fails": ["dominated", "below"], "untested": ["fast", "slow"]}
    assert report["unmeasured"] == ["unmeasured"]
    text = format_report(report)
    assert "holds for 1 of 5 (above); fails for dominated, below; untested for fast, slow" in text
    assert "Not measured on onnxruntime: unmeasured." in text
    assert pareto_report(_zoo(), stat="p50")["rows"][0]["latency_ms"] == 4.0


def test_one_hand_designed_variant_draws_no_line():
    one = [Point("mrms_tiny", 10.0, 0.65, True)]
    assert line_at(10.0, one) is None and line_at(15.0, []) is None
    two = one + [Point("mrms", 20.0, 0.70, True)]
    assert line_at(10.0, two) == pytest.approx(0.65) and line_at(20.0, two) == pytest.approx(0.70) and line_at(25.0, two) is None
    zoo = ModelZoo([v for v in _zoo().variants if v.name != "mrms"] + [_variant("better", 9.0, 0.66)])
    rows = {r["name"]: r for r in pareto_report(zoo)["rows"]}
    assert rows["better"]["claim"] == "holds" and rows["better"]["verdict"] == "dominates mrms_tiny"
    assert rows["dominated"]["claim"] == "fails" and rows["above"]["claim"] == "untested"  # slower, more accurate


def test_hand_designed_means_a_registered_genotype():
    assert hand_designed_name(_variant("renamed", 1.0, 0.5, get_genotype("mrms", 11).format())) == "mrms"
    assert hand_designed_name(_variant("mrms_tiny", 1.0, 0.5, SEARCHED)) is None  # the genotype decides, not the name
    assert hand_designed_name(Variant("mrms_tiny", Path("x.pt"), 0.5)) == "mrms_tiny"  # no genotype recorded: the name


def test_zoo_pareto_on_the_shipped_zoo(tmp_path, capsys):
    plot = tmp_path / "pareto.png"
    assert cli_main(["zoo", "pareto", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    for v in ModelZoo.load(default_zoo_path()).variants:
        assert f"| {v.name} |" in out
    assert "| mrms_tiny | hand-designed |" in out and "the paper's claim" in out
    assert plot.stat().st_size > 1000
    assert cli_main(["zoo", "pareto", "--backend", "nonesuch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no variant has a p95 latency measured on 'nonesuch'" in err[0]


def test_a_malformed_genotype_in_the_index_is_one_error_naming_the_variant(tmp_path):
    bad = ModelZoo([_variant("mrms_tiny", 10.0, 0.65, get_genotype("mrms_tiny", 11).format()), _variant("broken", 8.0, 0.6, "classes=11;bogus")],
                   path=tmp_path / "zoo.yaml")
    with pytest.raises(ValueError, match=r"zoo\.yaml: variant 'broken': genotype: 'bogus' is not 'key=value'"):
        pareto_report(bad)
