"""Class activation maps of a linear classifier on frozen features (Figure 6, S2).

CAM_c(x) = w_c . f(x)[:, i, j]: the classifier's weights of class c (the predicted one) dotted with the backbone's
last spatial features before average pooling (the classifier is linear on the pooled features, so the pooled
CAM is the class score less its bias). Maps are upsampled bilinearly to the image, scaled to [0, 1] per image and
drawn over it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transfer.spatial import feature_maps, strided_trunk

CELL = 128  # pixels per image in the grid


@torch.no_grad()
def class_activation_maps(backbone: nn.Module, weight: torch.Tensor, images: torch.Tensor, raw: bool = False) -> tuple:
    """(cams (N, H, W) in [0, 1], predicted classes (N,)); weight (C, D) acts on the pooled features.
    raw=True: the unscaled maps at the feature resolution (N, h, w), whose spatial mean is the class score."""
    trunk = strided_trunk(backbone, "layer4", 32)  # the backbone as it is, without its pooling
    feats = feature_maps(trunk, images)  # (N, D, h, w)
    weight = torch.as_tensor(weight, dtype=feats.dtype)
    if weight.ndim != 2 or weight.shape[1] != feats.shape[1]:
        raise ValueError(f"classifier_weight must be (C, {feats.shape[1]}), got {tuple(weight.shape)}")
    pred = (feats.mean((2, 3)) @ weight.T).argmax(1)  # (N,)
    cams = torch.einsum("nd,ndhw->nhw", weight[pred], feats)
    if raw:
        return cams, pred
    cams = F.interpolate(cams[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    lo, hi = cams.amin((1, 2), keepdim=True), cams.amax((1, 2), keepdim=True)
    return (cams - lo) / (hi - lo).clamp(min=1e-12), pred


def cam_grid(backbone: nn.Module, classifier_weight: torch.Tensor, images: torch.Tensor, labels, path: str | Path,
             class_names: tuple[str, ...] | None = None) -> torch.Tensor:
    """Saves a PNG grid (row 1: images, row 2: CAM over image; CELL x CELL pixels each, so (2 CELL, N CELL) pixels)
    titled with the true and predicted class; returns the CAMs (N, H, W)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cams, pred = class_activation_maps(backbone, classifier_weight, images)
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
                ax.text(1, 1, f"{name(int(labels[i]))} / {name(int(pred[i]))}", fontsize=6, color="white", va="top")
            ax.set_axis_off()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return cams
