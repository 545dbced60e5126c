"""The paper's MoCo variants: kNN-MoCo against Algorithm 2, multi-crop isolation, crop constraints,
config validation, two processes against one, exact resume of a multi-crop + NN + A+ run."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pretrain.augment import box_iou, crop_iou_samples, inside_fraction, sample_view_boxes
from pretrain.config import AugConfig, MoCoConfig, PretrainConfig
from pretrain.methods import VARIANTS, variant
from pretrain.moco import MoCo
from pretrain.train import pretrain

N, C, K, SMALL = 4, 8, 12, 2  # batch, embedding dim, queue size (wraps every 3 steps), small crops


def knn_moco(**kw) -> MoCo:
    torch.manual_seed(0)
    cfg = {"arch": "resnet18", "dim": C, "queue_size": K, "momentum": 0.9, "split_bn": 0}
    cfg.update({"knn_lambda": 0.4, "knn_k": 3, **kw})
    return MoCo(MoCoConfig(**cfg))


def views(gen: torch.Generator, n: int = N) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """anchor 32 px, positive 32 px, SMALL crops at 16 px (crop-major rows), float64."""
    anchor, positive = torch.randn(2, n, 3, 32, 32, generator=gen, dtype=torch.float64)
    small = torch.randn(SMALL * n, 3, 16, 16, generator=gen, dtype=torch.float64)
    return anchor, [positive, small]


class Algorithm2:
    """The paper's Algorithm 2 (kNN-MoCo), line by line; queues C x K, oldest first."""

    def __init__(self, model: MoCo, enqueue_first: bool) -> None:
        self.g, self.h = copy.deepcopy(model.backbone), copy.deepcopy(model.head)
        self.g_m = copy.deepcopy(model.momentum_backbone)
        self.h_m = copy.deepcopy(model.momentum_head)
        self.queue, self.queue_g = model.queue.T.clone(), model.queue_g.T.clone()
        cfg = model.cfg
        self.m, self.t, self.k, self.lam = cfg.momentum, cfg.tau, cfg.knn_k, cfg.knn_lambda
        self.enqueue_first = enqueue_first
        params = [*self.g.parameters(), *self.h.parameters()]
        self.opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)

    def step(self, anchors, positives, positives_small, use_nn: bool) -> float:
        B = len(anchors)
        with torch.no_grad():  # momentum update (before the keys, as official builder.py)
            for net_m, net in [(self.g_m, self.g), (self.h_m, self.h)]:
                for pm, p in zip(net_m.parameters(), net.parameters()):
                    pm.copy_(self.m * pm + (1 - self.m) * p)
            anchors_g = self.g_m(anchors)
            anchors = F.normalize(self.h_m(anchors_g), dim=1)
            anchors_g = F.normalize(anchors_g, dim=1)  # cosine similarity: unit rows
        if self.enqueue_first:  # appendix B: update the memory bank before the loss
            self._enqueue(anchors, anchors_g)
        positives_g = torch.cat([self.g(positives), self.g(positives_small)], dim=0)  # L B x C_g
        positives = F.normalize(self.h(positives_g), dim=1)  # L B x C, view-major
        L = len(positives) // B
        loss_inst, loss_nn = 0.0, 0.0
        for v in range(L):  # every positive view ...
            for i in range(B):  # ... of every image, against its anchor i
                q = positives[v * B + i]
                l_pos = q @ anchors[i]
                l_neg = q @ self.queue  # K
                logits = torch.cat([l_pos.view(1), l_neg]) / self.t
                loss_inst = loss_inst - F.log_softmax(logits, 0)[0]
                sim = F.normalize(positives_g[v * B + i].detach(), dim=0) @ self.queue_g
                for j in sim.topk(self.k).indices:  # Eq. 2: each neighbour against the queue
                    loss_nn = loss_nn - (l_neg[j] / self.t - torch.logsumexp(l_neg / self.t, 0))
        loss = loss_inst / (L * B)
        if use_nn:
            loss = loss + self.lam * loss_nn / (L * B * self.k)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        if not self.enqueue_first:
            self._enqueue(anchors, anchors_g)
        return loss.item()

    def _enqueue(self, anchors, anchors_g) -> None:
        self.queue = torch.cat([self.queue, anchors.T], 1)[:, len(anchors) :]
        self.queue_g = torch.cat([self.queue_g, anchors_g.T], 1)[:, len(anchors) :]


