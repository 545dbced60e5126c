"""SwAV (Caron et al., NeurIPS 2020): one module, forward = the swapped-prediction loss.

Every crop x_t (2 large + V small, multi-crop) is encoded to z_t = h(g(x_t)) / ||.||, and scored
against K prototypes c_k (unit rows): scores z_t^T C. Codes q_t come from the scores of the large
crops only, by Sinkhorn-Knopp (Algorithm 1 of the paper's appendix: 3 iterations, epsilon 0.05),
which spreads the batch equally over the prototypes; codes carry no gradient. Swapped prediction:
each large crop's code is predicted from every other crop,
    L = mean over s in {large} of 1/(T-1) sum_{t != s} -sum_k q_s^k log softmax(z_t^T C / tau)^k.
Several processes: Sinkhorn's sums are all-reduced, so the codes are the global batch's.

Small batches: an optional queue of the large crops' embeddings of earlier batches joins the
Sinkhorn input (its codes are dropped), from epoch `queue_start_epoch` once it is full. The
prototypes get no update during the first `freeze_prototypes_epochs` epochs.

Published defaults (the paper Sec. 4 and appendix A; facebookresearch/swav `main_swav.py` and its
batch-256 script): ResNet-50, MLP head 2048-2048-128 with BN, 3000 prototypes, tau 0.1, epsilon
0.05, 3 Sinkhorn iterations, queue 3840 from epoch 15, prototypes frozen for the first epoch
(5005 iterations at batch 256), lr 0.6, weight decay 1e-6, batch 256; multi-crop 2x160 + 4x96
(the paper's Table 3 setting), scales (0.14, 1) and (0.05, 0.14); SimCLR's colour distortion
(strength 1) with blur p 0.5. Departures, named: SGD with momentum 0.9 instead of LARS, no
warm-up, the cosine decays to 0 (not 0.0006).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.backbones import build_backbone
from pretrain.config import AugConfig, TrainConfig, _between, _positive
from pretrain.moco import _full, world


@dataclass
class SwAVSection:
    """The SwAV encoder, prototypes, Sinkhorn and queue."""

    arch: str = "resnet50"
    dim: int = 128  # z: feat_dim
    hidden: int | None = None  # MLP hidden width; None = D (2048 for ResNet-50)
    n_prototypes: int = 3000  # K
    tau: float = 0.1  # temperature of the predictions
    epsilon: float = 0.05  # entropy weight of the Sinkhorn codes
    sinkhorn_iterations: int = 3
    queue_length: int = 3840  # embeddings kept per large crop; 0 = no queue
    queue_start_epoch: int = 15  # 0-based epoch from which the (full) queue joins Sinkhorn
    freeze_prototypes_epochs: int = 1  # prototypes take no step in these first epochs

    def __post_init__(self) -> None:
        for name in ("dim", "n_prototypes", "sinkhorn_iterations"):
            _positive(f"swav.{name}", getattr(self, name))
        if self.hidden is not None:
            _positive("swav.hidden", self.hidden)
        _between("swav.tau", self.tau, 0.0, float("inf"))
        _between("swav.epsilon", self.epsilon, 0.0, float("inf"))
        for name in ("queue_length", "queue_start_epoch", "freeze_prototypes_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"swav.{name}={getattr(self, name)}: must be >= 0")


def swav_augmentation() -> AugConfig:
    """2x160 + 4x96 multi-crop with SwAV's scales and colour distortion of strength 1."""
    return AugConfig(
        size=160,
        crop_scale=(0.14, 1.0),
        jitter=(0.8, 0.8, 0.8, 0.2),
        n_small=4,
        small_scale=(0.05, 0.14),
    )


