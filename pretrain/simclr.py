"""SimCLR (Chen et al., ICML 2020): one module, forward = the NT-Xent loss over in-batch negatives.

Both views of an image go through the same encoder f = h o g; each of the 2N embeddings z has one
positive (the other view of its image) and 2N - 2 negatives (every other view of the batch):
    l(i, j) = -log exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau),
averaged over all 2N (i, j) pairs (the paper's Algorithm 1). Several processes: the embeddings of
all processes are gathered with a gradient-carrying all-gather, so the negatives are the global
batch's and W processes compute what one process computes on the global batch.

Published defaults (SimCLR paper Sec. 2.3 "Default setting", Appendix A and B.1; the repository
google-research/simclr `run.py`): ResNet-50, a 2-layer MLP head to 128-d, tau 0.1, batch 4096,
lr 4.8 = 0.3 x N / 256, weight decay 1e-6, 100 epochs, cosine decay. Augmentation: crop scale
(0.08, 1), colour jitter of strength 1 = (0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale p 0.2,
Gaussian blur p 0.5 (sigma 0.1-2), flip. Departures, named: SGD with momentum 0.9 instead of LARS,
and no 10-epoch warm-up (the harness's optimiser and per-epoch cosine schedule).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.backbones import build_backbone
from pretrain.config import AugConfig, TrainConfig, _between, _positive, views_without_small_crops
from pretrain.moco import _full, world


@dataclass
class SimCLRSection:
    """The SimCLR encoder and loss."""

    arch: str = "resnet50"
    dim: int = 128  # output of the projection head g(.) (the paper's z)
    hidden: int | None = None  # hidden width of the head; None = D (2048 for ResNet-50)
    tau: float = 0.1  # NT-Xent temperature (run.py's default; the paper's Table 5 best at 4096)

    def __post_init__(self) -> None:
        _positive("simclr.dim", self.dim)
        if self.hidden is not None:
            _positive("simclr.hidden", self.hidden)
        _between("simclr.tau", self.tau, 0.0, float("inf"))


def simclr_augmentation() -> AugConfig:
    """SimCLR's augmentation (Appendix A): crop scale (0.08, 1), colour distortion of strength 1."""
    return AugConfig(crop_scale=(0.08, 1.0), jitter=(0.8, 0.8, 0.8, 0.2))


@dataclass
class SimCLRConfig(TrainConfig):
    aug: AugConfig = field(default_factory=simclr_augmentation)
    simclr: SimCLRSection = field(default_factory=SimCLRSection)
    batch_size: int = 4096
    lr: float = 4.8  # 0.3 x 4096 / 256
    weight_decay: float = 1e-6
    epochs: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        views_without_small_crops(self.aug, "SimCLR takes two views per image")


class GatherWithGradient(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient for this process's rows, so the
    loss of each process flows back into the embeddings of every other process."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # n x C -> (W n) x C, rank-major
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def gather_with_gradient(x: Tensor) -> Tensor:
    """All processes' rows (rank-major), differentiable; x itself on one process."""
    return GatherWithGradient.apply(x) if world()[1] > 1 else x


def nt_xent(z1: Tensor, z2: Tensor, tau: float) -> Tensor:
    """NT-Xent over the global batch: z1, z2 this process's N x C views (row i: image i). Every
    process averages over its own 2N anchors, so the mean over processes is the global loss."""
    rank, size = world()
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # 2N x C: view 1, then view 2
    z_all = gather_with_gradient(z)  # (W 2N) x C; rank r's block starts at 2N r
    logits = z @ z_all.T / tau  # 2N x (W 2N): sim(z_i, z_k) / tau
    mine = torch.arange(2 * n, device=z.device) + 2 * n * rank  # column of each anchor itself
    logits = logits.scatter(1, mine.unsqueeze(1), float("-inf"))  # k != i
    positive = torch.cat([mine[n:], mine[:n]])  # the other view of the same image
    return F.cross_entropy(logits, positive)


def simclr_head(width: int, cfg: SimCLRSection) -> nn.Module:
    """g: Linear(D, H) - BN - ReLU - Linear(H, C) (the paper's 2-layer MLP; BN as in run.py)."""
    hidden = cfg.hidden or width
    return nn.Sequential(
        nn.Linear(width, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, cfg.dim),
    )


class SimCLR(nn.Module):
    def __init__(self, cfg: SimCLRSection) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg.arch)  # f
        self.head = simclr_head(self.backbone.out_dim, cfg)  # g

    def forward(self, anchor: Tensor, positives: Tensor | list[Tensor], epoch: int = 0) -> Tensor:
        """anchor, positives[0]: the two views, N x 3 x S x S each (further positives, multi-crop,
        are not part of SimCLR and rejected). Returns the NT-Xent loss."""
        positives = [positives] if isinstance(positives, Tensor) else list(positives)
        if len(positives) != 1 or len(positives[0]) != len(anchor):
            raise ValueError("SimCLR takes two views per image: set aug.n_small=0")
        z = _full(self.head(self.backbone(torch.cat([anchor, positives[0]]))))  # 2N x C
        with torch.autocast(z.device.type, enabled=False):
            return nt_xent(*z.chunk(2), self.cfg.tau)
