"""Linear classification with SGD on frozen features and augmentation (Tables 4, 9; A.2): MoCo's `main_lincls`.

The backbone is frozen (eval mode: its BN statistics are not updated) and every epoch runs freshly augmented
images through it (nothing precomputed: each epoch sees new crops). Train: RandomResizedCrop(image_size, scale
(0.08, 1), ratio (3/4, 4/3)) + horizontal flip, done per image on tensors (bilinear resampling of the sampled box,
no antialiasing); val: Resize(image_size / 0.875) + CenterCrop(image_size). A linear layer (weights N(0, 0.01),
bias 0) on the pooled features, cross-entropy, SGD; lr x gamma at the milestones (fractions of the run, so a
profile that shortens `epochs` keeps the schedule's shape). Metric: top-1 on val.

Versions (`version` fills the schedule fields left None; a field set in the spec or a profile wins):
- "mocov2" (default; the paper's A.2, "the evaluation protocol from He et al."): 100 epochs, SGD momentum 0.9,
  lr 30, weight decay 1e-4 on the linear layer, lr x0.1 after epochs 60 and 80 (all A.2); batch 256 (A.2 gives
  none: main_lincls's default).
- "mocov1" (MoCo paper Sec. 4.1): 100 epochs, lr 30 and weight decay 0 (its grid search); momentum 0.9, batch 256
  and x0.1 at epochs 60 and 80 are not in the text: main_lincls's defaults (`--schedule 60 80`, `-b 256`,
  `--momentum 0.9`, `--wd 0`), the script that reproduces Sec. 4.1.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pretrain.registry import fill_from_version
from transfer.features import normalize
from transfer.linear import torch_threads
from transfer.metrics import top1_accuracy
from transfer.svm import resize_center_crop


VERSIONS: dict[str, dict[str, Any]] = {
    "mocov2": {"epochs": 100, "batch_size": 256, "lr": 30.0, "momentum": 0.9, "weight_decay": 1e-4,
               "milestones": (60 / 100, 80 / 100)},
    "mocov1": {"epochs": 100, "batch_size": 256, "lr": 30.0, "momentum": 0.9, "weight_decay": 0.0,
               "milestones": (60 / 100, 80 / 100)},
}  # fmt: skip


@dataclass
class LinclsProtocol:
    version: str = "mocov2"  # a key of VERSIONS: sets the six fields below when they are None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    milestones: tuple[float, ...] | None = None  # x gamma at these fractions of the epochs
    gamma: float = 0.1
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    val_crop: float = 0.875  # Resize 256 / CenterCrop 224
    seed: int = 0
    threads: int = 0
    metric: str = "top1"
    multilabel: bool = False

    def __post_init__(self) -> None:
        fill_from_version(self, VERSIONS, "lincls protocol")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                f"need epochs >= 1, batch_size >= 1, lr > 0, weight_decay >= 0; got {self.epochs}, "
                f"{self.batch_size}, {self.lr}, {self.weight_decay}"
            )
        if self.metric != "top1" or self.multilabel:
            raise ValueError(f"main_lincls reports single-label top1, got metric '{self.metric}'")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError(f"milestones are fractions of the run in (0, 1), got {self.milestones}")


def random_resized_crop(images: torch.Tensor, size: int, protocol: LinclsProtocol, gen: torch.Generator) -> torch.Tensor:
    """(N,3,size,size) float 0-255: per image a box of area scale*A and aspect ratio r (log-uniform), as
    torchvision's RandomResizedCrop (10 tries, then the central crop), resampled bilinearly, flipped with p=0.5."""
    N, _, H, W = images.shape
    boxes = torch.empty(N, 4)
    log_r = (math.log(protocol.crop_ratio[0]), math.log(protocol.crop_ratio[1]))
    for i in range(N):
        boxes[i] = torch.tensor([0.0, 0.0, W, H])  # fallback: whole image
        for _ in range(10):
            area = H * W * float(torch.empty(1).uniform_(*protocol.crop_scale, generator=gen))
            r = math.exp(float(torch.empty(1).uniform_(*log_r, generator=gen)))
            w, h = round(math.sqrt(area * r)), round(math.sqrt(area / r))
            if 0 < w <= W and 0 < h <= H:
                y0 = int(torch.randint(H - h + 1, (1,), generator=gen))
                x0 = int(torch.randint(W - w + 1, (1,), generator=gen))
                boxes[i] = torch.tensor([x0, y0, x0 + w, y0 + h], dtype=torch.float32)
                break
    flip = torch.rand(N, generator=gen) < 0.5
    # affine grid: output [-1, 1] -> the box in input normalised coordinates (align_corners=False)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / W - 1, (boxes[:, 1] + boxes[:, 3]) / H - 1
    sx, sy = (boxes[:, 2] - boxes[:, 0]) / W, (boxes[:, 3] - boxes[:, 1]) / H
    theta = torch.zeros(N, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = torch.where(flip, -sx, sx), cx
    theta[:, 1, 1], theta[:, 1, 2] = sy, cy
    grid = F.affine_grid(theta, (N, 3, size, size), align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def train_lincls(backbone: nn.Module, images: torch.Tensor, labels: torch.Tensor, size: int,
                 protocol: LinclsProtocol, num_classes: int, progress=lambda info: None) -> nn.Linear:
    """The linear classifier after `epochs` of SGD on augmented images through the frozen backbone."""
    backbone.eval().requires_grad_(False)
    device = next(backbone.parameters()).device
    fc = nn.Linear(backbone.out_dim, num_classes).to(device)
    nn.init.normal_(fc.weight, 0.0, 0.01)
    nn.init.zeros_(fc.bias)
    opt = torch.optim.SGD(fc.parameters(), protocol.lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay)
    for epoch in range(protocol.epochs):
        lr = protocol.lr * protocol.gamma ** sum(epoch >= m * protocol.epochs for m in protocol.milestones)
        for group in opt.param_groups:
            group["lr"] = lr
        gen = torch.Generator().manual_seed(protocol.seed * 100_003 + epoch)
        order = torch.randperm(len(images), generator=gen)
        losses = []
        for start in range(0, len(images), protocol.batch_size):
            idx = order[start : start + protocol.batch_size]
            x = normalize(random_resized_crop(images[idx], size, protocol, gen)).to(device)
            with torch.no_grad():
                feats = backbone(x)
            loss = F.cross_entropy(fc(feats), labels[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        progress({"stage": "lincls", "epoch": epoch + 1, "of": protocol.epochs, "loss": float(np.mean(losses)), "lr": lr})
    return fc


@torch.no_grad()
def evaluate_lincls(backbone: nn.Module, fc: nn.Linear, images: torch.Tensor, size: int, protocol: LinclsProtocol,
                    batch_size: int = 256) -> torch.Tensor:
    """(N, C) logits on the Resize + CenterCrop view."""
    device = next(backbone.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(resize_center_crop(images[start : start + batch_size], size, protocol.val_crop))
        out.append(fc(backbone(x.to(device))).cpu())
    return torch.cat(out)


def run_lincls(spec: dict, ctx: Any) -> dict:
    from pretrain.backbones import load_backbone
    from transfer.data import load_split
    from transfer.features import state_fingerprint

    protocol = LinclsProtocol(**spec["protocol"])
    start = time.perf_counter()
    train_x, train_y = load_split(spec["data"], "train", ctx.cache_dir / "biasworld", ctx.roots)
    val_x, val_y = load_split(spec["data"], "val", ctx.cache_dir / "biasworld", ctx.roots)
    train_y, val_y = torch.as_tensor(train_y).long(), torch.as_tensor(val_y).long()
    if train_y.ndim != 1:
        raise ValueError(f"lincls needs single-label targets; '{spec['data']['name']}' has labels {tuple(train_y.shape)}")
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    with torch_threads(protocol.threads):
        backbone = load_backbone(ctx.backbone_path).to(ctx.device)
        before = state_fingerprint(backbone)
        fc = train_lincls(backbone, train_x, train_y, spec["image_size"], protocol, num_classes, ctx.progress)
        logits = evaluate_lincls(backbone, fc, val_x, spec["image_size"], protocol)
        if state_fingerprint(backbone) != before:
            raise RuntimeError("the frozen backbone changed during linear training (weights or BN stats)")
    return {"value": top1_accuracy(logits, val_y), "metric": "top1", "fit_s": time.perf_counter() - start}


def _register() -> None:
    from transfer.tasks import Task, register

    register(
        Task(
            name="lincls",
            protocol=LinclsProtocol,
            run=run_lincls,
            targets=("imagenet", "places"),
            spec_defaults={"image_size": 224},  # RandomResizedCrop / CenterCrop size
            description="MoCo main_lincls: SGD linear layer on frozen features with augmentation, top-1 on val",
        )
    )


_register()
