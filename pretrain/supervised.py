"""Supervised pretraining: the reference row of transfer studies ("supervised IN-1M" in MoCo's and
ssl-transfer's tables). A backbone and a linear classifier trained with cross-entropy on the
pretraining set's own labels; the backbone is then evaluated like any self-supervised one.

Labels: single-label sets (ImageNet-style classes, Places-style scene types) use softmax
cross-entropy; multi-label sets (COCO-style "which classes are in the image") use a sigmoid
binary cross-entropy per class, as for multi-label classification. A set without labels (a real
COCO folder read without its annotations, a folder of a user's images) cannot be used and fails
naming the dataset.

Published defaults: torchvision's ImageNet reference recipe for ResNet (`references/classification`,
the recipe of the torchvision weights the transfer literature calls "supervised"): batch 256,
SGD lr 0.1, momentum 0.9, weight decay 1e-4, 90 epochs, RandomResizedCrop (scale 0.08-1) and
horizontal flip, no colour augmentation. Departure, named: the harness's per-epoch cosine schedule
instead of the recipe's step decay (x0.1 every 30 epochs).
Only the first view of the two the shared augmentation draws is used (the second is not
trained on: a few ms of augmentation a step, no model compute).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.backbones import build_backbone
from pretrain.config import AugConfig, TrainConfig, _between, views_without_small_crops


@dataclass
class SupervisedSection:
    """The classifier on the backbone and its loss."""

    arch: str = "resnet50"
    label_smoothing: float = 0.0  # softmax cross-entropy only
    num_classes: int | None = None  # filled from the data's labels when training starts

    def __post_init__(self) -> None:
        _between("supervised.label_smoothing", self.label_smoothing, 0.0, 1.0, closed_low=True)


def supervised_augmentation() -> AugConfig:
    """torchvision's ImageNet training transform: RandomResizedCrop (0.08, 1) + flip, no colour."""
    return AugConfig(crop_scale=(0.08, 1.0), jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


@dataclass
class SupervisedConfig(TrainConfig):
    aug: AugConfig = field(default_factory=supervised_augmentation)
    supervised: SupervisedSection = field(default_factory=SupervisedSection)
    batch_size: int = 256
    lr: float = 0.1
    weight_decay: float = 1e-4
    epochs: int = 90

    def __post_init__(self) -> None:
        super().__post_init__()
        views_without_small_crops(self.aug, "supervised training takes one view per image")


class Supervised(nn.Module):
    """forward(anchor, positives, target) = the classification loss of the anchor views."""

    wants_targets = True  # pretrain.train passes each batch's labels as `target`

    def __init__(self, cfg: SupervisedSection) -> None:
        super().__init__()
        if cfg.num_classes is None or cfg.num_classes < 1:
            raise ValueError(
                "supervised.num_classes is unset: supervised pretraining needs labelled images "
                "(pretrain.train fills it from the data's labels)"
            )
        self.cfg = cfg
        self.backbone = build_backbone(cfg.arch)
        self.classifier = nn.Linear(self.backbone.out_dim, cfg.num_classes)

    def forward(
        self, anchor: Tensor, positives: Tensor | list[Tensor], target: Tensor, epoch: int = 0
    ) -> Tensor:
        logits = self.classifier(self.backbone(anchor)).float()
        if target.ndim == 2:  # multi-label: a 0/1 row per image
            return F.binary_cross_entropy_with_logits(logits, target.float())
        return F.cross_entropy(logits, target, label_smoothing=self.cfg.label_smoothing)
