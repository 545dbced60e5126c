"""MoCo equals a transcription of the MoCo paper's Algorithm 1; queue, momentum, split BN, grads."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pretrain.config import MoCoConfig
from pretrain.moco import MoCo, SplitBatchNorm

N, C, K = 4, 8, 12  # batch, embedding dim, queue size (K = 3 N: the queue wraps every 3 steps)


def small_moco(**kw) -> MoCo:
    torch.manual_seed(0)
    cfg = {
        "arch": "resnet18",
        "dim": C,
        "queue_size": K,
        "momentum": 0.9,
        "tau": 0.2,
        "split_bn": 0,
    }
    return MoCo(MoCoConfig(**{**cfg, **kw}))


class Algorithm1:
    """MoCo paper, Algorithm 1, line by line (f_q, f_k; queue: C x K, oldest key first)."""

    def __init__(self, model: MoCo) -> None:
        self.f_q = nn.Sequential(copy.deepcopy(model.backbone), copy.deepcopy(model.head))
        self.f_k = nn.Sequential(
            copy.deepcopy(model.momentum_backbone), copy.deepcopy(model.momentum_head)
        )
        self.queue = model.queue.T.clone()  # C x K
        self.m, self.t = model.cfg.momentum, model.cfg.tau
        self.opt = torch.optim.SGD(self.f_q.parameters(), lr=0.05, momentum=0.9)

    def step(self, x_q: torch.Tensor, x_k: torch.Tensor) -> float:
        # momentum update before the keys (official builder.py), the same as Algorithm 1's update
        # after the previous SGD step
        with torch.no_grad():
            for pk, pq in zip(self.f_k.parameters(), self.f_q.parameters()):
                pk.copy_(self.m * pk + (1 - self.m) * pq)
        q = F.normalize(self.f_q(x_q), dim=1)  # queries: NxC
        k = F.normalize(self.f_k(x_k), dim=1).detach()  # keys: NxC, no gradient to keys
        l_pos = torch.bmm(q.view(N, 1, C), k.view(N, C, 1)).view(N, 1)  # positive logits: Nx1
        l_neg = torch.mm(q.view(N, C), self.queue.view(C, K))  # negative logits: NxK
        logits = torch.cat([l_pos, l_neg], dim=1)  # Nx(1+K)
        loss = F.cross_entropy(logits / self.t, torch.zeros(N, dtype=torch.long))
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()  # SGD update: query network
        self.queue = torch.cat([self.queue, k.T], dim=1)[:, N:]  # enqueue k, dequeue the earliest N
        return loss.item()


def test_equals_algorithm_1_over_steps_with_queue_wrap() -> None:
    model = small_moco().double()  # float64: equality up to rounding, not up to float32 chaos
    ref = Algorithm1(model)
    opt = torch.optim.SGD(model.query_parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    for step in range(5):  # 5 N > K: the ring buffer wraps
        # anchor x (keys), positive x+ (queries)
        x_k, x_q = torch.randn(2, N, 3, 32, 32, generator=gen, dtype=torch.float64)
        loss = model(x_k, x_q)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert loss.item() == pytest.approx(
            ref.step(x_q, x_k), abs=1e-9
        ), f"loss differs at step {step}"
        ptr = int(model.queue_ptr)
        assert ptr == (step + 1) * N % K
        fifo = torch.roll(model.queue, -ptr, dims=0).T  # ring buffer read oldest-first: C x K
        torch.testing.assert_close(fifo, ref.queue, atol=1e-9, rtol=0)
    query = nn.Sequential(model.backbone, model.head)
    momentum = nn.Sequential(model.momentum_backbone, model.momentum_head)
    for mine, theirs in [(query, ref.f_q), (momentum, ref.f_k)]:
        for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()):
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)
    # the momentum encoder moved, and lags the query encoder
    w = [model.backbone.conv1.weight, model.momentum_backbone.conv1.weight]
    assert not torch.allclose(*w)


def test_enqueue_order_and_pointer_wrap() -> None:
    model = small_moco()
    keys = [F.normalize(torch.randn(N, C), dim=1) for _ in range(4)]
    for i, k in enumerate(keys):
        model._enqueue(k)
        assert int(model.queue_ptr) == (i + 1) * N % K
    # K = 3N: the 4th batch overwrote the 1st, the 2nd and 3rd are where they were put
    torch.testing.assert_close(model.queue, torch.cat([keys[3], keys[1], keys[2]]))


def test_queue_must_be_a_multiple_of_the_batch() -> None:
    model = small_moco(queue_size=10)
    with pytest.raises(AssertionError, match=r"K=10.*N=4"):
        model(torch.randn(N, 3, 32, 32), torch.randn(N, 3, 32, 32))


def test_anchors_get_no_gradient_and_momentum_encoder_is_not_trained() -> None:
    model = small_moco(split_bn=2)
    anchor = torch.randn(N, 3, 32, 32, requires_grad=True)
    positive = torch.randn(N, 3, 32, 32, requires_grad=True)
    model(anchor, positive).backward()
    assert anchor.grad is None
    assert positive.grad is not None and positive.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.momentum_parameters())
    trained = {id(p) for p in model.query_parameters()}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}
    assert trained.isdisjoint(id(p) for p in model.momentum_parameters())


def test_split_bn_is_bn_over_interleaved_sub_batches() -> None:
    torch.manual_seed(0)
    split, plain = SplitBatchNorm(5, num_splits=2), nn.BatchNorm2d(5)
    x = torch.randn(8, 5, 3, 3) * 3 + 1
    y = split(x)
    torch.testing.assert_close(y[0::2], plain(x[0::2]))
    stats_even = plain.running_mean.clone()
    plain.reset_running_stats()
    torch.testing.assert_close(y[1::2], plain(x[1::2]))
    torch.testing.assert_close(split.running_mean, (stats_even + plain.running_mean) / 2)
    split.eval(), plain.eval()
    plain.load_state_dict(split.state_dict())  # eval: plain BN with the same state
    torch.testing.assert_close(split(x), plain(x))


def test_anchors_are_shuffled_before_the_momentum_encoder_and_unshuffled_after() -> None:
    model = small_moco(split_bn=2)
    x = torch.randn(N, 3, 32, 32)
    torch.manual_seed(7)
    k = model._encode_anchor(x)[0]
    torch.manual_seed(7)
    perm = torch.randperm(N)
    f_k = nn.Sequential(model.momentum_backbone, model.momentum_head)
    mirror = F.normalize(f_k(x[perm]), dim=1)[torch.argsort(perm)]
    torch.testing.assert_close(k, mirror)
    # the same anchors without the shuffle: other BN statistics
    unshuffled = F.normalize(f_k(x), dim=1)
    assert not torch.allclose(k, unshuffled, atol=1e-4)


def test_multiple_positives_average_the_loss() -> None:
    model = small_moco()
    anchor, big, small = (
        torch.randn(N, 3, 32, 32),
        torch.randn(N, 3, 32, 32),
        torch.randn(N, 3, 24, 24),
    )
    twin = copy.deepcopy(model)
    loss = model(anchor, [big, small])
    k = twin._encode_anchor(anchor)[0]  # first step: the momentum update leaves f' = f
    expected = (
        twin.contrastive_loss(twin._encode(big), k) + twin.contrastive_loss(twin._encode(small), k)
    ) / 2
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert int(model.queue_ptr) == N  # only the anchors were enqueued
