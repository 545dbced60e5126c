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
