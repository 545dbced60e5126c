"""Target datasets of the transfer protocols, by the paper's names, each with a bias-world twin.

Each target knows the metric the paper reports on it (Table 2: top-1; mean per-class accuracy for Pets as
in ssl-transfer; 11-point mAP for VOC07, one binary classifier per class).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.registry import lookup
import numpy as np
import torch

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TargetDataset:
    name: str
    paper_name: str
    biasworld: str  # bias-world variant standing in for it
    metric: str  # a key of transfer.metrics.METRICS
    multilabel: bool = False
    linear: bool = True  # a classification target of the linear protocols
    higher_is_better: bool = True  # False for errors (depth RMSE)


TARGETS: dict[str, TargetDataset] = {
    t.name: t
    for t in [
        TargetDataset("cifar10", "CIFAR10", "cifar10", "top1"),
        TargetDataset("cars", "Stanford Cars", "cars", "top1"),
        TargetDataset("food", "Food-101", "food", "top1"),
        TargetDataset("pets", "Oxford Pets", "pets", "mean_per_class"),
        TargetDataset("places", "Places365", "places", "top1"),
        TargetDataset("sun", "SUN397", "sun", "top1"),
        TargetDataset("voc07", "PASCAL VOC 2007", "voc07", "map11", multilabel=True),
        # dense targets (Tables 3, 5, 6, 9): see DenseSet / VideoSet below for what their loaders return
        TargetDataset("voc12_seg", "PASCAL VOC 2012 (train_aug / val)", "voc07", "miou", linear=False),
        TargetDataset("cityscapes", "Cityscapes", "cityscapes", "miou", linear=False),
        TargetDataset("nyud_seg", "NYUD-v2 (segmentation)", "nyud", "miou", linear=False),
        TargetDataset("nyud_depth", "NYUD-v2 (depth)", "nyud", "rmse", linear=False, higher_is_better=False),
        TargetDataset("voc_det", "PASCAL VOC 07+12 (detection)", "voc07", "ap", linear=False),
        TargetDataset("davis", "DAVIS-2017 (val)", "davis", "jf", linear=False),
        # MoCo main_lincls targets (Tables 4, 9; Places365 is the "places" target above): trained on train, top-1 on val
        TargetDataset("imagenet", "ImageNet (val)", "object_uniform", "top1", linear=False),
    ]
}


@dataclass
class DenseSet:
    """One split of a dense target, the same for the bias world and for real loaders.

    images may be a uint8 tensor (N, 3, H, W) or, for real data of mixed sizes, a sequence whose items
    are uint8 (3, H_i, W_i) tensors; the masks/depth/boxes follow the same indexing.
    """

    images: Any  # uint8 (N,3,H,W) tensor, or sequence of (3,H_i,W_i)
    num_classes: int  # including background (class 0) for segmentation; object classes for detection
    class_names: tuple[str, ...]
    class_mask: Any = None  # int64 (N,H,W) or sequence of (H_i,W_i): class id, IGNORE_INDEX where unlabelled
    depth: Any = None  # float32 (N,H,W) or sequence, metres (bias world: relative units), 0 where invalid
    boxes: list | None = None  # per image: float32 (M_i, 4) xyxy pixels
    box_labels: list | None = None  # per image: int64 (M_i,) in [0, num_classes)
    box_difficult: list | None = None  # per image: bool (M_i,) (VOC 'difficult'); None: none difficult


@dataclass
class Video:
    """One clip: frames and per-frame instance masks (0 background, 1..K objects)."""

    name: str
    frames: torch.Tensor  # uint8 (T, 3, H, W)
    masks: torch.Tensor  # int64 (T, H, W); DAVIS evaluates frames 1..T-1 given frame 0


IGNORE_INDEX = 255


def get_target(name: str) -> TargetDataset:
    return lookup(TARGETS, name, "target dataset")


def target_defaults(name: str) -> dict[str, Any]:
    """The data section of a transfer spec. Sizes are the bias world's; real data uses its own splits."""
    get_target(name)
    return {
        "name": name,
        "source": "biasworld",
        "image_size": 224,
        "n_train": 5000,
        "n_val": 1000,
        "n_test": 5000,
        "seed": 0,
        **VIDEO_DATA.get(name, {}),
    }


# Video targets' extra data fields (DAVIS-2017 val: 30 clips, ~69 frames each, 1-5 objects; bias world: clips of
# `frames` frames whose objects move at most `speed` image widths a frame)
VIDEO_DATA: dict[str, dict[str, Any]] = {"davis": {"n_videos": 30, "frames": 24, "speed": 0.03}}


def load_split(
    spec: dict[str, Any], split: str, cache_dir: Path | None, roots: dict[str, str] | None = None
) -> tuple[torch.Tensor, np.ndarray]:
    """(images uint8 (N,3,H,W), labels (N,) int64 or (N,C) uint8) of one split."""
    get_target(spec["name"])  # an unknown target fails here, naming the valid ones
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; valid: {', '.join(SPLITS)}")
    if spec["source"] != "biasworld":
        from transfer.real import load_classification

        return load_classification(spec, split, roots or {})
    world, images = biasworld_split(spec, split, cache_dir)
    return images, world.labels


def biasworld_split(spec: dict[str, Any], split: str, cache_dir: Path | None, dense: bool = False) -> tuple:
    """(BiasWorldSet, its images as uint8 (N,3,H,W)) of the target's bias-world twin, sized by the data spec."""
    from pretrain.data.biasworld import generate

    world = generate(
        get_target(spec["name"]).biasworld,
        split=split,
        n=int(spec[f"n_{split}"]),
        size=int(spec["image_size"]),
        seed=int(spec["seed"]),
        dense=dense,
        cache_dir=cache_dir,
    )
    return world, torch.from_numpy(np.ascontiguousarray(world.images.transpose(0, 3, 1, 2)))


def load_dense(
    spec: dict[str, Any], split: str, cache_dir: Path | None, roots: dict[str, str] | None = None
) -> DenseSet:
    """One split of a dense target (segmentation, depth, detection, segment retrieval)."""
    get_target(spec["name"])
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; valid: {', '.join(SPLITS)}")
    if spec["source"] == "biasworld":
        from transfer.biasworld_dense import dense_split

        return dense_split(spec, split, cache_dir)
    from transfer.real import load_dense as load_real_dense

    return load_real_dense(spec, split, roots or {})


def load_videos(
    spec: dict[str, Any], split: str, cache_dir: Path | None, roots: dict[str, str] | None = None
) -> list[Video]:
    """The clips of a video target (DAVIS-2017 val and its bias-world twin)."""
    get_target(spec["name"])
    if spec["source"] == "biasworld":
        from transfer.biasworld_video import video_split

        return video_split(spec, split, cache_dir)
    from transfer.real import load_videos as load_real_videos

    return load_real_videos(spec, split, roots or {})
