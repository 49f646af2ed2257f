import math

import numpy as np
import pytest
import torch

from hmseg_core.metrics import ConfusionMatrix, format_table


def test_confusion_matrix_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    # rows = truth, cols = prediction; the two ignored pixels do not count
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # IoU: class0 1/(2+2-1)=1/3, class1 2/(2+3-2)=2/3, class2 1/(2+1-1)=1/2
    np.testing.assert_allclose(cm.iou(), [1 / 3, 2 / 3, 1 / 2])
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert cm.pixel_accuracy() == pytest.approx(4 / 6)


def test_absent_class_is_excluded_from_mean():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    iou = cm.iou()
    assert iou[0] == 1 and iou[1] == 1 and math.isnan(iou[2])
    assert cm.miou() == 1.0
    report = cm.report(["a", "b", "c"])
    assert report["per_class_iou"]["c"] is None
    assert "n/a" in format_table(report)


def test_accumulates_and_rejects_bad_targets():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0]), torch.tensor([0]))
    cm.update(torch.tensor([1]), torch.tensor([0]))
    assert cm.matrix.tolist() == [[1, 1], [0, 0]]
    with pytest.raises(ValueError, match="outside"):
        cm.update(torch.tensor([0]), torch.tensor([5]))
    with pytest.raises(ValueError, match="pixels"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0]))
