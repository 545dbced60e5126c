"""MoCo-v2 (He et al. 2020, Algorithm 1; Chen et al. 2020 MLP head): one module, forward = loss.

Paper notation (Van Gansbeke et al. 2021): the momentum encoder f' = h' o g' encodes the anchor x;
the query encoder f = h o g encodes the positives X+ (the large positive and, multi-crop, the small
crops: positives only, never through f', never enqueued); the queue Q_h holds encoded anchors.
kNN-MoCo (Sec. 4.3, Algorithm 2) adds a second queue Q_g of f's backbone features g'(x), aligned
with Q_h, to mine each positive's k nearest neighbours (cosine on backbone features, before h).

Shuffling BN. Several processes (DistributedDataParallel): the anchors of all processes are
gathered, shuffled with one permutation, each process encodes its share, and the keys are gathered
and unshuffled (official MoCo `_batch_shuffle_ddp`). Convention: rank r holds rows r::W of the
global batch, and gathers interleave (row j*W + r = rank r's row j), so W processes compute exactly
what one process computes with split BN over W interleaved sub-batches (MoCo CIFAR demo).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.backbones import build_backbone
from pretrain.config import AugConfig, MoCoConfig, PretrainConfig


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed over `num_splits` sub-batches.

    Sample n goes to sub-batch n mod S; running statistics are the mean over sub-batches. NCHW:
    one batch_norm call over a zero-copy view N x C -> N/S x S*C. channels_last: that view is not
    one (it would copy every map), so `sub_batch_major` runs the module with its rows reordered
    sub-batch by sub-batch, and each sub-batch, a contiguous channels_last chunk, gets its own
    batch_norm call. In eval mode it is plain BN, and its state dict is plain BN's.
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits
        self.rows_sub_batch_major = False  # set only inside sub_batch_major()

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        n, c, h, w = x.shape
        s = self.num_splits
        assert n % s == 0, f"split BN: batch {n} is not a multiple of split_bn={s}"
        mean, var = self.running_mean.repeat(s), self.running_var.repeat(s)  # S*C, updated in place
        if self.rows_sub_batch_major:  # sub-batch r = rows r N/S ... (r + 1) N/S - 1
            stats = zip(x.chunk(s), mean.split(c), var.split(c))  # split: views, updated in place
            y = torch.cat(
                [F.batch_norm(chunk, m, v, self.weight, self.bias, True, self.momentum, self.eps)
                 for chunk, m, v in stats]
            )  # fmt: skip
        else:
            y = F.batch_norm(
                x.reshape(n // s, s * c, h, w),
                mean,
                var,
                self.weight.repeat(s),
                self.bias.repeat(s),
                True,
                self.momentum,
                self.eps,
            ).view(n, c, h, w)
        self.running_mean.copy_(mean.view(s, c).mean(0))
        self.running_var.copy_(var.view(s, c).mean(0))
        self.num_batches_tracked.add_(1)
        return y


def sub_batch_major(module: nn.Module, x: Tensor) -> Tensor:
    """module(x), each SplitBatchNorm normalising the same sub-batches (rows n mod S), in
    channels_last without copying maps: x's rows are reordered so that sub-batch r is the r-th
    contiguous chunk (a copy of the 3-channel input), the split BNs normalise chunks, and the
    output's rows are put back. Other inputs (NCHW, eval mode, no split BN) go straight to module.
    Measured (ResNet-18 MoCo-v2 step, 64 px, batch 128, bf16, 2 cores): channels_last 7% faster
    than NCHW this way, 6% slower with the reshaped view."""
    cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if not cl:  # the default layout: no walk over the modules on every call
        return module(x)
    norms = [m for m in module.modules() if isinstance(m, SplitBatchNorm) and m.training]
    splits = {m.num_splits for m in norms}
    if not splits:
        return module(x)
    if len(splits) > 1:
        raise ValueError(f"sub_batch_major: split BNs disagree on num_splits ({sorted(splits)})")
    (s,) = splits
    n = len(x)
    assert n % s == 0, f"split BN: batch {n} is not a multiple of split_bn={s}"
    order = torch.arange(n, device=x.device).view(n // s, s).T.reshape(-1)  # 0, S, 2S, ..., 1, ...
    for m in norms:
        m.rows_sub_batch_major = True
    try:
        y = module(x[order].contiguous(memory_format=torch.channels_last))
    finally:
        for m in norms:
            m.rows_sub_batch_major = False
    return y[torch.argsort(order)]


class _MaxPoolNHWC(torch.autograd.Function):
    """max_pool2d of an NCHW bf16 CPU tensor computed in channels_last (the vectorised kernel:
    ResNet's stem pool at 64 px, batch 128, forward and backward: 44 -> 14 ms on 2 cores); the
    gradient scatters through the same argmax indices in NCHW. Values and indices equal the NCHW
    kernel's (same window scan order, ties to the first maximum)."""

    @staticmethod
    def forward(ctx, x: Tensor, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple,
                ceil_mode: bool) -> Tensor:  # fmt: skip
        nhwc = x.contiguous(memory_format=torch.channels_last)
        y, index = torch.ops.aten.max_pool2d_with_indices(
            nhwc, kernel, stride, padding, dilation, ceil_mode
        )
        index = index.contiguous()
        ctx.save_for_backward(x, index)
        ctx.args = (kernel, stride, padding, dilation, ceil_mode)
        return y.contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:
        x, index = ctx.saved_tensors
        dx = torch.ops.aten.max_pool2d_with_indices_backward(grad.contiguous(), x, *ctx.args, index)
        return dx, None, None, None, None, None


class MaxPool2dNHWC(nn.MaxPool2d):
    """nn.MaxPool2d (same outputs and gradients) that pools bf16 (autocast) 4-D CPU inputs in
    channels_last."""

    def forward(self, x: Tensor) -> Tensor:
        if (x.device.type, x.dtype, x.dim()) != ("cpu", torch.bfloat16, 4) or self.return_indices:
            return super().forward(x)  # fp32 on CPU: channels_last is no faster (measured)
        if x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)  # already NHWC (memory_format: channels_last): the native kernel
        x = x.contiguous()
        pair = torch.nn.modules.utils._pair
        kernel, stride = pair(self.kernel_size), pair(self.stride or self.kernel_size)
        padding, dilation = pair(self.padding), pair(self.dilation)
        return _MaxPoolNHWC.apply(x, kernel, stride, padding, dilation, self.ceil_mode)


