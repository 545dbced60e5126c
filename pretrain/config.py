"""MoCo-v2 pretraining config: one dataclass of defaults per component, at the paper's values.

Sources: paper Sec. 3 setup and appendix A.1 (ResNet-50, MLP head without BN, tau 0.2, m 0.999,
lr 0.3 cosine, batch 256, 400 epochs); MoCo-v2 "aug+" (facebookresearch/moco `main_moco.py`).
The paper's variants are fields here, all off by default (plain MoCo-v2): IoU-limited views
(Sec. 3.1: aug.max_iou), multi-crop (Sec. 4.1: aug.n_small, constrained: aug.small_min_overlap),
stronger augmentation (Sec. 4.2: aug.autoaugment_p), kNN-MoCo (Sec. 4.3: moco.knn_*), and the
projection-head ablations of Appalaraju et al. (moco.head, head_depth, head_width).
Every value is checked in __post_init__: the error names the field and its allowed range.
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
    # Sec. 3.1: IoU(anchor, positive) < max_iou; None = off. A rejected pair is redrawn (both
    # crops) up to `iou_tries` times; a pair still rejected keeps the lowest-IoU draw.
    max_iou: float | None = None
    iou_tries: int = 1000
    # Sec. 4.1 multi-crop: n_small extra positives, small_scale of the image area, resized to
    # small_size (None = 0.6 x size: the paper's 96 px beside 160 px anchors). 0 = two crops.
    n_small: int = 0
    small_size: int | None = None
    small_scale: tuple[float, float] = (0.05, 0.14)
    # Constrained multi-crop: a small crop is redrawn until >= this fraction of its area lies
    # inside the anchor crop (paper: 0.2); None = off. After `small_tries` failed draws it is placed
    # on the anchor's centre (clamped into the image), the placement of most overlap for its size.
    small_min_overlap: float | None = None
    small_tries: int = 50
    # Sec. 4.2 A+: each positive (not the anchor) gets AutoAugment (ImageNet policy) instead of
    # jitter/grayscale/blur with this probability (paper: 0.5); 0 = off. Crop and flip stay.
    autoaugment_p: float = 0.0

    def __post_init__(self) -> None:
        _positive("aug.size", self.size)
        _unit_range("aug.crop_scale", self.crop_scale)
        _unit_range("aug.small_scale", self.small_scale)
        _between("aug.max_iou", self.max_iou, 0.0, 1.0, none_ok=True)
        _between("aug.small_min_overlap", self.small_min_overlap, 0.0, 1.0, none_ok=True)
        _positive("aug.iou_tries", self.iou_tries)
        _positive("aug.small_tries", self.small_tries)
        if self.n_small < 0:
            raise ValueError(f"aug.n_small={self.n_small}: must be >= 0 (0 = no small crops)")
        if self.small_size is not None:
            _positive("aug.small_size", self.small_size)
        for name in ("jitter_p", "grayscale_p", "blur_p", "flip_p", "autoaugment_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"aug.{name}={p}: a probability, must be in [0, 1]")

    @property
    def small_side(self) -> int:
        """Side of the small crops (px)."""
        return self.small_size or max(1, round(0.6 * self.size))


@dataclass
class MoCoConfig:
    """MoCo (He et al. 2020, Algorithm 1) with the MoCo-v2 MLP head, no BN in it (paper A.1)."""

    arch: str = "resnet50"
    dim: int = 128  # C: embedding dimension
    # head h: "mlp" = Linear(D, W) - ReLU - ... - Linear(W, C), no batchnorm (MoCo-v2);
    # "linear" = Linear(D, C) (MoCo v1, "no MLP head" of Appalaraju et al. Table 1a/3a);
    # "none" = identity (C = D: the loss on pooled features); "fixed_random" = the MLP at its
    # random (uniform) init, frozen (Table 1b)
    head: str = "mlp"
    head_depth: int = 2  # Linear layers in the MLP (3 = "deeper", Table 1c)
    head_width: int | None = None  # MLP hidden width W; None = D ("narrower": 128, Table 1d)
    queue_size: int = 65536  # K
    momentum: float = 0.999  # m (paper Sec. 4.1 "m-down": 0.995)
    tau: float = 0.2  # temperature
    split_bn: int = 8  # BN sub-batches standing in for shuffling BN on one process; 0 = plain BN
    # kNN-MoCo (Sec. 4.3, Eq. 2): loss_inst + knn_lambda * loss_nn, neighbours = top knn_k of
    # cos(g(x+), Q_g) over a second queue of momentum-backbone features. knn_lambda 0 = off
    # (paper NN: 0.4, k 20). loss_nn switches on after knn_warmup epochs (paper: 5); or, appendix
    # B, knn_enqueue_first: both queues take the batch's anchors before the loss (then warm-up 0).
    knn_k: int = 20
    knn_lambda: float = 0.0
    knn_warmup: int = 5
    knn_enqueue_first: bool = False

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            hint = closest(self.head, HEADS)
            raise ValueError(
                f"moco.head='{self.head}': valid are {', '.join(HEADS)}"
                + (f"; did you mean '{hint}'?" if hint else "")
            )
        if self.head_depth < 2:
            raise ValueError(f"moco.head_depth={self.head_depth}: an MLP has >= 2 Linear layers")
        if self.head_width is not None:
            _positive("moco.head_width", self.head_width)
        _positive("moco.dim", self.dim)
        _positive("moco.queue_size", self.queue_size)
        _between("moco.momentum", self.momentum, 0.0, 1.0, closed_low=True, closed_high=False)
        _between("moco.tau", self.tau, 0.0, float("inf"))
        if self.split_bn < 0:
            raise ValueError(f"moco.split_bn={self.split_bn}: must be >= 0 (0 or 1 = plain BN)")
        if self.knn_lambda > 0 and not 1 <= self.knn_k <= self.queue_size:
            raise ValueError(
                f"moco.knn_k={self.knn_k}: must be in [1, moco.queue_size={self.queue_size}]"
            )
        if self.knn_lambda < 0:
            raise ValueError(f"moco.knn_lambda={self.knn_lambda}: must be >= 0 (0 = off)")
        if self.knn_warmup < 0:
            raise ValueError(f"moco.knn_warmup={self.knn_warmup}: must be >= 0 epochs")


HEADS = ("mlp", "linear", "none", "fixed_random")


@dataclass
class TrainConfig:
    """What every pretraining method shares: the augmentation and the optimisation. Each method's
    config (pretrain/methods.py) adds its own section: PretrainConfig (MoCo) `moco`, SimCLR
    `simclr`, SwAV `swav`; a subclass may change a default (SimCLR's augmentation)."""

    aug: AugConfig = field(default_factory=AugConfig)
    epochs: int = 400
    batch_size: int = 256  # N
    lr: float = 0.3
    sgd_momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # per epoch, as official main_moco.py; "constant" also accepted
    seed: int = 0
    precision: str = "fp32"  # "bf16" = autocast to bfloat16; "auto": bf16 where the device has native bf16, else fp32
    # "channels_last": the model's weights and each batch in NHWC (the layout GPU tensor cores read; execution only, as
    # threads: the same math in another summation order). On CPU ~7% faster than NCHW in bf16, no faster in fp32
    # (README); "auto": channels_last when the precision (resolved) is bf16
    memory_format: str = "contiguous"
    device: str = "auto"  # "auto" = cuda when available
    num_workers: int = 0  # DataLoader workers for the per-image (real data) path
    threads: int | None = None  # torch.set_num_threads; None leaves torch's setting
    save_backbone_epochs: tuple[int, ...] = ()  # also keep backbone_ep{e}.pt after these epochs

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs={self.epochs}: must be >= 0")
        _positive("batch_size", self.batch_size)
        _between("lr", self.lr, 0.0, float("inf"), closed_low=True)
        bad = [e for e in self.save_backbone_epochs if not 1 <= e <= self.epochs]
        if bad:
            raise ValueError(f"save_backbone_epochs {bad}: each must be in [1, epochs={self.epochs}]")
        _one_of("precision", self.precision, PRECISIONS)
        _one_of("memory_format", self.memory_format, MEMORY_FORMATS)
        _one_of("schedule", self.schedule, SCHEDULES)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Nested (or dotted: ``{"moco.arch": ...}``) dicts -> config; unknown key: ValueError."""
        return _build(cls, _undot(d), "")

    def to_dict(self) -> dict[str, Any]:
        """Nested dicts of plain JSON/YAML values (tuples become lists)."""
        return _plain(dataclasses.asdict(self))


@dataclass
class PretrainConfig(TrainConfig):
    """MoCo (v2 by default; v1 in pretrain/methods.py): the shared fields and the `moco` section."""

    moco: MoCoConfig = field(default_factory=MoCoConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.moco.queue_size % self.batch_size:
            raise ValueError(
                f"moco.queue_size={self.moco.queue_size}: must be a multiple of the batch size "
                f"batch_size={self.batch_size} (the queue takes whole batches)"
            )
        if self.moco.split_bn > 1 and self.batch_size % self.moco.split_bn:
            raise ValueError(
                f"batch_size={self.batch_size}: must be a multiple of moco.split_bn="
                f"{self.moco.split_bn}"
            )


PRECISIONS = ("fp32", "bf16", "auto")  # auto: bf16 where the device computes it natively (pretrain.train.resolve_auto)
MEMORY_FORMATS = ("contiguous", "channels_last", "auto")  # auto: channels_last with native bf16
SCHEDULES = ("cosine", "constant")


def _one_of(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        hint = closest(str(value), valid)
        raise ValueError(
            f"{name}={value!r}: valid are {', '.join(valid)}"
            + (f"; did you mean '{hint}'?" if hint else "")
        )


def views_without_small_crops(aug: AugConfig, views: str) -> None:
    """A method whose views are fixed (SimCLR's two, supervised's one) refuses multi-crop's small crops."""
    if aug.n_small:
        raise ValueError(
            f"aug.n_small={aug.n_small}: {views}, must be 0 (multi-crop rows of a MoCo table do not apply)"
        )


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name}={value}: must be >= 1")


