"""Metrics of the transfer tables against hand-worked examples and ssl-transfer's AP definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_curve

from transfer.metrics import (
    METRICS,
    average_precision,
    mean_average_precision,
    mean_per_class_accuracy,
    top1_accuracy,
)


def test_top1_and_mean_per_class_by_hand() -> None:
    y = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 0, 0, 0, 1])
    assert top1_accuracy(pred, y) == pytest.approx(100 * 5 / 6)
    # class 0: 4/4 right, class 1: 1/2 right -> mean 0.75 (top-1 5/6 is dominated by class 0)
    assert mean_per_class_accuracy(pred, y) == pytest.approx(75.0)
    logits = torch.nn.functional.one_hot(torch.as_tensor(pred), 3).float()  # (N, C) -> argmax
    assert top1_accuracy(logits, torch.as_tensor(y)) == pytest.approx(100 * 5 / 6)
    assert METRICS["mean_per_class"](logits, y) == pytest.approx(75.0)


def test_ap_worked_example() -> None:
    # ranked by score: targets 1 0 1 0 0 1, n_pos = 3
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    targets = np.array([1, 0, 1, 0, 0, 1])
    # rank:      1    2    3    4    5    6
    # tp:        1    1    2    2    2    3
    # precision: 1   1/2  2/3  1/2  2/5  1/2
    # recall:   1/3  1/3  2/3  2/3  2/3   1
    # 11-point: t in {0, .1, .2, .3}: max prec at recall >= t = 1
    #           t in {.4, .5, .6}: ranks 3-6 -> 2/3;  t in {.7, .8, .9, 1}: rank 6 -> 1/2
    #           AP = (4 * 1 + 3 * 2/3 + 4 * 1/2) / 11 = 8/11
    assert average_precision(scores, targets, "11point") == pytest.approx(8 / 11)
    assert average_precision(scores, targets, "11point_ssl") == pytest.approx(
        8 / 11
    )  # top-1 positive: same
    # area: envelope (max prec at recall >= r) = 1, 2/3, 2/3, 1/2, 1/2, 1/2; recall steps of 1/3 at ranks 1, 3, 6
    #       AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 1/2 = 13/18
    assert average_precision(scores, targets, "area") == pytest.approx(13 / 18)


def test_ap_top_negative_and_ssl_variant() -> None:
    # ranked targets 0 1 1: precision 0, 1/2, 2/3; recall 0, 1/2, 1
    scores, targets = np.array([3.0, 2.0, 1.0]), np.array([0, 1, 1])
    # 11-point: every t has rank 3 (prec 2/3) among recall >= t, and no higher precision -> 2/3
    assert average_precision(scores, targets, "11point") == pytest.approx(2 / 3)
    # ssl-transfer (sklearn's curve ends at recall 0, precision 1): t = 0 term is 1 -> (1 + 10 * 2/3) / 11
    assert average_precision(scores, targets, "11point_ssl") == pytest.approx(23 / 33)
    # area: envelope 2/3 everywhere, recall steps 1/2 at ranks 2 and 3 -> 2/3
    assert average_precision(scores, targets, "area") == pytest.approx(2 / 3)


def test_ap_ties_are_one_threshold() -> None:
    # scores 0.9 | 0.5 0.5 | 0.1 with targets 1 | 1 0 | 0: thresholds give (prec, rec) = (1, 1/2), (2/3, 1), (1/2, 1)
    # 11-point: t <= .5 -> 1 (6 points), t >= .6 -> 2/3 (5 points): (6 + 10/3) / 11 = 28/33
    a = average_precision(np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 1, 0, 0]))
    b = average_precision(np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 0, 1, 0]))
    assert a == pytest.approx(28 / 33) and b == pytest.approx(28 / 33)


def _ssl_transfer_voc_ap(targets: np.ndarray, scores: np.ndarray) -> float:
    """ssl-transfer `voc_eval_cls`: 11-point AP over sklearn's precision_recall_curve (float thresholds)."""
    prec, rec, _ = precision_recall_curve(targets, scores)
    return float(
        np.mean([prec[rec >= t].max() if (rec >= t).any() else 0.0 for t in np.linspace(0, 1, 11)])
    )


def test_ap_ssl_variant_matches_reference_definition() -> None:
    rng = np.random.default_rng(0)
    targets = np.zeros(300, dtype=int)
    targets[rng.choice(300, 37, replace=False)] = (
        1  # 37 positives: no recall k/37 lands on a t = i/10 inside (0, 1)
    )
    for shift in (0.0, 0.5, 2.0):
        scores = rng.normal(size=300) + shift * targets
        ours = average_precision(scores, targets, "11point_ssl")
        assert ours == pytest.approx(_ssl_transfer_voc_ap(targets, scores), abs=1e-12)


def test_map_is_percent_and_reports_classes_without_positives() -> None:
    scores = np.array([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.1, 0.9, 0.1]])
    targets = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0]])  # class 2 has no positive
    with pytest.warns(UserWarning, match=r"leaves out classes \[2\]"):
        value = mean_average_precision(scores, targets, "11point")
    assert value == pytest.approx(100.0)  # classes 0 and 1 are perfectly ranked
    with pytest.raises(ValueError, match="without positives"):
        average_precision(scores[:, 2], targets[:, 2])
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision(scores, np.zeros_like(targets))
    with pytest.raises(ValueError, match="0/1"):
        average_precision(np.array([0.1, 0.2]), np.array([1, -1]))


def test_registry_unknown_name_names_the_closest() -> None:
    assert set(METRICS) >= {"top1", "mean_per_class", "map11", "map_area"}
    with pytest.raises(ValueError, match="Did you mean 'map11'"):
        METRICS["map_11"]
    with pytest.raises(ValueError, match="unknown AP mode"):
        average_precision(np.array([0.1, 0.2]), np.array([0, 1]), mode="voc12")
