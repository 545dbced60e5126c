"""Class activation maps of a linear classifier on frozen features (Figure 6, S2).

CAM_c(x) = w_c . f(x)[:, i, j]: the classifier's weights of class c (the predicted one) dotted with the backbone's
last spatial features before average pooling (the classifier is linear on the pooled features, so the pooled
CAM is the class score less its bias). Maps are upsampled bilinearly to the image, scaled to [0, 1] per image and
drawn over it.

The `cam` task (Figure 6, S2) trains MoCo's main_lincls classifier on the target (ImageNet in the paper), then draws
the CAMs of `n_images` validation images, the first of each of the first classes, as one grid (work/cam.png).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transfer.lincls import LinclsProtocol, evaluate_lincls, train_lincls
from transfer.linear import torch_threads
from transfer.metrics import top1_accuracy
from transfer.spatial import feature_maps, strided_trunk
from transfer.svm import resize_center_crop

CELL = 128  # pixels per image in the grid
GRID = "cam.png"  # in the job's work directory
HOT = 0.5  # a pixel is "activated" where its scaled CAM reaches this (the area each CAM covers)


@dataclass
class CamProtocol(LinclsProtocol):
    """main_lincls's classifier (the paper's linear ImageNet classifier), and how many val images to draw."""

    n_images: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_images < 1:
            raise ValueError(f"n_images={self.n_images}: must be >= 1")


@torch.no_grad()
def class_activation_maps(
    backbone: nn.Module, weight: torch.Tensor, images: torch.Tensor, raw: bool = False
) -> tuple:
    """(cams (N, H, W) in [0, 1], predicted classes (N,)); weight (C, D) acts on the pooled features.
    raw=True: the unscaled maps at the feature resolution (N, h, w), whose spatial mean is the class score.
    """
    trunk = strided_trunk(backbone, "layer4", 32)  # the backbone as it is, without its pooling
    feats = feature_maps(trunk, images)  # (N, D, h, w)
    weight = torch.as_tensor(weight, dtype=feats.dtype)
    if weight.ndim != 2 or weight.shape[1] != feats.shape[1]:
        raise ValueError(
            f"classifier_weight must be (C, {feats.shape[1]}), got {tuple(weight.shape)}"
        )
    pred = (feats.mean((2, 3)) @ weight.T).argmax(1)  # (N,)
    cams = torch.einsum("nd,ndhw->nhw", weight[pred], feats)
    if raw:
        return cams, pred
    cams = F.interpolate(
        cams[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False
    )[:, 0]
    lo, hi = cams.amin((1, 2), keepdim=True), cams.amax((1, 2), keepdim=True)
    return (cams - lo) / (hi - lo).clamp(min=1e-12), pred


def cam_grid(
    backbone: nn.Module,
    classifier_weight: torch.Tensor,
    images: torch.Tensor,
    labels,
    path: str | Path,
    class_names: tuple[str, ...] | None = None,
) -> torch.Tensor:
    """Saves a PNG grid (row 1: images, row 2: CAM over image; CELL x CELL pixels each, so (2 CELL, N CELL) pixels)
    titled with the true and predicted class; returns the CAMs (N, H, W)."""
    cams, pred = class_activation_maps(backbone, classifier_weight, images)
    draw_cam_grid(images, cams, labels, pred, path, class_names)
    return cams


def draw_cam_grid(
    images: torch.Tensor,
    cams: torch.Tensor,
    labels,
    pred,
    path: str | Path,
    class_names: tuple[str, ...] | None = None,
) -> None:
    """The PNG of cam_grid from maps already computed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, dpi = len(images), 100
    name = (lambda c: class_names[c]) if class_names else str
    fig = plt.figure(figsize=(n * CELL / dpi, 2 * CELL / dpi), dpi=dpi)
    for i in range(n):
        rgb = images[i].permute(1, 2, 0).numpy().astype(np.uint8)
        for row in range(2):
            ax = fig.add_axes((i / n, 0.5 * (1 - row), 1 / n, 0.5))
            ax.imshow(rgb, interpolation="nearest")
            if row == 1:
                ax.imshow(cams[i].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            else:
                title = f"{name(int(labels[i]))} / {name(int(pred[i]))}"
                ax.text(1, 1, title, fontsize=6, color="white", va="top")
            ax.set_axis_off()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def first_of_each_class(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the first image of each class, classes in label order, at most n: a fixed, varied selection."""
    classes, first = np.unique(np.asarray(labels), return_index=True)
    return first[np.argsort(classes)][:n]


def run_cam(spec: dict[str, Any], ctx: Any) -> dict[str, Any]:
    from pretrain.backbones import load_backbone
    from transfer.data import load_split

    protocol = CamProtocol(**spec["protocol"])
    start = time.perf_counter()
    train_x, train_y = load_split(spec["data"], "train", ctx.cache_dir / "biasworld", ctx.roots)
    val_x, val_y = load_split(spec["data"], "val", ctx.cache_dir / "biasworld", ctx.roots)
    train_y, val_y = torch.as_tensor(train_y).long(), torch.as_tensor(val_y).long()
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    with torch_threads(protocol.threads):
        backbone = load_backbone(ctx.backbone_path).to(ctx.device)
        fc = train_lincls(
            backbone, train_x, train_y, spec["image_size"], protocol, num_classes, ctx.progress
        )
        top1 = top1_accuracy(
            evaluate_lincls(backbone, fc, val_x, spec["image_size"], protocol), val_y
        )
        idx = first_of_each_class(val_y.numpy(), protocol.n_images)
        images = resize_center_crop(val_x[idx], spec["cam_size"], protocol.val_crop)
        cams, pred = class_activation_maps(backbone, fc.weight.detach().cpu(), images)
    draw_cam_grid(images, cams, val_y[idx], pred, ctx.workdir / GRID)
    return {"value": top1, "metric": "top1", "grid": GRID, "cam_area": 100 * float((cams >= HOT).float().mean()),
            "images": _per_image(cams, idx, val_y[idx], pred), "fit_s": time.perf_counter() - start}  # fmt: skip


def _per_image(
    cams: torch.Tensor, idx: np.ndarray, labels: torch.Tensor, pred: torch.Tensor
) -> list[dict]:
    """One record per drawn image: its class, the class its CAM shows, where the CAM peaks and how much it covers."""
    records = []
    for k, cam in enumerate(cams):
        y, x = divmod(int(cam.argmax()), cam.shape[1])
        records.append({"index": int(idx[k]), "label": int(labels[k]), "pred": int(pred[k]), "peak_y": y,
                        "peak_x": x, "area": 100 * float((cam >= HOT).float().mean())})  # fmt: skip
    return records


def _register() -> None:
    from transfer.tasks import Task, register

    register(
        Task(
            name="cam",
            protocol=CamProtocol,
            run=run_cam,
            targets=("imagenet",),
            # image_size: the classifier's crops (as lincls); cam_size: the images the CAMs are drawn on
            spec_defaults={"image_size": 224, "cam_size": 224},
            description="class activation maps of main_lincls's classifier on frozen features (Fig. 6, S2)",
        )
    )


_register()
