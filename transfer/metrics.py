"""Metrics of the transfer tables, all in percent.

Table 2 (A.2, after Ericsson et al., linusericsson/ssl-transfer `linear.py`): top-1 accuracy; mean per-class
accuracy for Pets; mAP over VOC07's 20 classes (11-point AP in ssl-transfer, `voc_ap` on sklearn's
`precision_recall_curve`). VOC2010+ uses the area under the interpolated precision envelope ("area").

AP conventions here (versioned, not picked silently):
- scores tied with each other form one threshold (as in sklearn's curve; the VOC devkit breaks ties by sort order);
- "11point": VOC07 devkit, mean over t in {0, 0.1, ..., 1} of max precision at recall >= t (0 if none); recall >= t
  is tested exactly (tp * 10 >= i * n_pos), where ssl-transfer's float `np.linspace` misses e.g. recall 3/10 >= 0.3;
- "11point_ssl": as ssl-transfer computes it: sklearn's curve ends with the point (recall 0, precision 1), so the
  t = 0 term is always 1 (differs from "11point" only when the top-scored item is a negative);
- "area": VOC2010+ devkit, sum over recall steps of step * (precision envelope, made non-increasing from the right).
A class without positives has no AP: `average_precision` raises, `mean_average_precision` leaves it out with a
warning naming it (the devkit would divide by zero; VOC07 test has positives for all 20 classes).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

from pretrain.registry import lookup

AP_MODES = ("11point", "11point_ssl", "area")


def _numpy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _predictions(pred_or_logits: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> tuple:
    """(pred (N,), y (N,)): argmax over classes when given logits/scores (N,C)."""
    pred, y = _numpy(pred_or_logits), _numpy(y)
    if pred.ndim == 2:
        pred = pred.argmax(1)
    if pred.ndim != 1 or y.ndim != 1 or len(pred) != len(y):
        raise ValueError(
            f"predictions {pred.shape} and labels {y.shape} must be (N,) or (N,C) vs (N,)"
        )
    if len(y) == 0:
        raise ValueError("no examples to score")
    return pred, y


def top1_accuracy(pred_or_logits: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    """100 * fraction of examples whose predicted class (argmax of (N,C) logits, or (N,) labels) is y."""
    pred, y = _predictions(pred_or_logits, y)
    return 100.0 * float(np.mean(pred == y))


def mean_per_class_accuracy(
    pred_or_logits: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor
) -> float:
    """100 * mean over the classes present in y of that class's recall (ssl-transfer's confusion-matrix
    diagonal / row sums; classes only ever predicted, never true, are not averaged)."""
    pred, y = _predictions(pred_or_logits, y)
    recalls = [np.mean(pred[y == c] == c) for c in np.unique(y)]
    return 100.0 * float(np.mean(recalls))


def precision_recall(
    scores: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, tp) at each distinct score, from the highest down; targets are 0/1."""
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], targets[order]
    last = np.r_[s[1:] != s[:-1], True]  # last index of each run of tied scores = one threshold
    tp = np.cumsum(t)[last]
    seen = np.arange(1, len(s) + 1)[last]
    return tp / seen, tp / tp[-1], tp


def _check_binary(scores: np.ndarray, targets: np.ndarray) -> None:
    if scores.ndim != 1 or scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (N,)")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError(
            "targets must be 0/1 (VOC 'difficult' labels must be mapped before scoring)"
        )
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    if targets.sum() == 0:
        raise ValueError("average precision is undefined for a class without positives")


def average_precision(
    scores: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor, mode: str = "11point"
) -> float:
    """AP in [0, 1] of one class; scores (N,) rank the examples, targets (N,) are 0/1. Modes: module doc."""
    scores, targets = _numpy(scores).astype(np.float64), _numpy(targets).astype(np.int64)
    _check_binary(scores, targets)
    prec, rec, tp = precision_recall(scores, targets)
    if mode in ("11point", "11point_ssl"):
        n_pos = tp[-1]
        points = [prec[tp * 10 >= i * n_pos].max() for i in range(11)]  # recall >= i/10, exactly
        if mode == "11point_ssl":
            points[0] = 1.0
        return float(np.mean(points))
    if mode == "area":
        envelope = np.maximum.accumulate(prec[::-1])[
            ::-1
        ]  # max precision at any recall >= this one
        steps = np.diff(np.r_[0.0, rec])
        return float(np.sum(steps * envelope))
    raise ValueError(f"unknown AP mode '{mode}'; valid: {', '.join(AP_MODES)}")


