"""MoCo-v2 pretraining config: one dataclass of defaults per component, at the paper's values.

Sources: paper Sec. 3 setup and appendix A.1 (ResNet-50, MLP head without BN, tau 0.2, m 0.999,
lr 0.3 cosine, batch 256, 400 epochs); MoCo-v2 "aug+" (facebookresearch/moco `main_moco.py`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from pretrain.registry import closest


@dataclass
class AugConfig:
    """MoCo-v2 "aug+": RandomResizedCrop, ColorJitter p=0.8, grayscale, blur p=0.5, flip."""

    size: int = 224  # output crop side (px)
    crop_scale: tuple[float, float] = (0.2, 1.0)  # fraction of the image area
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio w/h
    # ColorJitter strengths: brightness, contrast, saturation, hue
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    # sigma range in output pixels, as PIL's blur after the 224 px crop
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    flip_p: float = 0.5


@dataclass
class MoCoConfig:
    """MoCo (He et al. 2020, Algorithm 1) with the MoCo-v2 MLP head, no BN in it (paper A.1)."""

    arch: str = "resnet50"
    dim: int = 128  # C: embedding dimension
    mlp: bool = True  # head h = Linear(D, D) - ReLU - Linear(D, C), no batchnorm
    queue_size: int = 65536  # K
    momentum: float = 0.999  # m
    tau: float = 0.2  # temperature
    split_bn: int = 8  # BN sub-batches standing in for shuffling BN on one process; 0 = plain BN


@dataclass
class PretrainConfig:
    moco: MoCoConfig = field(default_factory=MoCoConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    epochs: int = 400
    batch_size: int = 256  # N
    lr: float = 0.3
    sgd_momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # per epoch, as official main_moco.py; "constant" also accepted
    seed: int = 0
    precision: str = "fp32"  # "bf16" = autocast to bfloat16
    device: str = "auto"  # "auto" = cuda when available
    num_workers: int = 0  # DataLoader workers for the per-image (real data) path
    threads: int | None = None  # torch.set_num_threads; None leaves torch's setting

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        """Nested (or dotted: ``{"moco.arch": ...}``) dicts -> config; unknown key: ValueError."""
        return _build(cls, _undot(d), "")

    def to_dict(self) -> dict[str, Any]:
        """Nested dicts of plain JSON/YAML values (tuples become lists)."""
        return _plain(dataclasses.asdict(self))


def _undot(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        head, _, rest = key.partition(".")
        if rest:
            out.setdefault(head, {})[rest] = value
        else:
            out[key] = value
    return {k: _undot(v) if isinstance(v, dict) else v for k, v in out.items()}


def _build(cls: type, d: dict[str, Any], prefix: str) -> Any:
    valid = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        if key not in valid:
            hint = closest(key, valid)
            raise ValueError(
                f"unknown config key '{prefix}{key}'"
                + (f"; did you mean '{prefix}{hint}'?" if hint else "")
                + f" Valid: {', '.join(sorted(valid))}"
            )
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ValueError(f"config key '{prefix}{key}' holds a section: give a dict")
            value = _build(type(default), value, f"{prefix}{key}.")
        elif isinstance(default, tuple):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value