@pytest.mark.parametrize("enqueue_first", [False, True])
def test_knn_moco_equals_algorithm_2_with_warmup_and_queue_wrap(enqueue_first: bool) -> None:
    model = knn_moco(knn_enqueue_first=enqueue_first).double()
    ref = Algorithm2(model, enqueue_first)
    opt = torch.optim.SGD(model.query_parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    for step, use_nn in enumerate([False, True, True, True]):  # warm-up, then loss_nn; wraps
        anchor, (positive, small) = views(gen)
        loss = model(anchor, [positive, small], knn=use_nn)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert loss.item() == pytest.approx(ref.step(anchor, positive, small, use_nn), abs=1e-9)
        ptr = int(model.queue_ptr)
        for mine, theirs in [(model.queue, ref.queue), (model.queue_g, ref.queue_g)]:
            torch.testing.assert_close(torch.roll(mine, -ptr, 0).T, theirs, atol=1e-9, rtol=0)
    for mine, theirs in [(model.backbone, ref.g), (model.momentum_head, ref.h_m)]:
        for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()):
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


def test_small_crops_never_reach_the_momentum_encoder_or_the_queue() -> None:
    model = knn_moco()
    seen: list[tuple[int, ...]] = []
    model.momentum_backbone.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    gen = torch.Generator().manual_seed(2)
    anchor, (positive, small) = (t.float() for t in views(gen)[:1]), views(gen)[1]
    anchor = next(anchor)
    positive, small = positive.float(), small.float()
    twin = copy.deepcopy(model)
    model(anchor, [positive, small]).backward()
    assert seen == [(N, 3, 32, 32)]  # f' saw the anchors once, never a small crop
    with torch.no_grad():  # the queue's new rows are exactly the encoded anchors
        twin._momentum_update()
        g = twin.momentum_backbone(anchor)
        k = F.normalize(twin.momentum_head(g), dim=1)
    torch.testing.assert_close(model.queue[:N], k)
    torch.testing.assert_close(model.queue_g[:N], F.normalize(g, dim=1))
    torch.testing.assert_close(model.queue[N:], twin.queue[N:])  # the rest untouched
    assert int(model.queue_ptr) == N
    assert small.shape[0] == SMALL * N  # ... although 3 N positives were encoded by f


def test_lambda_zero_is_multi_crop_and_neighbours_come_from_backbone_features() -> None:
    gen = torch.Generator().manual_seed(3)
    anchor, positives = views(gen)
    anchor, positives = anchor.float(), [p.float() for p in positives]
    plain = knn_moco(knn_lambda=0.0)  # multi-crop MoCo: no Q_g at all
    assert not hasattr(plain, "queue_g")
    losses = {}
    for lam in (0.4, 0.8):
        model = knn_moco(knn_lambda=lam)
        captured: list[torch.Tensor] = []
        model.backbone.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
        queue, queue_g = model.queue.clone(), model.queue_g.clone()  # before this step's enqueue
        losses[lam] = model(anchor, positives).item()
        if lam == 0.4:  # mine the neighbours by hand from g(x+) and from f(x+): they differ
            g_pos = F.normalize(torch.cat(captured), dim=1)
            q = F.normalize(model.head(torch.cat(captured)), dim=1)
            from_g = (g_pos @ queue_g.T).topk(3, dim=1).indices
            from_h = (q @ queue.T).topk(3, dim=1).indices
            assert not torch.equal(from_g, from_h)
            log_p = F.log_softmax(q @ queue.T / 0.2, dim=1)
            nn_g = -log_p.gather(1, from_g).mean().item()
            nn_h = -log_p.gather(1, from_h).mean().item()
    base = plain(anchor, positives).item()
    # loss(lambda) = loss_mc + lambda loss_nn, loss_nn mined on backbone features
    assert losses[0.4] - base == pytest.approx(0.4 * nn_g, abs=1e-4)
    assert losses[0.4] - base != pytest.approx(0.4 * nn_h, abs=1e-3)
    assert losses[0.8] - base == pytest.approx(0.8 * nn_g, abs=1e-4)
    # lambda 0 reproduces multi-crop exactly, knn off (warm-up) too
    assert knn_moco(knn_lambda=0.0)(anchor, positives).item() == base
    assert knn_moco()(anchor, positives, knn=False).item() == base


