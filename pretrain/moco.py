"""MoCo-v2 (He et al. 2020, Algorithm 1; Chen et al. 2020 MLP head): one module, forward = loss.

Paper notation (Van Gansbeke et al. 2021): the momentum encoder f' = h' o g' encodes the anchor x;
the query encoder f = h o g encodes the positives X+; the queue Q holds encoded anchors (negatives).
Shuffling BN on one process = split BN (MoCo CIFAR demo): BN statistics over sub-batches, and the
anchors are shuffled before f' and unshuffled after, so a positive and its anchor never share BN
statistics.
"""

from __future__ import annotations

import copy
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.backbones import build_backbone
from pretrain.config import MoCoConfig


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed over `num_splits` sub-batches.

    Sample n goes to sub-batch n mod S (a zero-copy view N x C -> N/S x S*C); running statistics are
    the mean over sub-batches. In eval mode it is plain BN, and its state dict is plain BN's.
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        n, c, h, w = x.shape
        s = self.num_splits
        assert n % s == 0, f"split BN: batch {n} is not a multiple of split_bn={s}"
        mean, var = self.running_mean.repeat(s), self.running_var.repeat(s)  # S*C, updated in place
        y = F.batch_norm(
            x.reshape(n // s, s * c, h, w),
            mean,
            var,
            self.weight.repeat(s),
            self.bias.repeat(s),
            True,
            self.momentum,
            self.eps,
        )
        self.running_mean.copy_(mean.view(s, c).mean(0))
        self.running_var.copy_(var.view(s, c).mean(0))
        self.num_batches_tracked.add_(1)
        return y.view(n, c, h, w)


def projection_head(width: int, dim: int, mlp: bool) -> nn.Module:
    """h: D -> C. MoCo-v2: Linear(D, D) - ReLU - Linear(D, C), no batchnorm (paper A.1)."""
    if not mlp:
        return nn.Linear(width, dim)
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, dim))


def _full(x: Tensor) -> Tensor:
    """Embeddings leave autocast in fp32 (or a wider dtype): the loss runs in full precision."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class MoCo(nn.Module):
    def __init__(self, cfg: MoCoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        norm = partial(SplitBatchNorm, num_splits=cfg.split_bn) if cfg.split_bn > 1 else None
        self.backbone = build_backbone(cfg.arch, norm)  # g
        self.head = projection_head(self.backbone.out_dim, cfg.dim, cfg.mlp)  # h
        self.momentum_backbone = copy.deepcopy(self.backbone)  # g', initialised as g
        self.momentum_head = copy.deepcopy(self.head)  # h'
        for p in self.momentum_parameters():
            p.requires_grad = False  # f' is updated by momentum only, never by SGD
        queue = F.normalize(torch.randn(cfg.queue_size, cfg.dim), dim=1)
        self.register_buffer("queue", queue)  # Q: K x C, L2-normalised encoded anchors
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def query_parameters(self) -> list[nn.Parameter]:
        """theta_f: the parameters SGD updates."""
        return [*self.backbone.parameters(), *self.head.parameters()]

    def momentum_parameters(self) -> list[nn.Parameter]:
        """theta_f'."""
        return [*self.momentum_backbone.parameters(), *self.momentum_head.parameters()]

    def forward(self, anchor: Tensor, positives: Tensor | list[Tensor]) -> Tensor:
        """anchor x: N x 3 x H x W; positives X+: one N x 3 x H' x W' tensor, or a list of them
        (multi-crop: any sizes). Returns the InfoNCE loss, averaged over the positives."""
        positives = [positives] if isinstance(positives, Tensor) else list(positives)
        with torch.no_grad():
            self._momentum_update()
            k = self._encode_anchor(anchor)  # N x C
        # Extension point (kNN-MoCo): also return g'(x) and keep a second queue Q_g aligned with Q.
        losses = [self.contrastive_loss(self._encode(x), k) for x in positives]
        self._enqueue(k)  # only anchors enter Q; after the loss, as in Algorithm 1
        return torch.stack(losses).mean()

    def _encode(self, x: Tensor) -> Tensor:
        """q = f(x+) = h(g(x+)), L2-normalised, at least fp32: N x C."""
        return F.normalize(_full(self.head(self.backbone(x))), dim=1)

    def _encode_anchor(self, x: Tensor) -> Tensor:
        """k = f'(x), L2-normalised: N x C; shuffled before f', unshuffled after (shuffling BN)."""
        shuffle = torch.randperm(len(x)).to(x.device) if self.cfg.split_bn > 1 else None
        x = x if shuffle is None else x[shuffle]
        k = F.normalize(_full(self.momentum_head(self.momentum_backbone(x))), dim=1)
        return k if shuffle is None else k[torch.argsort(shuffle)]  # k[i] encodes anchor i

    def contrastive_loss(self, q: Tensor, k: Tensor) -> Tensor:
        """Eq. (1) of MoCo: cross-entropy of [l_pos, l_neg] / tau with the positive at index 0."""
        with torch.autocast(q.device.type, enabled=False):
            l_pos = (q * k).sum(1, keepdim=True)  # l_pos: N x 1
            l_neg = q @ self.queue.clone().T  # l_neg: N x K
            logits = torch.cat([l_pos, l_neg], 1) / self.cfg.tau  # N x (1 + K)
            labels = torch.zeros(len(q), dtype=torch.long, device=q.device)
            return F.cross_entropy(logits, labels)

    @torch.no_grad()
    def _momentum_update(self) -> None:
        """theta_f' <- m theta_f' + (1 - m) theta_f (parameters; f' keeps its own BN statistics)."""
        torch._foreach_lerp_(
            self.momentum_parameters(), self.query_parameters(), 1.0 - self.cfg.momentum
        )

    @torch.no_grad()
    def _enqueue(self, k: Tensor) -> None:
        """Replace the oldest N keys of Q by k (a ring buffer): Q[ptr : ptr + N] = k."""
        n, size = len(k), self.cfg.queue_size
        assert size % n == 0, f"queue size K={size} must be a multiple of the batch size N={n}"
        ptr = int(self.queue_ptr)
        self.queue[ptr : ptr + n] = k.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + n) % size)
