import pytest
import torch

from hmseg_core import create_model, get_genotype, list_models
from hmseg_core.checkpoint import make_checkpoint, model_from_checkpoint
from hmseg_core.data.datasets import CAMVID
from hmseg_core.profile import count_macs, count_params

VARIANTS = [(n, {}) for n in list_models()] + [
    ("mrms_tiny", {"lcf": False}),
    ("mrms_tiny", {"lge": False}),
    ("mrms_tiny", {"lcf": False, "lge": False}),
]


@pytest.mark.parametrize("name, switches", VARIANTS)
def test_forward_backward(name, switches):
    torch.manual_seed(0)
    model = create_model(name, 11, **switches).train()
    x = torch.randn(2, 3, 64, 96)
    out = model(x)
    assert set(out) == {"out", "aux_medium", "aux_low"}
    for v in out.values():
        assert v.shape == (2, 11, 64, 96)
        assert torch.isfinite(v).all()
    loss = sum(v.logsumexp(1).mean() for v in out.values())
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name, switches", VARIANTS)
def test_eval_runs_no_training_heads(name, switches):
    model = create_model(name, 11, **switches).eval()
    calls = []
    for head in model.boost.values():
        head.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        y = model(torch.randn(1, 3, 72, 100))  # odd sizes: output still at the input size
    assert isinstance(y, torch.Tensor) and y.shape == (1, 11, 72, 100)
    assert not calls
    deploy = model.for_inference()
    assert deploy.boost is None and not deploy.training
    assert not any(k.startswith("boost.") for k in deploy.state_dict())
    assert count_params(deploy) < count_params(model)
    with torch.no_grad():
        assert torch.equal(deploy(torch.ones(1, 3, 64, 64)), model(torch.ones(1, 3, 64, 64)))


def test_tiny_has_half_channels():
    big, tiny = create_model("mrms", 19, boosting=False), create_model("mrms_tiny", 19, boosting=False)
    assert tiny.encoder.out_channels == tuple(c // 2 for c in big.encoder.out_channels)
    assert count_params(tiny) < 0.3 * count_params(big)


def test_ablation_switches_change_the_head():
    full = create_model("mrms", 19, boosting=False)
    plain = create_model("mrms", 19, boosting=False, lcf=False, lge=False)
    assert count_params(plain) < count_params(full)
    assert count_macs(plain, (64, 128)) < count_macs(full, (64, 128))
    assert plain.head.lge is None and not plain.head.lcf


def test_branch_resolutions_follow_ratios():
    g = get_genotype("mrms_tiny", 11).replace(ratios=(0.6, 0.4))
    model = create_model(g).eval()
    c3, c4, c5 = model.encoder(torch.randn(1, 3, 160, 240))
    assert c3.shape[-2:] == (20, 30)
    assert c4.shape[-2:] == (12, 18)
    assert c5.shape[-2:] == (5, 7)


def test_mac_counter_on_a_single_conv():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, (10, 12)) == 8 * 10 * 12 * 3 * 9


def test_checkpoint_rebuilds_identical_model():
    model = create_model("mrms_tiny", 11).eval()
    ckpt = make_checkpoint(model, CAMVID.class_names, CAMVID.palette, CAMVID.mean, CAMVID.std)
    rebuilt, _ = model_from_checkpoint(ckpt)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_a_checkpoint_with_the_old_module_names_loads_and_computes_the_same(tmp_path):
    """Checkpoints written before the classifier moved into ``SegmentationHead`` (``classifier.*`` ->
    ``head.classifier.*``) load through the key migration and compute what the current layout does."""
    from pathlib import Path

    from hmseg_core.checkpoint import atomic_save, load_checkpoint, migrate_state_dict

    shipped = Path(__file__).resolve().parents[1] / "hmseg_core" / "zoo" / "camvid_mrms_tiny.pt"
    ckpt = torch.load(shipped, map_location="cpu", weights_only=True)
    old = {(k.replace("head.classifier.", "classifier.", 1) if k.startswith("head.classifier.") else k): v
           for k, v in ckpt["model"].items()}
    assert "classifier.weight" in old and "head.classifier.weight" not in old
    atomic_save({**ckpt, "model": old}, tmp_path / "old_names.pt")
    assert "head.classifier.weight" in load_checkpoint(tmp_path / "old_names.pt")["model"]
    assert migrate_state_dict(migrate_state_dict(old)).keys() == migrate_state_dict(old).keys()  # idempotent
    torch.manual_seed(0)
    x = torch.randn(2, 3, 96, 128)
    outputs = []
    for path in (shipped, tmp_path / "old_names.pt"):
        model, _ = model_from_checkpoint(path)
        with torch.no_grad():
            outputs.append(model(x))
    assert torch.equal(outputs[0], outputs[1])
