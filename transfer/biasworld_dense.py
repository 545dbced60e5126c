"""Bias-world twins of the dense targets (Table 3): class masks, depth and boxes from the painter's algorithm.

voc12_seg / voc_det use the voc07 variant (20 classes), cityscapes the "cityscapes" street variant (5 classes),
nyud_seg / nyud_depth the "nyud" indoor-like variant (the world's 56 classes). Segmentation targets count the
background as class 0 (num_classes = object classes + 1), detection targets count object classes only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from transfer.data import DenseSet, biasworld_split, get_target

DETECTION_TARGETS = ("voc_det",)
# VOC 'difficult' stand-in: instances mostly hidden or a few pixels across (ignored when scoring, as VOC's)
DIFFICULT_VISIBLE = 0.25
DIFFICULT_SIDE = 3


def dense_split(spec: dict[str, Any], split: str, cache_dir: Path | None) -> DenseSet:
    """One split of a bias-world dense target: images, class masks, depth and per-image boxes."""
    target = get_target(spec["name"])
    world, images = biasworld_split(spec, split, cache_dir, dense=True)
    n = len(world.images)
    boxes, labels, difficult = _boxes(world.objects, n)
    objects = tuple(world.object_class_names)
    detection = target.name in DETECTION_TARGETS
    return DenseSet(
        images=images,
        num_classes=len(objects) if detection else len(objects) + 1,
        class_names=objects if detection else ("background",) + objects,
        class_mask=torch.from_numpy(world.dense["class_mask"].astype(np.int64)),  # 0 bg, class + 1
        depth=torch.from_numpy(world.dense["depth"].astype(np.float32)),
        boxes=boxes,
        box_labels=labels,
        box_difficult=difficult,
    )


def _boxes(objects: dict[str, np.ndarray], n: int) -> tuple[list, list, list]:
    """Per image: xyxy float32 boxes (M_i, 4), labels (M_i,), difficult flags (M_i,)."""
    box = objects["box"].astype(np.float32)
    side = np.minimum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])
    hard = (objects["visible"] < DIFFICULT_VISIBLE) | (side < DIFFICULT_SIDE)
    rows = [np.flatnonzero(objects["image"] == i) for i in range(n)]
    return (
        [torch.from_numpy(box[r]) for r in rows],
        [torch.from_numpy(objects["class"][r].astype(np.int64)) for r in rows],
        [torch.from_numpy(hard[r]) for r in rows],
    )