def _between(
    name: str,
    value: float | None,
    low: float,
    high: float,
    none_ok: bool = False,
    closed_low: bool = False,
    closed_high: bool = True,
) -> None:
    """low < value <= high by default (the brackets say which ends are allowed)."""
    if value is None and none_ok:
        return
    ok = value is not None and (low <= value if closed_low else low < value)
    ok = ok and (value <= high if closed_high else value < high)
    if not ok:
        interval = f"{'[' if closed_low else '('}{low}, {high}{']' if closed_high else ')'}"
        raise ValueError(
            f"{name}={value}: must be in {interval}" + (" or None (off)" if none_ok else "")
        )


def _unit_range(name: str, value: tuple[float, float]) -> None:
    """A (lo, hi) fraction of the image area: 0 < lo <= hi <= 1."""
    if len(value) != 2 or not 0.0 < value[0] <= value[1] <= 1.0:
        raise ValueError(f"{name}={tuple(value)}: must be (lo, hi) with 0 < lo <= hi <= 1")


def _undot(d: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys -> nested dicts, merged with nested sections given as dicts."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        head, _, rest = key.partition(".")
        if rest:
            value = {rest: value}
        if isinstance(value, dict) and isinstance(out.get(head), dict):
            out[head] = {**out[head], **value}
        else:
            out[head] = value
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
                raise ValueError(f"{prefix}{key}={value!r}: a section of the config, give a dict")
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
