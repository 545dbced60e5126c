"""Dense transfer metrics against hand-worked values: mIoU, RMSE, COCO-style detection AP."""

import math

import numpy as np
import pytest
import torch

from transfer.metrics import class_iou, confusion_matrix, detection_ap, miou, rmse


def test_confusion_and_miou_by_hand() -> None:
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 2]])
    cm = confusion_matrix(pred, target, num_classes=3)
    # rows = target, columns = prediction; the 255 pixel is skipped
    assert cm.tolist() == [[1, 1, 0], [0, 2, 1], [1, 0, 1]]
    # IoU: class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 2 / (3 + 3 - 2) = 1/2; class 2: 1 / (2 + 2 - 1) = 1/3
    assert class_iou(cm) == pytest.approx([1 / 3, 1 / 2, 1 / 3])
    assert miou(cm) == pytest.approx(100 * (1 / 3 + 1 / 2 + 1 / 3) / 3)


def test_miou_leaves_out_absent_classes_and_checks_ids() -> None:
    cm = confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 1]), num_classes=4)
    assert miou(cm) == pytest.approx(100.0)  # classes 2, 3 never occur: not averaged as 0
    with pytest.raises(ValueError, match=r"target class ids must be in \[0, 4\)"):
        confusion_matrix(np.array([0]), np.array([7]), num_classes=4)


def test_rmse_on_a_known_field() -> None:
    target = torch.arange(1, 17, dtype=torch.float32).reshape(4, 4)
    pred = target + torch.tensor([[1.0, -1.0] * 2] * 4)  # error +-1 everywhere
    assert rmse(pred, target) == pytest.approx(1.0)
    target[0, :2] = 0  # invalid pixels (0) are skipped: their errors do not count
    pred[0, 0] = 100.0
    assert rmse(pred, target) == pytest.approx(1.0)
    pred[3, 3] = target[3, 3] + 4.0  # one error of 4 among 14 valid pixels
    assert rmse(pred, target) == pytest.approx(math.sqrt((13 + 16) / 14))


def _worked_example() -> tuple[list, list]:
    """2 images, one class. Image 0: box A, found exactly (score 0.9). Image 1: box B; a detection in empty space
    (0.8, FP at every IoU) and one on B with IoU 0.62 (0.7: TP for t <= 0.6, FP above)."""
    gts = [
        {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0])},
        {"boxes": torch.tensor([[20.0, 20.0, 30.0, 30.0]]), "labels": torch.tensor([0])},
    ]
    dets = [
        {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])},
        {
            "boxes": torch.tensor([[40.0, 40.0, 50.0, 50.0], [20.0, 20.0, 30.0, 26.2]]),
            "scores": torch.tensor([0.8, 0.7]),
            "labels": torch.tensor([0, 0]),
        },
    ]
    return dets, gts


def test_detection_ap_hand_worked() -> None:
    dets, gts = _worked_example()
    # TP, FP, TP: recall .5 .5 1, precision 1 .5 2/3 -> envelope 1, 2/3, 2/3. Of the 101 recall points, r <= 0.5
    # (51 points) read 1, r > 0.5 (50 points) read 2/3.
    ap_tp = (51 + 50 * 2 / 3) / 101
    # TP, FP, FP: recall never exceeds 0.5 -> 51 points read 1, the others 0.
    ap_fp = 51 / 101
    out = detection_ap(dets, gts, num_classes=1)
    assert out["ap50"] == pytest.approx(100 * ap_tp)
    assert out["ap75"] == pytest.approx(100 * ap_fp)
    assert out["ap"] == pytest.approx(100 * (3 * ap_tp + 7 * ap_fp) / 10)  # IoU 0.62: TP at 0.5, 0.55, 0.6
    # the VOC07 convention on the same ranking: 11 recall points at IoU 0.5 -> (6 * 1 + 5 * 2/3) / 11
    voc = detection_ap(dets, gts, num_classes=1, iou_thresholds=[0.5], recall_points=11)
    assert voc["ap"] == pytest.approx(100 * (6 + 5 * 2 / 3) / 11)


def test_detection_ap_difficult_boxes_are_ignored_and_classes_separate() -> None:
    dets, gts = _worked_example()
    gts[1]["difficult"] = torch.tensor([True])  # B no longer counts: 1 positive, the detection on B is ignored
    out = detection_ap(dets, gts, num_classes=1)
    # TP, FP at every threshold: recall 1 at precision 1 first -> every recall point reads 1
    assert out["ap"] == pytest.approx(100.0)
    # a detection of class 1 on class 0's box is a FP of class 1 (which has no box: left out), not a TP of class 0
    dets[0]["labels"] = torch.tensor([1])
    out = detection_ap(dets, gts, num_classes=2)
    assert math.isnan(out["per_class"][1]) and out["ap"] == pytest.approx(0.0)


def test_detection_ap_each_box_matches_once() -> None:
    gts = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0])}]
    dets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 2), "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 0])}]
    # duplicate: TP then FP -> recall reaches 1 at precision 1 -> AP 100; reversing the scores does not change it
    assert detection_ap(dets, gts, 1)["ap"] == pytest.approx(100.0)
    dets[0]["scores"] = torch.tensor([0.1, 0.8])
    assert detection_ap(dets, gts, 1)["ap"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="no class has"):
        detection_ap(dets, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}], 1)
