import dataclasses
import random

import pytest

from hmseg_core import Genotype, GenotypeError, LayerGene, get_genotype, list_models
from hmseg_core.ops import OP_NAMES, SKIP, candidate_ops


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("switches", [{}, {"lcf": False}, {"lge": False}, {"lcf": False, "lge": False}])
def test_round_trip_registered(name, switches):
    g = get_genotype(name, 11, **switches)
    assert Genotype.parse(g.format()) == g
    assert Genotype.from_json(g.to_json()) == g
    assert Genotype.parse(str(g)).format() == g.format()


def random_genotype(rng: random.Random) -> Genotype:
    base = get_genotype("mrms", rng.choice([2, 11, 19]))
    stages = []
    c_in = base.stem_channels
    for stage in base.stages:
        layers = []
        for layer in stage:
            op = rng.choice(candidate_ops(c_in, layer.channels, layer.stride))
            layers.append(dataclasses.replace(layer, op=op))
            c_in = layer.channels
        stages.append(tuple(layers))
    return base.replace(
        stages=tuple(stages),
        ratios=(rng.choice([0.4, 0.5, 0.6]), rng.choice([0.4, 0.5, 0.6])),
        width=rng.choice([0.25, 0.5, 0.75, 1.0, 1.3]),
        lcf=rng.random() < 0.5,
        lge=rng.random() < 0.5,
    )


def test_round_trip_random():
    rng = random.Random(0)
    for _ in range(200):
        g = random_genotype(rng)
        assert Genotype.parse(g.format()) == g
        assert Genotype.from_dict(g.to_dict()) == g
        assert hash(Genotype.parse(g.format())) == hash(g)


def test_layer_format_omits_defaults():
    assert LayerGene("ir_k5_e3", 24).format() == "ir_k5_e3_c24"
    assert LayerGene("ir_k5_e3", 24, 2, 2).format() == "ir_k5_e3_c24_s2_d2"
    assert LayerGene.parse("skip_c64") == LayerGene(SKIP, 64)


def _mutate(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


BASE = get_genotype("mrms", 11).format()


@pytest.mark.parametrize(
    "text, field, allowed",
    [
        (_mutate(BASE, "s1=ir_k3_e1_c16", "s1=ir_k9_e1_c16"), "stages[0][0].op", "ir_k3_e1"),
        (_mutate(BASE, "classes=11", "classes=0"), "num_classes", "[1, 255]"),
        (_mutate(BASE, "classes=11", "classes=eleven"), "classes", "int"),
        (_mutate(BASE, "ratios=0.5,0.5", "ratios=0.5,1.5"), "ratios[1]", "(0, 1]"),
        (_mutate(BASE, "ratios=0.5,0.5", "ratios=0.5"), "ratios", "2 values"),
        (_mutate(BASE, "width=1.0", "width=-1.0"), "width", "(0, 4]"),
        (_mutate(BASE, "lcf=1", "lcf=yes"), "lcf", "0 or 1"),
        (_mutate(BASE, "s2=ir_k3_e6_c24_s2", "s2=skip_c24_s2"), "stages[1][0].op", "'skip' needs"),
        (_mutate(BASE, "s2=ir_k3_e6_c24_s2", "s2=ir_k3_e6_c24_s3"), "stages[1][0].stride", "(1, 2)"),
        (_mutate(BASE, "c32_s2", "c32_s2_d5"), "stages[2][0].dilation", "not in"),
        (_mutate(BASE, ";lge=1", ""), "missing field", "lge"),
        (BASE + ";foo=1", "unknown field", "classes"),
        (_mutate(BASE, "s5=", "s5=;s9="), "unknown field", "s5"),
    ],
    ids=lambda v: v if len(str(v)) < 40 else "genotype",
)
def test_validation_errors_name_field(text, field, allowed):
    with pytest.raises(GenotypeError) as err:
        Genotype.parse(text)
    assert field in str(err.value)
    assert allowed in str(err.value)


def test_skip_allowed_only_with_equal_shapes():
    g = get_genotype("mrms", 11)
    assert g.with_layer(2, 1, SKIP).stages[2][1].op == SKIP  # 32 -> 32, stride 1
    with pytest.raises(GenotypeError, match=r"stages\[3\]\[4\]\.op"):
        g.with_layer(3, 4, SKIP)  # 64 -> 96 changes channels
    assert SKIP not in candidate_ops(32, 64, 1)
    assert set(candidate_ops(32, 32, 1)) == set(OP_NAMES)


def test_from_dict_rejects_unknown_keys():
    d = get_genotype("mrms_tiny", 11).to_dict()
    d["bogus"] = 1
    with pytest.raises(GenotypeError, match="bogus"):
        Genotype.from_dict(d)


def test_registry_returns_independent_values():
    a, b = get_genotype("mrms", 11), get_genotype("mrms", 11)
    assert a == b
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.width = 2.0  # type: ignore[misc]
    assert get_genotype("mrms_tiny", 11).width == 0.5
    with pytest.raises(GenotypeError, match="registered"):
        get_genotype("resnet", 11)


@pytest.mark.parametrize("classes", [2, 11])
def test_genotype_string_keeps_its_class_count(classes, capsys):
    """A genotype string comes back unchanged from get_genotype and `hmseg-core genotype` (no --classes)."""
    from hmseg_core.cli import main as cli_main

    s = random_genotype(random.Random(classes)).replace(num_classes=classes).format()
    assert get_genotype(s).format() == s
    assert cli_main(["genotype", s]) == 0
    assert capsys.readouterr().out.strip() == s
    assert get_genotype(s, 19).num_classes == 19  # a class count given explicitly still replaces it
    assert cli_main(["genotype", s, "--classes", "19"]) == 0
    assert Genotype.parse(capsys.readouterr().out.strip()) == Genotype.parse(s).replace(num_classes=19)


def test_registered_name_without_class_count_gets_19():
    assert get_genotype("mrms_tiny").num_classes == 19
    assert get_genotype("mrms_tiny", 11).num_classes == 11