def fast_pools(module: nn.Module) -> nn.Module:
    """Swap every nn.MaxPool2d child of `module` for MaxPool2dNHWC (no parameters: state dicts are
    unchanged)."""
    for name, child in module.named_children():
        if type(child) is nn.MaxPool2d:
            pool = MaxPool2dNHWC(child.kernel_size, child.stride, child.padding, child.dilation,
                                 child.return_indices, child.ceil_mode)  # fmt: skip
            setattr(module, name, pool)
        else:
            fast_pools(child)
    return module


def projection_head(width: int, cfg: MoCoConfig) -> tuple[nn.Module, int]:
    """h: D -> C and C. "mlp" (MoCo-v2): Linear(D, W) - ReLU - ... - Linear(W, C), no batchnorm
    (paper A.1); "fixed_random" is the same MLP (frozen by MoCo); "linear": Linear(D, C);
    "none": identity, C = D."""
    if cfg.head == "none":
        return nn.Identity(), width
    if cfg.head == "linear":
        return nn.Linear(width, cfg.dim), cfg.dim
    hidden = cfg.head_width or width
    layers: list[nn.Module] = []
    for i in range(cfg.head_depth - 1):
        layers += [nn.Linear(width if i == 0 else hidden, hidden), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Linear(hidden, cfg.dim)), cfg.dim


