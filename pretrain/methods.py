"""Pretraining methods by name, each with its published defaults (a config dataclass), and the
paper's named variants of MoCo-v2: each is a few config fields, composable (a table row can merge
several, or give the fields itself, e.g. `{aug: {n_small: 6}}`); the method stays "mocov2"."""

from __future__ import annotations

from typing import Any

from pretrain.config import PretrainConfig
from pretrain.registry import lookup

# "random": no pretraining, the backbone at its seeded initialisation (the paper's Rand. init. rows); it takes
# MoCo-v2's config so that profiles (arch, seed) apply to it unchanged, and ignores the training fields.
METHODS: dict[str, type] = {"mocov2": PretrainConfig, "random": PretrainConfig}

# Dotted config fields per variant (paper sections / Appalaraju et al. tables).
VARIANTS: dict[str, dict[str, Any]] = {
    # Sec. 3.1, Figures 2-3: views with IoU below a threshold (the figure sweeps it)
    "iou_limited": {"aug.max_iou": 0.5},
    # Sec. 4.1, Table 4: multi-crop, anchor + positive at 160 px, 4 small crops at 96 px (the
    # default small_size None = 0.6 x size, so a profile that shrinks aug.size shrinks both)
    "mc": {"aug.size": 160, "aug.n_small": 4},
    "cc": {"aug.size": 160, "aug.n_small": 4, "aug.small_min_overlap": 0.2},
    "m_down": {"moco.momentum": 0.995},
    # Sec. 4.2, Table 7: positives get default transforms or AutoAugment at random
    "a_plus": {"aug.autoaugment_p": 0.5},
    # Sec. 4.3, Table 8: kNN-MoCo, k 20, lambda 0.4, after a 5-epoch warm-up
    "nn": {"moco.knn_lambda": 0.4, "moco.knn_k": 20, "moco.knn_warmup": 5},
    "nn_enqueue_first": {
        "moco.knn_lambda": 0.4,
        "moco.knn_enqueue_first": True,
        "moco.knn_warmup": 0,
    },
    # Appalaraju et al. Table 1 / Table 3: projection-head and negatives ablations
    "no_mlp_head": {"moco.head": "linear"},
    "no_head": {"moco.head": "none"},
    "fixed_random_head": {"moco.head": "fixed_random"},
    "deeper_head": {"moco.head_depth": 3},
    "narrower_head": {"moco.head_width": 128},
    "queue_512": {"moco.queue_size": 512},
    "momentum_0.5": {"moco.momentum": 0.5},
}


def method_defaults(name: str) -> dict[str, Any]:
    """The method's full config at the paper's values, as nested dicts."""
    return lookup(METHODS, name, "method")().to_dict()


def variant(*names: str) -> dict[str, Any]:
    """The dotted fields of the named variants merged left to right: variant("cc", "m_down", "nn")
    is Table 4's last row plus NN. Unknown names fail listing the valid ones."""
    merged: dict[str, Any] = {}
    for name in names:
        merged.update(lookup(VARIANTS, name, "variant"))
    return merged