# ----------------------------------------------------------------------------- crops


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(24, 400),
    width=st.integers(24, 400),
    seed=st.integers(0, 2**31),
    lo=st.floats(0.02, 0.3),
)
def test_constrained_small_crops_overlap_their_anchor(height, width, seed, lo) -> None:
    cfg = AugConfig(n_small=4, small_scale=(lo, lo + 0.1), small_min_overlap=0.2)
    anchor, positive, small = sample_view_boxes(
        64, height, width, cfg, torch.Generator().manual_seed(seed)
    )
    assert small.shape == (64, 4, 4)
    fraction = inside_fraction(small, anchor.unsqueeze(1).expand_as(small))
    assert (fraction >= 0.2).all(), fraction.min()
    assert (small[..., :2] >= 0).all() and (small[..., 2] <= width).all()
    assert (small[..., 3] <= height).all()
    unconstrained = AugConfig(n_small=4, small_scale=(lo, lo + 0.1))
    a, _, s = sample_view_boxes(64, height, width, unconstrained, torch.Generator().manual_seed(1))
    if lo < 0.05:  # the constraint is not vacuous: free small crops do miss their anchor
        free = inside_fraction(s, a.unsqueeze(1).expand_as(s))
        assert (free < 0.2).any() or height * width < 2000


@settings(max_examples=20, deadline=None)
@given(threshold=st.sampled_from([0.2, 0.3, 0.5, 0.7]), seed=st.integers(0, 2**31))
def test_iou_limited_pairs_respect_the_threshold(threshold, seed) -> None:
    cfg = AugConfig(max_iou=threshold)
    anchor, positive, _ = sample_view_boxes(
        256, 224, 160, cfg, torch.Generator().manual_seed(seed)
    )
    assert (box_iou(anchor, positive) < threshold).all()


def test_crop_sampler_off_is_the_plain_sampler_and_fig1_helper() -> None:
    from pretrain.augment import sample_crop_boxes

    cfg = AugConfig()
    a, p, s = sample_view_boxes(32, 64, 48, cfg, torch.Generator().manual_seed(0))
    plain = sample_crop_boxes(64, 64, 48, cfg.crop_scale, cfg.crop_ratio, torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat([a, p]), plain) and s.shape == (32, 0, 4)
    moco, simclr = crop_iou_samples((0.2, 1.0), 4000, 0), crop_iou_samples((0.08, 1.0), 4000, 0)
    assert moco.shape == (4000,) and ((moco >= 0) & (moco <= 1)).all()
    assert (simclr == 0).float().mean() > (moco == 0).float().mean()  # Figure 1's point
    assert torch.equal(moco, crop_iou_samples((0.2, 1.0), 4000, 0))  # seeded


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "override, field",
    [
        ({"epochs": -1}, "epochs"),
        ({"aug.crop_scale": [0.0, 1.0]}, "aug.crop_scale"),
        ({"aug.small_scale": [0.05, 1.2]}, "aug.small_scale"),
        ({"aug.max_iou": 0.0}, "aug.max_iou"),
        ({"aug.max_iou": 1.5}, "aug.max_iou"),
        ({"moco.knn_lambda": 0.4, "moco.knn_k": 70000}, "moco.knn_k"),
        ({"moco.queue_size": 1000}, "moco.queue_size"),
        ({"moco.head": "mpl"}, "moco.head"),
        ({"aug.small_min_overlap": 2.0}, "aug.small_min_overlap"),
        ({"save_backbone_epochs": [500]}, "save_backbone_epochs"),
    ],
)
def test_invalid_values_name_the_field_and_range(override: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"{field}.*(must|valid)"):
        PretrainConfig.from_dict(override)


