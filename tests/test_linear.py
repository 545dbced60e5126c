"""The Table 2 linear protocol against scikit-learn's LogisticRegression (the solver ssl-transfer used)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from transfer.linear import LinearProtocol, fit_logreg, linear_eval, wd_grid
from transfer.metrics import top1_accuracy

TIGHT = {"dtype": "float64", "tol": 1e-10, "max_iter": 5000}


def blobs(
    n: int, d: int = 12, c: int = 3, sep: float = 0.6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """ReLU'd Gaussian classes with uneven per-feature scales, like pooled CNN features: x (n, d), y (n,)."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(0, sep, (c, d))
    scale = np.exp(np.random.default_rng(98).normal(0, 0.5, d))
    y = rng.integers(0, c, n)
    return np.maximum(means[y] + rng.normal(0, 1, (n, d)), 0) * scale, y


def sklearn_fit(x: np.ndarray, y: np.ndarray, C: float) -> LogisticRegression:
    with threadpool_limits(1):
        return LogisticRegression(C=C, tol=1e-12, max_iter=20000).fit(x, y)


@pytest.mark.parametrize("wd", [0.1, 10.0])
def test_one_fit_equals_sklearn_multinomial(wd: float) -> None:
    x, y = blobs(300)
    ours = fit_logreg(x, y, wd, LinearProtocol(**TIGHT))
    ref = sklearn_fit(x, y, 1.0 / wd)
    np.testing.assert_allclose(ours["coef"], ref.coef_, atol=1e-5)
    # the softmax bias is defined up to a constant shift: compare centred biases and the probabilities
    b = ours["intercept"] - ours["intercept"].mean()
    np.testing.assert_allclose(b, ref.intercept_ - ref.intercept_.mean(), atol=1e-5)
    proba = torch.softmax(torch.as_tensor(x @ ours["coef"].T + ours["intercept"]), 1).numpy()
    np.testing.assert_allclose(proba, ref.predict_proba(x), atol=1e-5)
    assert ours["grad_max"] < 1e-7  # float64 L-BFGS stops on loss changes < 1e-14 around here


def test_float32_is_close_to_sklearn() -> None:
    x, y = blobs(300)
    ours = fit_logreg(x, y, 1.0, LinearProtocol(dtype="float32", tol=1e-5))
    np.testing.assert_allclose(ours["coef"], sklearn_fit(x, y, 1.0).coef_, atol=2e-3)


def test_binary_as_softmax_is_sigmoid_with_half_the_weight_decay() -> None:
    """ssl-transfer's VOC fit, LogisticRegression(multi_class='multinomial') on 0/1 labels, is a 2-class softmax
    with both rows penalised: the same classifier as a sigmoid one with C' = 2C (wd' = wd / 2)."""
    x, y = blobs(300, c=2)
    wd = 2.0
    two_class = fit_logreg(x, y, wd, LinearProtocol(**TIGHT))["coef"]  # (2, D)
    ml = LinearProtocol(**TIGHT, multilabel=True, metric="map11")
    sigmoid = fit_logreg(x, y[:, None], wd, ml)["coef"][0]
    np.testing.assert_allclose(sigmoid, two_class[1] - two_class[0], atol=1e-6)
    np.testing.assert_allclose(sigmoid, sklearn_fit(x, y, 2.0 / wd).coef_[0], atol=1e-5)
    plain = fit_logreg(
        x, y[:, None], wd, LinearProtocol(**{**ml.__dict__, "binary_as_softmax": False})
    )
    np.testing.assert_allclose(plain["coef"][0], sklearn_fit(x, y, 1.0 / wd).coef_[0], atol=1e-5)


def sklearn_sweep(train: tuple, val: tuple, wds: np.ndarray) -> list[float]:
    """ssl-transfer's selection loop (sklearn, one estimator warm-started through the grid), converged fits."""
    clf = LogisticRegression(warm_start=True, tol=1e-8, max_iter=20000)
    scores = []
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        for wd in wds:
            scores.append(
                top1_accuracy(clf.set_params(C=1.0 / wd).fit(*train).predict(val[0]), val[1])
            )
    return scores


