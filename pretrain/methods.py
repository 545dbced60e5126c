"""Pretraining methods by name, each a config class holding its published defaults, and the
paper's named variants of MoCo-v2: each is a few config fields, composable (a table row can merge
several, or give the fields itself, e.g. `{aug: {n_small: 6}}`); the method stays "mocov2".

A method's config is the shared training fields (pretrain.config.TrainConfig) plus its own
section: `moco` (MoCo v1, v2 and Rand. init.), `simclr`, `swav` or `supervised`. Spec layers written for one
method (a profile's `moco.queue_size`, Table 4's `moco.momentum` rows) reach another method
through `own_fields`, which drops the sections of other methods: sizes for every method can sit
in one profile, and `method=swav` runs a MoCo table with SwAV (a MoCo-only ablation row then
plans the same job as the row before it). A key of no method's section still fails loudly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from typing import Any

from torch import nn

from pretrain.config import PretrainConfig, TrainConfig
from pretrain.moco import MoCo, MoCoV1Config
from pretrain.registry import lookup
from pretrain.simclr import SimCLR, SimCLRConfig
from pretrain.supervised import Supervised, SupervisedConfig
from pretrain.swav import SwAV, SwAVConfig

# "random": no pretraining, the backbone at its seeded initialisation (the paper's Rand. init. rows); it takes
# MoCo-v2's config so that profiles (arch, seed) apply to it unchanged, and ignores the training fields.
METHODS: dict[str, type[TrainConfig]] = {
    "mocov2": PretrainConfig,
    "mocov1": MoCoV1Config,
    "simclr": SimCLRConfig,
    "swav": SwAVConfig,
    "supervised": SupervisedConfig,  # the reference row: cross-entropy on the pretraining set's labels
    "random": PretrainConfig,
}
# config class -> (its method section, the module built from that section)
MODULES: dict[type[TrainConfig], tuple[str, type[nn.Module]]] = {
    PretrainConfig: ("moco", MoCo),
    SimCLRConfig: ("simclr", SimCLR),
    SwAVConfig: ("swav", SwAV),
    SupervisedConfig: ("supervised", Supervised),
}
SECTIONS = frozenset(section for section, _ in MODULES.values())

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
    """The method's full config at its published values, as nested dicts."""
    return lookup(METHODS, name, "method")().to_dict()


def method_config(name: str, d: dict[str, Any]) -> TrainConfig:
    """The named method's config from (nested or dotted) fields; unknown keys fail."""
    return lookup(METHODS, name, "method").from_dict(d)


def own_fields(name: str, layer: dict[str, Any]) -> dict[str, Any]:
    """`layer` (nested or dotted keys) without the sections of the other methods."""
    mine = {f.name for f in fields(lookup(METHODS, name, "method"))}
    return {
        k: v for k, v in layer.items() if k.split(".")[0] in mine or k.split(".")[0] not in SECTIONS
    }


def _module_entry(cfg: TrainConfig) -> tuple[str, type[nn.Module]]:
    for cls in type(cfg).__mro__:  # MoCo v1's config is a PretrainConfig
        if cls in MODULES:
            return MODULES[cls]
    raise TypeError(f"{type(cfg).__name__} is no registered method's config")


def section(cfg: TrainConfig) -> Any:
    """The method section of `cfg` (cfg.moco, cfg.simclr, ...): it names the backbone (arch)."""
    return getattr(cfg, _module_entry(cfg)[0])


def needs_labels(cfg: TrainConfig) -> bool:
    """Whether the method trains on the images' labels (supervised): its module's forward takes `target`."""
    return getattr(_module_entry(cfg)[1], "wants_targets", False)


def with_section(cfg: TrainConfig, **fields: Any) -> TrainConfig:
    """cfg with fields of its method section replaced (e.g. supervised.num_classes read from the data)."""
    name = _module_entry(cfg)[0]
    return dataclasses.replace(cfg, **{name: dataclasses.replace(section(cfg), **fields)})


def build_model(cfg: TrainConfig) -> nn.Module:
    """The method's module (forward = loss), built from its section."""
    return _module_entry(cfg)[1](section(cfg))


def forward_flags(cfg: TrainConfig, epoch: int) -> dict[str, Any]:
    """The per-epoch switches of the module's forward: MoCo's kNN warm-up (knn), the epoch for
    SimCLR and SwAV (prototype freezing, queue start)."""
    if isinstance(cfg, PretrainConfig):
        return {"knn": epoch >= cfg.moco.knn_warmup}
    return {"epoch": epoch}


def frozen_parameters(model: nn.Module, epoch: int) -> list[nn.Parameter]:
    """Parameters that take no optimiser step in `epoch` (SwAV's prototypes, first epoch)."""
    return model.frozen_parameters(epoch) if isinstance(model, SwAV) else []


def variant(*names: str) -> dict[str, Any]:
    """The dotted fields of the named variants merged left to right: variant("cc", "m_down", "nn")
    is Table 4's last row plus NN. Unknown names fail listing the valid ones."""
    merged: dict[str, Any] = {}
    for name in names:
        merged.update(lookup(VARIANTS, name, "variant"))
    return merged
