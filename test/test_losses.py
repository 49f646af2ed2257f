import pytest
import torch

from hmseg_core.losses import SegLoss


def test_boosting_loss_is_the_sum_of_three_terms():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 8, 8))
    outs = {k: torch.randn(2, 4, 8, 8) for k in ("out", "aux_medium", "aux_low")}
    loss = SegLoss(aux_weight=1.0)
    expected = sum(torch.nn.functional.cross_entropy(v, target) for v in outs.values())
    assert loss(outs, target) == pytest.approx(float(expected), rel=1e-5)
    assert loss(outs["out"], target) == pytest.approx(float(torch.nn.functional.cross_entropy(outs["out"], target)), rel=1e-5)


def test_ignore_and_class_weights_match_torch():
    torch.manual_seed(1)
    logits, target = torch.randn(1, 3, 6, 6), torch.randint(0, 3, (1, 6, 6))
    target[0, 0] = 255
    w = torch.tensor([1.0, 2.0, 0.5])
    ours = SegLoss(class_weights=w)(logits, target)
    ref = torch.nn.functional.cross_entropy(logits, target, weight=w, ignore_index=255)
    assert float(ours) == pytest.approx(float(ref), rel=1e-5)


def test_ohem_keeps_only_hard_pixels():
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0, 0, :3] = 10.0  # three easy pixels (p(true) ~ 1)
    logits[0, 1, 0, 3] = 10.0  # one hard pixel (p(true) ~ 0)
    plain = SegLoss()(logits, target)
    ohem = SegLoss(ohem_thresh=0.7, ohem_min_kept=1)(logits, target)
    hard = torch.nn.functional.cross_entropy(logits[..., 3:], target[..., 3:])
    assert float(ohem) == pytest.approx(float(hard), rel=1e-5)
    assert ohem > plain
    # min_kept forces at least that many of the hardest pixels into the mean
    kept2 = SegLoss(ohem_thresh=0.7, ohem_min_kept=2)(logits, target)
    assert plain < kept2 < ohem