@dataclass
class SwAVConfig(TrainConfig):
    aug: AugConfig = field(default_factory=swav_augmentation)
    swav: SwAVSection = field(default_factory=SwAVSection)
    lr: float = 0.6
    weight_decay: float = 1e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.swav.queue_length % self.batch_size:
            raise ValueError(
                f"swav.queue_length={self.swav.queue_length}: must be a multiple of the batch "
                f"size batch_size={self.batch_size} (the queue takes whole batches)"
            )


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float, iterations: int) -> Tensor:
    """Codes Q (B x K) of this process's scores (B x K): Sinkhorn-Knopp on exp(scores / epsilon)
    so that, over the global batch of B_all rows, each prototype gets B_all / K of the mass and each
    row sums to 1. Sums over rows are all-reduced across processes."""
    _, size = world()
    Q = torch.exp(scores.double() / epsilon).T  # Q is K-by-B
    K, B = Q.shape
    B_all = B * size
    total = Q.sum().reshape(1)
    _reduce(total)
    Q /= total
    for _ in range(iterations):
        rows = Q.sum(1, keepdim=True)  # K x 1: mass of each prototype
        _reduce(rows)
        Q /= rows * K  # each prototype: 1 / K
        Q /= Q.sum(0, keepdim=True) * B_all  # each sample: 1 / B_all
    return (Q * B_all).T.to(scores.dtype)  # B x K, rows sum to 1


def _reduce(x: Tensor) -> None:
    if world()[1] > 1:
        dist.all_reduce(x)


def swapped_prediction(scores: list[Tensor], codes: list[Tensor], tau: float) -> Tensor:
    """scores: T tensors B x K (large crops first); codes: one B x K per large crop. Each code is
    predicted by every other crop; the mean over large crops of the mean over the T - 1 others."""
    loss = 0.0
    for s, q in enumerate(codes):
        others = [p for t, p in enumerate(scores) if t != s]
        loss += sum(-(q * F.log_softmax(p / tau, 1)).sum(1).mean() for p in others) / len(others)
    return loss / len(codes)


class SwAV(nn.Module):
    N_LARGE = 2  # crops_for_assign: the two large crops

    def __init__(self, cfg: SwAVSection) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg.arch)  # g
        hidden = cfg.hidden or self.backbone.out_dim
        self.head = nn.Sequential(  # h: Linear - BN - ReLU - Linear (main_swav.py's hidden_mlp)
            nn.Linear(self.backbone.out_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, cfg.dim),
        )
        self.prototypes = nn.Linear(cfg.dim, cfg.n_prototypes, bias=False)  # C: K x dim
        if cfg.queue_length:  # per large crop: queue_length x dim, newest first, zeros = empty
            per_process = cfg.queue_length // world()[1]
            self.register_buffer("queue", torch.zeros(self.N_LARGE, per_process, cfg.dim))

    def frozen_parameters(self, epoch: int) -> list[nn.Parameter]:
        """The parameters that take no step in this epoch: the prototypes, at first."""
        return [*self.prototypes.parameters()] if epoch < self.cfg.freeze_prototypes_epochs else []

    def forward(self, anchor: Tensor, positives: Tensor | list[Tensor], epoch: int = 0) -> Tensor:
        """anchor, positives[0]: the two large crops (N x 3 x S x S); positives[1:]: the small
        crops ((V N) x 3 x s x s, crop-major). Returns the swapped-prediction loss."""
        positives = [positives] if isinstance(positives, Tensor) else list(positives)
        n = len(anchor)
        with torch.no_grad():  # the prototypes stay on the unit sphere (main_swav.py)
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        crops = [anchor, *positives]  # grouped by resolution: one backbone pass per size
        features = torch.cat([_full(self.backbone(x)) for x in crops])
        z = F.normalize(_full(self.head(features)), dim=1)  # (T N) x dim
        with torch.autocast(z.device.type, enabled=False):
            scores = self.prototypes(z).split(n)  # T tensors N x K: z_t^T C
            large = z[: self.N_LARGE * n].detach().split(n)
            codes = [self._codes(s, scores[s], large[s], epoch) for s in range(self.N_LARGE)]
            return swapped_prediction(list(scores), codes, self.cfg.tau)

    def _codes(self, s: int, scores: Tensor, z: Tensor, epoch: int) -> Tensor:
        """Codes of large crop s (N x K); with the queue (full, from queue_start_epoch) its
        scores join Sinkhorn. The queue then takes this batch's embeddings."""
        cfg = self.cfg
        with torch.no_grad():
            extra = scores.new_zeros(0, scores.shape[1])
            if cfg.queue_length and epoch >= cfg.queue_start_epoch:
                if self.queue[s, -1].any():  # full: the oldest slot has been written
                    extra = self.queue[s] @ self.prototypes.weight.T
                self.queue[s] = torch.cat([z, self.queue[s, : -len(z)]])
            codes = sinkhorn(
                torch.cat([scores.detach(), extra]), cfg.epsilon, cfg.sinkhorn_iterations
            )
            return codes[: len(scores)]