def _full(x: Tensor) -> Tensor:
    """Embeddings leave autocast in fp32 (or a wider dtype): the loss runs in full precision."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def gather_interleaved(x: Tensor) -> Tensor:
    """All processes' n x ... -> (n W) x ..., row j*W + r = rank r's row j (no gradient)."""
    rank, size = world()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous())
    return torch.stack(parts, 1).flatten(0, 1)


class MoCo(nn.Module):
    def __init__(self, cfg: MoCoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.world_size = world()[1]  # > 1: shuffling BN across processes replaces split BN
        split = cfg.split_bn > 1 and self.world_size == 1
        norm = partial(SplitBatchNorm, num_splits=cfg.split_bn) if split else None
        self.backbone = fast_pools(build_backbone(cfg.arch, norm))  # g
        self.head, dim = projection_head(self.backbone.out_dim, cfg)  # h
        if cfg.head == "fixed_random":
            self.head.requires_grad_(False)  # Appalaraju et al. Table 1b: random init, frozen
        self.momentum_backbone = copy.deepcopy(self.backbone)  # g', initialised as g
        self.momentum_head = copy.deepcopy(self.head)  # h'
        for module in (self.momentum_backbone, self.momentum_head):
            module.requires_grad_(False)  # f' is updated by momentum only, never by SGD
        queue = F.normalize(torch.randn(cfg.queue_size, dim), dim=1)
        self.register_buffer("queue", queue)  # Q_h: K x C, L2-normalised encoded anchors
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        if cfg.knn_lambda > 0:  # Q_g: K x D, L2-normalised g'(x), row i aligned with Q_h row i
            queue_g = F.normalize(torch.randn(cfg.queue_size, self.backbone.out_dim), dim=1)
            self.register_buffer("queue_g", queue_g)

    def query_parameters(self) -> list[nn.Parameter]:
        """theta_f: the parameters SGD updates (a fixed random head is not among them)."""
        head = [] if self.cfg.head == "fixed_random" else [*self.head.parameters()]
        return [*self.backbone.parameters(), *head]

    def momentum_parameters(self) -> list[nn.Parameter]:
        """theta_f', aligned with query_parameters()."""
        head = [] if self.cfg.head == "fixed_random" else [*self.momentum_head.parameters()]
        return [*self.momentum_backbone.parameters(), *head]

    def forward(self, anchor: Tensor, positives: Tensor | list[Tensor], knn: bool = True) -> Tensor:
        """anchor x: N x 3 x H x W; positives X+: a (L N) x 3 x H' x W' tensor or a list of them
        (multi-crop: any sizes), row i of each tensor a view of anchor i mod N. Returns the loss
        averaged over all positives: InfoNCE, plus knn_lambda * Eq. (2) when `knn` (warm-up over)
        and knn_lambda > 0."""
        positives = [positives] if isinstance(positives, Tensor) else list(positives)
        n, cfg = len(anchor), self.cfg
        with torch.no_grad():
            self._momentum_update()
            k, k_g, keys, keys_g = self._encode_anchor(anchor)  # N x C, N x D; all processes'
        if cfg.knn_lambda > 0 and cfg.knn_enqueue_first:
            self._enqueue(keys, keys_g)  # appendix B: the memory bank first, then the loss
        assert all(len(x) % n == 0 for x in positives), "positives: rows must be a multiple of N"
        features = torch.cat([_full(sub_batch_major(self.backbone, x)) for x in positives])  # g(X+)
        q = F.normalize(_full(self.head(features)), dim=1)  # f(X+): (L N) x C
        k = k.repeat(len(q) // n, 1)  # the anchor key of every positive row: (L N) x C
        use_knn = knn and cfg.knn_lambda > 0
        loss = self.contrastive_loss(q, k, features if use_knn else None)
        if not (cfg.knn_lambda > 0 and cfg.knn_enqueue_first):
            self._enqueue(keys, keys_g)  # only anchors enter Q; after the loss, as in Algorithm 1
        return loss

    def _encode(self, x: Tensor) -> Tensor:
        """q = f(x+) = h(g(x+)), L2-normalised, at least fp32: N x C."""
        return F.normalize(_full(self.head(sub_batch_major(self.backbone, x))), dim=1)

    def _encode_anchor(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """k = f'(x) (N x C) and g'(x) (N x D), both L2-normalised; then the same for the global
        batch (the keys to enqueue). Shuffled before f' and unshuffled after (shuffling BN)."""
        rank, size = world()
        shuffle = size > 1 or self.cfg.split_bn > 1
        x_all = gather_interleaved(x)  # global batch
        perm = torch.randperm(len(x_all)).to(x.device) if shuffle else None
        if size > 1:
            dist.broadcast(perm, 0)  # one permutation for all processes
        mine = x_all if perm is None else x_all[perm][rank::size]
        g = _full(sub_batch_major(self.momentum_backbone, mine))
        k = F.normalize(_full(self.momentum_head(g)), dim=1)
        g = F.normalize(g, dim=1)
        both = gather_interleaved(torch.cat([k, g], 1))  # rows of x_all[perm]
        if perm is not None:
            both = both[torch.argsort(perm)]  # row i encodes anchor i of the global batch
        keys, keys_g = both.split([k.shape[1], g.shape[1]], 1)
        return keys[rank::size], keys_g[rank::size], keys, keys_g

    def contrastive_loss(self, q: Tensor, k: Tensor, features: Tensor | None = None) -> Tensor:
        """Eq. (1) of MoCo: cross-entropy of [l_pos, l_neg] / tau with the positive at index 0;
        with `features` g(x+), plus knn_lambda * the neighbour loss (Eq. 2 of the paper)."""
        with torch.autocast(q.device.type, enabled=False):
            l_pos = (q * k).sum(1, keepdim=True)  # l_pos: N x 1
            l_neg = q @ self.queue.clone().T  # l_neg: N x K
            logits = torch.cat([l_pos, l_neg], 1) / self.cfg.tau  # N x (1 + K)
            labels = torch.zeros(len(q), dtype=torch.long, device=q.device)
            loss = F.cross_entropy(logits, labels)
            if features is None:
                return loss
            return loss + self.cfg.knn_lambda * self.neighbour_loss(l_neg, features)

    def neighbour_loss(self, l_neg: Tensor, features: Tensor) -> Tensor:
        """Eq. (2): multi-label cross-entropy of l_neg / tau against the indices of the top k of
        cos(g(x+), Q_g), backbone features before the head; averaged over positives and k."""
        with torch.no_grad():
            sim = F.normalize(_full(features), dim=1) @ self.queue_g.clone().T.to(features)
            neighbours = sim.topk(self.cfg.knn_k, dim=1).indices  # N x k
        log_p = F.log_softmax(l_neg / self.cfg.tau, dim=1)  # over the K queue entries
        return -log_p.gather(1, neighbours).mean()

    @torch.no_grad()
    def _momentum_update(self) -> None:
        """theta_f' <- m theta_f' + (1 - m) theta_f (parameters; f' keeps its own BN statistics)."""
        torch._foreach_lerp_(
            self.momentum_parameters(), self.query_parameters(), 1.0 - self.cfg.momentum
        )

    @torch.no_grad()
    def _enqueue(self, k: Tensor, k_g: Tensor | None = None) -> None:
        """Replace the oldest N keys of Q by k (a ring buffer): Q[ptr : ptr + N] = k; the same rows
        of Q_g take k_g (kNN-MoCo). N is the global batch."""
        n, size = len(k), self.cfg.queue_size
        assert size % n == 0, f"queue size K={size} must be a multiple of the batch size N={n}"
        ptr = int(self.queue_ptr)
        self.queue[ptr : ptr + n] = k.to(self.queue.dtype)
        if hasattr(self, "queue_g") and k_g is not None:
            self.queue_g[ptr : ptr + n] = k_g.to(self.queue_g.dtype)
        self.queue_ptr.fill_((ptr + n) % size)


@dataclass
class MoCoV1Config(PretrainConfig):
    """MoCo v1 (He et al. 2020, Sec. 3.3 and 4.1; facebookresearch/moco `main_moco.py` without
    --mlp/--aug-plus/--cos): a linear 128-d head (no MLP), tau 0.07, K 65536, m 0.999, lr 0.03 at
    batch 256, weight decay 1e-4, 200 epochs; augmentation: crop scale (0.2, 1), grayscale p 0.2,
    colour jitter (0.4, 0.4, 0.4, 0.4) always applied, flip, no blur. Departures, named: lr x0.1
    at epochs 120 and 160 becomes the harness's cosine; jitter runs before grayscale (v1: after)."""

    moco: MoCoConfig = field(default_factory=lambda: MoCoConfig(head="linear", tau=0.07))
    aug: AugConfig = field(
        default_factory=lambda: AugConfig(jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0, blur_p=0.0)
    )
    lr: float = 0.03
    epochs: int = 200
