"""The bias world: seeded procedural images whose dataset biases (paper Sec. 3) are set on purpose.

Object classes are (shape, texture, colour) tuples rendered in numpy; each variant of VARIANTS
stands for a row of paper Table 1 (object-centric uniform / long-tailed, COCO- and OpenImages-like
scenes, BDD-like streets) or a target of Table 2 (CIFAR10, Cars, Food, Pets, Places, SUN, VOC07).
`generate` returns images, labels, a per-instance object table and, with dense=True, class/instance
masks and depth from the painter's algorithm; `video` renders short clips of moving, occluding
objects with per-frame instance masks.
"""

from __future__ import annotations

from pretrain.data.biasworld.generate import (
    GENERATOR_VERSION,
    SPLITS,
    BiasWorldSet,
    cache_path,
    class_list,
    generate,
    stable_id,
)
from pretrain.data.biasworld.variants import VARIANTS, VariantSpec, get_variant
from pretrain.data.biasworld.video import BiasWorldVideo, video

__all__ = [
    "GENERATOR_VERSION",
    "SPLITS",
    "VARIANTS",
    "BiasWorldSet",
    "BiasWorldVideo",
    "VariantSpec",
    "cache_path",
    "class_list",
    "generate",
    "get_variant",
    "stable_id",
    "video",
]
