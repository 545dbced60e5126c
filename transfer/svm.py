"""VOC07 SVM classification (Tables 4, 7, 8, 9 "VOC"; the paper's repo `evaluation/voc_svm/main.py`).

Frozen pooled features (transfer/features.py, cached per checkpoint), L2-normalised; Resize(256) then
CenterCrop(224), i.e. the short side resized to image_size / crop_ratio and the central image_size square kept
(crop_ratio = 224/256; 1.0 resizes the whole image); one scikit-learn LinearSVC per class on VOC07 trainval
(labels +1 / -1), C = 0.5, class_weight {1: 2, -1: 1}, squared hinge, L2 penalty, max_iter 2000; ranked by
decision_function on test; 11-point VOC07 mAP (transfer.metrics). VISSL's cost sweep with 3-fold CV is a different
protocol version, not implemented.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from transfer.metrics import METRICS, MULTILABEL_METRICS


@dataclass
class SVMProtocol:
    cost: float = 0.5  # LinearSVC's C
    positive_weight: float = 2.0  # class_weight {1: 2, -1: 1}
    loss: str = "squared_hinge"
    max_iter: int = 2000
    tol: float = 1e-4  # LinearSVC's default
    dual: bool = True  # LinearSVC's default in the sklearn the repo used (liblinear dual coordinate descent)
    crop_ratio: float = 224 / 256  # Resize 256 / CenterCrop 224
    batch_size: int = 256  # feature extraction: execution only
    threads: int = 0  # torch threads for feature extraction; 0: every core this process may use
    metric: str = "map11"
    multilabel: bool = True

    def __post_init__(self) -> None:
        if self.loss not in ("hinge", "squared_hinge"):
            raise ValueError(f"unknown loss '{self.loss}'; valid: hinge, squared_hinge")
        if self.metric not in MULTILABEL_METRICS or not self.multilabel:
            raise ValueError(f"the SVM protocol scores multilabel targets with {', '.join(MULTILABEL_METRICS)}")
        if not 0 < self.crop_ratio <= 1:
            raise ValueError(f"crop_ratio must be in (0, 1], got {self.crop_ratio}")


def resize_center_crop(images: torch.Tensor, size: int, ratio: float) -> torch.Tensor:
    """float 0-255 (N,3,size,size): short side resized to round(size / ratio), central size x size kept."""
    x = images.float()
    short = round(size / ratio)
    h, w = x.shape[-2:]
    hw = (short, max(size, round(w * short / h))) if h <= w else (max(size, round(h * short / w)), short)
    x = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
    top, left = (hw[0] - size) // 2, (hw[1] - size) // 2
    return x[..., top : top + size, left : left + size].clamp(0, 255)


def svm_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, protocol: SVMProtocol) -> np.ndarray:
    """(N_test, C) decision values of one LinearSVC per class; features already L2-normalised, labels (N, C) 0/1."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    scores = np.zeros((len(test_x), train_y.shape[1]))
    for c in range(train_y.shape[1]):
        y = np.where(train_y[:, c] > 0, 1, -1)
        if len(np.unique(y)) < 2:
            raise ValueError(f"class {c} is all {'positive' if y[0] > 0 else 'negative'} in trainval: no SVM to fit")
        svm = LinearSVC(
            C=protocol.cost,
            class_weight={1: protocol.positive_weight, -1: 1},
            loss=protocol.loss,
            penalty="l2",
            max_iter=protocol.max_iter,
            tol=protocol.tol,
            dual=protocol.dual,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            svm.fit(train_x, y)
        scores[:, c] = svm.decision_function(test_x)
    return scores


def l2_normalize(x: torch.Tensor) -> np.ndarray:
    return F.normalize(x.double(), dim=1).numpy()


def run_svm(spec: dict, ctx: Any) -> dict:
    """Cached features of trainval (train + val) and test, one SVM per class, mAP on test."""
    from pretrain.backbones import load_backbone
    from transfer.data import load_split
    from transfer.features import cached_features, data_id

    protocol = SVMProtocol(**spec["protocol"])
    start = time.perf_counter()
    from transfer.linear import torch_threads

    backbone = load_backbone(ctx.backbone_path).to(ctx.device)
    tag = f"{data_id(spec['data'], spec['image_size'])}-crop{protocol.crop_ratio:.4f}"
    feats, labels = {}, {}
    for split in ("train", "val", "test"):
        images, y = load_split(spec["data"], split, ctx.cache_dir / "biasworld", ctx.roots)
        cache = ctx.cache_dir / "features" / ctx.source_key[:16] / f"{tag}-{split}.pt"
        crops = resize_center_crop(torch.as_tensor(images), spec["image_size"], protocol.crop_ratio)
        with torch_threads(protocol.threads):
            feats[split] = cached_features(cache, backbone, crops, spec["image_size"], protocol.batch_size)
        labels[split] = np.asarray(y)
        ctx.progress({"stage": f"features {split}", "n": len(images)})
    train_x = l2_normalize(torch.cat([feats["train"], feats["val"]]))
    train_y = np.concatenate([labels["train"], labels["val"]])
    ctx.progress({"stage": "svm"})
    scores = svm_scores(train_x, train_y, l2_normalize(feats["test"]), protocol)
    value = METRICS[protocol.metric](scores, labels["test"])
    return {"value": float(value), "metric": protocol.metric, "fit_s": time.perf_counter() - start}


def _register() -> None:
    from transfer.tasks import Task, register

    register(
        Task(
            name="svm",
            protocol=SVMProtocol,
            run=run_svm,
            targets=("voc07",),
            spec_defaults={"image_size": 224},  # CenterCrop 224 (after Resize 256)
            description="VOC07 one-vs-rest LinearSVC (C 0.5) on L2-normalised frozen features, 11-point mAP",
        )
    )


_register()