def mean_average_precision(
    scores: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor, mode: str = "11point"
) -> float:
    """100 * mean AP over classes; scores and targets (N,C). Classes without positives are left out, with a
    warning naming them; a ValueError if no class has a positive."""
    scores, targets = _numpy(scores), _numpy(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (N,C)")
    has_pos = targets.sum(0) > 0
    if not has_pos.any():
        raise ValueError("mAP is undefined: no class has a positive example")
    if not has_pos.all():
        missing = np.flatnonzero(~has_pos).tolist()
        warnings.warn(
            f"mAP leaves out classes {missing}: no positive example", UserWarning, stacklevel=2
        )
    aps = [average_precision(scores[:, c], targets[:, c], mode) for c in np.flatnonzero(has_pos)]
    return 100.0 * float(np.mean(aps))


def _map(mode: str) -> Callable[[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor], float]:
    def metric(scores: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor) -> float:
        return mean_average_precision(scores, targets, mode)

    metric.__name__ = f"map_{mode}"
    return metric


class _Registry(dict):
    """A dict whose unknown keys raise a ValueError naming the valid keys and the closest one."""

    def __missing__(self, name: str) -> Callable:
        return lookup(self, name, "metric")


# name -> f(outputs, targets) -> percent. Outputs: (N,) predicted labels or (N,C) logits for the accuracies,
# (N,C) scores for the mAPs (targets (N,C) 0/1).
METRICS: dict[str, Callable[[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor], float]] = (
    _Registry(
        {
            "top1": top1_accuracy,
            "mean_per_class": mean_per_class_accuracy,
            "map11": _map("11point"),
            "map11_ssl": _map("11point_ssl"),
            "map_area": _map("area"),
        }
    )
)
MULTILABEL_METRICS = ("map11", "map11_ssl", "map_area")


def get_metric(
    name: str,
) -> Callable[[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor], float]:
    """METRICS[name], or a ValueError listing the valid names and the closest one."""
    return METRICS[name]


# ----------------------------------------------------------------------------- dense metrics (Table 3)
# Semantic segmentation: mIoU over classes from a confusion matrix accumulated over the whole split (as the
# official `evaluation/segmentation` code): IoU_c = TP_c / (TP_c + FP_c + FN_c); classes that never occur
# in target nor prediction (union 0) are left out of the mean. Depth: RMSE pooled over every valid pixel of the
# split. Detection: COCO-style AP (mean over IoU 0.5:0.05:0.95), AP50, AP75, written after pycocotools'
# COCOeval (greedy matching by score, all-point interpolated precision sampled at 101 recall points).

IGNORE_INDEX = 255
COCO_IOUS = np.linspace(0.5, 0.95, 10)  # pycocotools' iouThrs


def confusion_matrix(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """(C, C) int64 counts, rows = target class, columns = predicted class; pixels labelled ignore_index skipped."""
    pred, target = torch.as_tensor(pred).reshape(-1).long(), torch.as_tensor(target).reshape(-1).long()
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have as many pixels, got {pred.numel()} and {target.numel()}")
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    for name, t in (("target", target), ("pred", pred)):
        if t.numel() and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(
                f"{name} class ids must be in [0, {num_classes}) or {ignore_index} (ignored), "
                f"got range [{int(t.min())}, {int(t.max())}]"
            )
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu().numpy()


def class_iou(confusion: np.ndarray) -> np.ndarray:
    """(C,) IoU per class; NaN where the class occurs in neither target nor prediction."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def miou(confusion: np.ndarray) -> float:
    """100 * mean IoU over the classes present in target or prediction (see class_iou)."""
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square (C, C) matrix, got shape {confusion.shape}")
    iou = class_iou(confusion)
    if np.isnan(iou).all():
        raise ValueError("mIoU is undefined: the confusion matrix is empty")
    return 100.0 * float(np.nanmean(iou))


def rmse(
    pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, valid: np.ndarray | torch.Tensor | None = None
) -> float:
    """sqrt(mean squared error) over the valid pixels (default: target > 0, NYUD's invalid depth is 0)."""
    pred, target = torch.as_tensor(pred).double(), torch.as_tensor(target).double()
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    valid = target > 0 if valid is None else torch.as_tensor(valid).bool()
    if not valid.any():
        raise ValueError("RMSE is undefined: no valid target pixel")
    return float(((pred - target)[valid] ** 2).mean().sqrt())


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of xyxy boxes, areas w * h (pycocotools; VOC's devkit adds 1 pixel)."""
    wh = np.clip(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def _match(dets: np.ndarray, gts: np.ndarray, ignore: np.ndarray, t: float) -> np.ndarray:
    """Per detection (rows sorted by score, descending): 1 TP, 0 FP, -1 ignored (matched a difficult box).

    pycocotools' rule: each detection takes the unmatched ground truth of highest IoU >= t, preferring
    non-ignored boxes; a detection that can only match an ignored box is ignored."""
    out = np.zeros(len(dets), np.int64)
    if len(gts) == 0:
        return out
    iou = _box_iou(dets, gts)
    taken = np.zeros(len(gts), bool)
    for d in range(len(dets)):
        for pool, flag in ((~ignore, 1), (ignore, -1)):
            cand = np.flatnonzero(pool & ~taken & (iou[d] >= t))
            if len(cand):
                g = cand[np.argmax(iou[d, cand])]
                taken[g], out[d] = True, flag
                break
    return out


def _interpolated_ap(matches: np.ndarray, scores: np.ndarray, n_gt: int, recall_points: int) -> float:
    """AP in [0, 1]: precision made non-increasing, read at `recall_points` recalls in [0, 1] (0 beyond reach)."""
    keep = matches >= 0
    order = np.argsort(-scores[keep], kind="mergesort")  # stable, as pycocotools
    tp = np.cumsum(matches[keep][order] == 1)
    fp = np.cumsum(matches[keep][order] == 0)
    if len(tp) == 0:
        return 0.0
    recall, precision = tp / n_gt, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    thresholds = np.linspace(0.0, 1.0, recall_points)
    index = np.searchsorted(recall, thresholds, side="left")
    return float(np.mean(np.where(index < len(recall), envelope[np.minimum(index, len(recall) - 1)], 0.0)))


def detection_ap(
    detections: list[dict],
    ground_truth: list[dict],
    num_classes: int,
    iou_thresholds: np.ndarray = COCO_IOUS,
    recall_points: int = 101,
    max_detections: int = 100,
) -> dict:
    """COCO-style box AP in percent: {'ap' (mean over iou_thresholds), 'ap50', 'ap75', 'per_class' (C,) AP}.

    detections[i]: {'boxes' (K,4) xyxy, 'scores' (K,), 'labels' (K,) in [0, C)} of image i; ground_truth[i]:
    {'boxes' (M,4), 'labels' (M,), optional 'difficult' (M,) bool: matched detections are ignored, and they do not
    count as positives}. Per image and class at most `max_detections` top-scored detections count (pycocotools:
    per image). Classes without a non-difficult box are left out of the mean (pycocotools' -1). recall_points=11
    with iou_thresholds=[0.5] gives the VOC07 11-point AP."""
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} images of detections but {len(ground_truth)} of ground truth")
    thresholds = np.asarray(iou_thresholds, np.float64)
    ap = np.full((len(thresholds), num_classes), np.nan)
    for c in range(num_classes):
        per_image = [_class_rows(d, g, c, max_detections) for d, g in zip(detections, ground_truth)]
        n_gt = sum(int((~ig).sum()) for _, _, _, ig in per_image)
        if n_gt == 0:
            continue
        scores = np.concatenate([s for _, s, _, _ in per_image])
        for k, t in enumerate(thresholds):
            matches = np.concatenate([_match(b, gb, ig, t) for b, _, gb, ig in per_image])
            ap[k, c] = _interpolated_ap(matches, scores, n_gt, recall_points)
    if np.isnan(ap).all():
        raise ValueError("detection AP is undefined: no class has a (non-difficult) ground-truth box")
    scored = ~np.isnan(ap[0])  # classes with a ground-truth box

    def at(t: float) -> float:
        rows = np.isclose(thresholds, t)
        return 100.0 * float(ap[rows][:, scored].mean()) if rows.any() else float("nan")

    per_class = np.full(num_classes, np.nan)
    per_class[scored] = ap[:, scored].mean(0)
    return {"ap": 100.0 * float(ap[:, scored].mean()), "ap50": at(0.5), "ap75": at(0.75), "per_class": (100.0 * per_class).tolist()}


def _class_rows(det: dict, gt: dict, c: int, max_detections: int) -> tuple:
    """(det boxes sorted by score desc, their scores, gt boxes, gt ignore flags) of class c in one image."""
    dl, gl = _numpy(det["labels"]), _numpy(gt["labels"])
    boxes, scores = _numpy(det["boxes"]).reshape(-1, 4)[dl == c], _numpy(det["scores"])[dl == c]
    order = np.argsort(-scores, kind="mergesort")[:max_detections]
    difficult = _numpy(gt["difficult"]).astype(bool) if gt.get("difficult") is not None else np.zeros(len(gl), bool)
    return (
        boxes[order].astype(np.float64),
        scores[order].astype(np.float64),
        _numpy(gt["boxes"]).reshape(-1, 4)[gl == c].astype(np.float64),
        difficult[gl == c],
    )