def test_named_variants_are_fields_of_the_one_method() -> None:
    for name in VARIANTS:
        PretrainConfig.from_dict(variant(name))  # every variant is a valid config
    cfg = PretrainConfig.from_dict({**variant("cc", "m_down", "nn"), "aug": {"n_small": 6}})
    assert (cfg.aug.n_small, cfg.aug.small_min_overlap, cfg.aug.size) == (6, 0.2, 160)
    assert (cfg.moco.momentum, cfg.moco.knn_lambda, cfg.aug.small_side) == (0.995, 0.4, 96)
    defaults = PretrainConfig()  # plain MoCo-v2 stays the default
    assert (defaults.aug.n_small, defaults.moco.knn_lambda, defaults.aug.max_iou) == (0, 0.0, None)
    with pytest.raises(ValueError, match="m_down"):
        variant("m-dwn")


# ----------------------------------------------------------------------------- processes


def _two_process_worker(rank: int, size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        losses, queues = _run_steps(rank, size)
        torch.save({"losses": losses, "queues": queues}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def step_and_mean_loss(loss: torch.Tensor, opt: torch.optim.Optimizer, size: int) -> float:
    """One SGD step on this rank's loss; returns the loss averaged over the `size` processes."""
    opt.zero_grad()
    loss.backward()
    opt.step()
    value = loss.detach().clone()
    if size > 1:
        dist.all_reduce(value)
    return value.item() / size


def _run_steps(rank: int, size: int) -> tuple[list[float], dict]:
    """3 steps of multi-crop kNN-MoCo on a global batch of 2 N; rank r holds rows r::size."""
    model = knn_moco(split_bn=2, knn_k=2, queue_size=16).double()  # split BN: 1 process only
    params = model.query_parameters()
    if size > 1:
        model = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(4)
    torch.manual_seed(5)  # the shuffle permutations
    losses = []
    for _ in range(3):
        anchor, (positive, small) = views(gen, 2 * N)
        small = small.view(SMALL, 2 * N, 3, 16, 16)[:, rank::size].flatten(0, 1)
        loss = model(anchor[rank::size], [positive[rank::size], small])
        losses.append(step_and_mean_loss(loss, opt, size))
    inner = model.module if size > 1 else model
    return losses, {
        "queue": inner.queue.clone(),
        "queue_g": inner.queue_g.clone(),
        "conv1": inner.backbone.conv1.weight.detach().clone(),
    }


def test_two_processes_equal_one_process_with_split_bn(tmp_path: Path) -> None:
    port = 29500 + os.getpid() % 1000
    mp.spawn(_two_process_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    losses, queues = _run_steps(0, 1)
    for rank in range(2):
        blob = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert blob["losses"] == pytest.approx(losses, abs=1e-9)
        for name, value in queues.items():
            torch.testing.assert_close(blob["queues"][name], value, atol=1e-9, rtol=1e-7)


# ----------------------------------------------------------------------------- resume


def tiny(**kw) -> PretrainConfig:
    base = {
        "moco": {"arch": "resnet18", "queue_size": 16, "split_bn": 2, "knn_lambda": 0.4},
        "aug": {"size": 16, "n_small": 2, "small_min_overlap": 0.2, "autoaugment_p": 0.5},
        "moco.knn_k": 4,
        "moco.knn_warmup": 1,
        "epochs": 2,
        "batch_size": 8,
        "lr": 0.05,
        "threads": 1,
    }
    merged = PretrainConfig.from_dict(base).to_dict()
    for key, value in kw.items():
        merged[key] = value
    return PretrainConfig.from_dict(merged)


DATA = torch.randint(0, 256, (2 * 8 + 3, 3, 24, 24), dtype=torch.uint8,
                     generator=torch.Generator().manual_seed(0))


def test_multi_crop_nn_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    full = pretrain(tiny(save_backbone_epochs=[1]), DATA, tmp_path / "full")
    assert len(full["loss_curve"]) == 2 and Path(full["backbones"][1]).exists()

    def stop_in_epoch_2(info: dict) -> None:
        if info["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny(), DATA, tmp_path / "cut", progress=stop_in_epoch_2)
    resumed = pretrain(tiny(), DATA, tmp_path / "cut")
    assert resumed["loss_curve"] == full["loss_curve"]
    final = torch.load(full["backbone"], weights_only=True)["state_dict"]
    again = torch.load(resumed["backbone"], weights_only=True)["state_dict"]
    assert all(torch.equal(final[k], again[k]) for k in final)
    first = torch.load(full["backbones"][1], weights_only=True)["state_dict"]
    assert not torch.equal(first["conv1.weight"], final["conv1.weight"])  # a real checkpoint