def test_sweep_selects_the_same_wd_as_sklearn() -> None:
    # few examples for 30 features: the validation curve peaks inside the grid (index 29 here), not at its end
    train, val, test = (blobs(n, d=30, sep=0.5, seed=s) for n, s in ((100, 1), (200, 2), (200, 3)))
    protocol = LinearProtocol(dtype="float64", tol=1e-7)
    out = linear_eval(train, val, test, protocol)
    ref = sklearn_sweep(train, val, wd_grid(protocol))
    # converged fits of one objective give the same val predictions, so the same scores and argmax; a val point
    # on a decision boundary may move one score by one example (allowed twice), and the argmax by one grid step.
    # The weakest 5 wds (wd / n <= 1e-7 on these separable 100 points) leave the optimum unpinned at tol: a
    # warm start already meets it, so up to one example per score may differ there.
    diff = np.abs(np.array(out["val_scores"]) - np.array(ref))
    assert (diff <= 100 / 200 + 1e-9).all() and (diff[5:] > 1e-9).sum() <= 2, diff
    assert abs(out["best_index"] - int(np.argmax(ref))) <= 1
    assert 5 < out["best_index"] < 40, out["val_scores"]
    assert len(out["val_scores"]) == len(out["wds"]) == 45 and out["wds"][0] == pytest.approx(1e-6)
    assert out["best_wd"] == pytest.approx(out["wds"][out["best_index"]])
    assert 70.0 < out["test"] <= 100.0  # chance is 33%


def multilabel_blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each of 3 labels switches on its own feature block: x (n, 12), y (n, 3) 0/1."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < 0.3).astype(np.int64)
    x = rng.normal(0, 1, (n, 12)) + np.repeat(y, 4, axis=1) * 1.5
    return x, y


def test_multilabel_map_path() -> None:
    train, val, test = multilabel_blobs(300, 1), multilabel_blobs(100, 2), multilabel_blobs(200, 3)
    out = linear_eval(train, val, test, LinearProtocol(multilabel=True, metric="map11", n_wd=12))
    assert len(out["val_scores"]) == 12
    assert out["test"] > 85.0  # mAP in percent; chance is ~30 (the positive rate)
    assert max(out["grad_max"]) <= 1e-5


def test_input_errors_are_clear() -> None:
    x, y = blobs(50)
    p = LinearProtocol(n_wd=3)
    with pytest.raises(ValueError, match="train labels must be"):
        linear_eval((x, y[:-1]), (x, y), (x, y), p)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        linear_eval((x, y), (x[:, :5], y), (x, y), p)
    bad = x.copy()
    bad[7, 3] = np.nan
    with pytest.raises(ValueError, match="val features contain NaN"):
        linear_eval((x, y), (bad, y), (x, y), p)
    with pytest.raises(ValueError, match="multilabel"):
        LinearProtocol(metric="map11")
    with pytest.raises(ValueError, match="Did you mean 'top1'"):
        LinearProtocol(metric="top-1")
    with pytest.raises(ValueError, match="never occur in train"):
        linear_eval((x, y % 2), (x, y), (x, y), p)


def test_batched_solver_matches_the_warm_started_path() -> None:
    """solver="batched" solves the 45 fits together from zero, the path warm-starts each from the previous one; both
    stop at the same max |grad J|. Where the penalty is strong enough to pin the optimum the validation curves agree;
    at the weakest few wds (wd / n ~ 1e-8 on separable data) a gradient of 1e-7 leaves the weights far apart, and a
    few val points may differ; the selection and the test score agree."""
    train, val, test = (blobs(n, d=30, sep=0.5, seed=s) for n, s in ((100, 1), (200, 2), (200, 3)))
    path = linear_eval(train, val, test, LinearProtocol(dtype="float64", tol=1e-7))
    batched = linear_eval(train, val, test, LinearProtocol(dtype="float64", tol=1e-7, solver="batched"))
    assert max(batched["grad_max"]) <= 1e-7
    diff = np.abs(np.array(batched["val_scores"]) - np.array(path["val_scores"]))
    assert (diff[4:] <= 1e-9).all() and (diff[:4] <= 3 * 100 / 200 + 1e-9).all(), diff
    assert batched["best_index"] == path["best_index"]
    assert batched["test"] == pytest.approx(path["test"], abs=1.0)
    ml = multilabel_blobs(300, 1), multilabel_blobs(100, 2), multilabel_blobs(200, 3)
    kw = {"multilabel": True, "metric": "map11", "n_wd": 12}
    ml_path = linear_eval(*ml, LinearProtocol(**kw))
    ml_batched = linear_eval(*ml, LinearProtocol(solver="batched", **kw))
    assert max(ml_batched["grad_max"]) <= 1e-5
    assert ml_batched["best_index"] == ml_path["best_index"]
    assert ml_batched["test"] == pytest.approx(ml_path["test"], abs=0.5)
