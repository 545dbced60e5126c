"""DAVIS-2017 semi-supervised metrics (davis2017-evaluation's scorer, re-written): J (region similarity) and
F (contour accuracy) per object and frame, J_m / F_m their means, J&F = (J_m + F_m) / 2, in percent.

- J = |pred & gt| / |pred | gt|; 1 when both masks are empty (the object is hidden and predicted absent).
- F: boundary maps of both masks (a pixel is on the boundary if it differs from its right, lower or lower-right
  neighbour: the scorer's `_seg2bmap` at the mask's own size); each boundary is dilated by a disk of radius
  ceil(bound_th * image diagonal) (bound_th = 0.008); precision = fraction of predicted boundary pixels within the
  dilated gt boundary, recall = the converse; F = 2PR / (P + R). Empty boundaries: both empty -> P = R = 1; only
  the prediction empty -> P = 1, R = 0; only the gt empty -> P = 0, R = 1.
- A clip is scored on frames 1 .. T-2 (the scorer drops the given first frame and the last frame), for every
  object of the first frame; J_m and F_m average each object's per-frame mean over all objects of all clips.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

BOUND_TH = 0.008


def _mask(m: np.ndarray | torch.Tensor) -> np.ndarray:
    m = m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
    if m.ndim != 2:
        raise ValueError(f"masks must be 2-d (H, W), got shape {m.shape}")
    return m.astype(bool)


def region_similarity(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> float:
    """J in [0, 1] of two binary (H, W) masks."""
    pred, gt = _mask(pred), _mask(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same shape")
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right, lower or lower-right neighbour differs (the scorer's seg2bmap)."""
    m = _mask(mask)
    right, down, diag = np.zeros_like(m), np.zeros_like(m), np.zeros_like(m)
    right[:, :-1], down[:-1, :], diag[:-1, :-1] = m[:, 1:], m[1:, :], m[1:, 1:]
    b = (m ^ right) | (m ^ down) | (m ^ diag)
    b[-1, :] = m[-1, :] ^ right[-1, :]
    b[:, -1] = m[:, -1] ^ down[:, -1]
    b[-1, -1] = False
    return b


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def contour_accuracy(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, bound_th: float = BOUND_TH) -> float:
    """F in [0, 1] of two binary (H, W) masks; bound_th >= 1 is a radius in pixels, else a fraction of the diagonal."""
    pred, gt = _mask(pred), _mask(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must have the same shape")
    radius = int(bound_th) if bound_th >= 1 else int(math.ceil(bound_th * math.hypot(*pred.shape)))
    pb, gb = boundary_map(pred), boundary_map(gt)
    n_pred, n_gt = int(pb.sum()), int(gb.sum())
    if n_pred == 0 or n_gt == 0:
        precision, recall = (1.0 if n_pred == 0 else 0.0), (1.0 if n_gt == 0 else 0.0)
    else:
        disk = _disk(radius)
        precision = float((pb & ndimage.binary_dilation(gb, disk)).sum() / n_pred)
        recall = float((gb & ndimage.binary_dilation(pb, disk)).sum() / n_gt)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def score_clip(pred: torch.Tensor, gt: torch.Tensor, bound_th: float = BOUND_TH) -> dict[int, tuple[float, float]]:
    """{object id: (mean J, mean F) over frames 1..T-2} for the objects of gt's first frame; pred, gt (T, H, W)."""
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must both be (T, H, W)")
    frames = range(1, max(gt.shape[0] - 1, 2))  # a 2-frame clip keeps its frame 1
    out = {}
    for k in [int(k) for k in torch.unique(gt[0]) if k != 0]:
        j = [region_similarity(pred[t] == k, gt[t] == k) for t in frames]
        f = [contour_accuracy(pred[t] == k, gt[t] == k, bound_th) for t in frames]
        out[k] = (float(np.mean(j)), float(np.mean(f)))
    return out


def davis_scores(per_clip: list[dict[int, tuple[float, float]]]) -> dict[str, float]:
    """{'j_mean', 'f_mean', 'jf'} in percent, averaged over every object of every clip."""
    pairs = [jf for clip in per_clip for jf in clip.values()]
    if not pairs:
        raise ValueError("J&F is undefined: no object in the first frame of any clip")
    j, f = 100 * float(np.mean([p[0] for p in pairs])), 100 * float(np.mean([p[1] for p in pairs]))
    return {"j_mean": j, "f_mean": f, "jf": (j + f) / 2}
