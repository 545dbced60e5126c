"""Speed levers of the pretraining step compute what the plain code computes: split BN's one reshaped
batch_norm call (forward and backward), fused SGD, crops read from the images in place, the
channels_last stem max pool, the whole model in channels_last (memory_format)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from pretrain.augment import BatchAugment, crop_resize, sample_view_boxes
from pretrain.config import AugConfig, MoCoConfig, PretrainConfig
from pretrain.moco import MaxPool2dNHWC, MoCo, SplitBatchNorm, sub_batch_major
from pretrain.train import _build, native_bf16, pretrain, resolve_auto


def test_split_bn_equals_bn_per_sub_batch_forward_and_backward() -> None:
    """One batch_norm over N/S x S*C equals S BatchNorm2d calls on the sub-batches n mod S:
    outputs, input gradients and weight/bias gradients (affine weights shared)."""
    torch.manual_seed(0)
    s, c = 4, 6
    split = SplitBatchNorm(c, num_splits=s)
    nn.init.uniform_(split.weight, 0.5, 1.5), nn.init.uniform_(split.bias, -0.5, 0.5)
    plain = nn.BatchNorm2d(c)
    plain.load_state_dict(split.state_dict())
    x = (torch.randn(16, c, 5, 5) * 2 + 0.5).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    grad_out = torch.randn(16, c, 5, 5)
    y = split(x)
    y.backward(grad_out)
    y_ref = torch.empty_like(y)
    for r in range(s):  # sub-batch r: rows r, r + S, ...; fresh statistics per call
        y_ref[r::s] = plain(x_ref[r::s])
    y_ref.backward(grad_out)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(split.weight.grad, plain.weight.grad)
    torch.testing.assert_close(split.bias.grad, plain.bias.grad)
    whole = nn.BatchNorm2d(c)
    whole.load_state_dict(split.state_dict())
    assert not torch.allclose(y, whole(x.detach()), atol=1e-3)  # the split is not plain BN


def test_fused_sgd_is_the_plain_sgd_update() -> None:
    """The optimizer _build makes (fused on CPU) moves the weights exactly as for-loop SGD does."""
    cfg = PretrainConfig.from_dict(
        {"moco": {"arch": "resnet18", "queue_size": 16, "split_bn": 0}, "batch_size": 4,
         "weight_decay": 1e-4, "device": "cpu"}  # fmt: skip
    )
    model, optimizer = _build(cfg, torch.device("cpu"))
    assert optimizer.param_groups[0]["fused"]
    params = [p for p in model.parameters() if p.requires_grad][:6]  # a few tensors suffice
    ref = [p.detach().clone().requires_grad_() for p in params]
    plain = torch.optim.SGD(ref, lr=cfg.lr, momentum=cfg.sgd_momentum,
                            weight_decay=cfg.weight_decay, foreach=False)  # fmt: skip
    fused = torch.optim.SGD(params, **{k: v for k, v in optimizer.defaults.items()})
    start = params[0].detach().clone()
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(params, ref):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        fused.step(), plain.step()
    assert all(torch.equal(p, q) for p, q in zip(params, ref))
    assert not torch.equal(params[0], start)  # the weights moved


def test_crops_indexed_into_the_batch_equal_crops_of_copied_images() -> None:
    """crop_resize with an image index per box == the same boxes over repeated images."""
    images = torch.randint(0, 256, (3, 3, 24, 20), dtype=torch.uint8)
    cfg = AugConfig(size=8, n_small=2, small_size=4)
    a, p, small = sample_view_boxes(3, 24, 20, cfg, torch.Generator().manual_seed(1))
    boxes = torch.cat([a, p, small.transpose(0, 1).flatten(0, 1)])
    index = torch.arange(3).repeat(4)
    copied = torch.cat([images] * 4)
    torch.testing.assert_close(
        crop_resize(images, boxes, 8, index), crop_resize(copied, boxes, 8), rtol=0, atol=0
    )
    views = BatchAugment(cfg).views(images, torch.Generator().manual_seed(2))
    assert views[0].shape == (3, 3, 8, 8) and views[1][1].shape == (6, 3, 4, 4)


def test_channels_last_max_pool_equals_max_pool_values_and_gradients() -> None:
    """MaxPool2dNHWC == nn.MaxPool2d on bf16 inputs full of ties (after ReLU), forward and backward,
    and MoCo's backbones use it (the stem pool)."""
    torch.manual_seed(0)
    x = torch.randn(4, 8, 17, 17).relu().bfloat16()  # odd side: padding at the border
    ref, fast = nn.MaxPool2d(3, 2, 1), MaxPool2dNHWC(3, 2, 1)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(4, 8, 9, 9).bfloat16()
    ya, yb = ref(a), fast(b)
    ya.backward(grad), yb.backward(grad)
    assert torch.equal(ya, yb) and yb.is_contiguous()
    assert torch.equal(a.grad, b.grad) and b.grad.abs().sum() > 0
    model = MoCo(MoCoConfig(arch="resnet18", queue_size=16, split_bn=0))
    assert type(model.backbone.maxpool) is MaxPool2dNHWC
    assert type(model.momentum_backbone.maxpool) is MaxPool2dNHWC


def _nhwc_run(memory_format: str, precision: str, workdir: Path, epochs: int = 2) -> dict:
    # split_bn 2: sub-batches of 8. The default split 8 leaves sub-batches of 2, whose 1 x 1 layer4 maps BN
    # normalises to +-1, amplifying the layouts' rounding differences into the loss (measured: 1.4% in fp32)
    moco = {"arch": "resnet18", "queue_size": 32, "knn_warmup": 0, "split_bn": 2}
    cfg = PretrainConfig.from_dict(
        {"moco": moco, "aug": {"size": 32, "n_small": 2}, "epochs": epochs, "batch_size": 16, "lr": 0.03,
         "precision": precision, "device": "cpu", "memory_format": memory_format}
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (32, 3, 40, 40), dtype=torch.uint8, generator=g)
    return pretrain(cfg, data, workdir)


def test_channels_last_step_computes_the_same_loss_and_gradients() -> None:
    """One MoCo step (split BN, two positive sizes) with the model and the views in channels_last:
    the loss and every gradient of the default layout. float64: in float32 the two layouts' rounding
    (1e-7) flips the stem max pool's argmax where two values nearly tie, which reroutes a few
    gradients (measured: conv1's gradient 1e-6 or 1e-2 apart by seed, with the old reshaped split BN
    as with the chunked one); in float64 nothing flips."""
    torch.manual_seed(0)
    plain = MoCo(MoCoConfig(arch="resnet18", queue_size=32, split_bn=2)).double()
    nhwc = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 32, 32, dtype=torch.float64)
    views = [torch.randn(16, 3, 32, 32, dtype=torch.float64),
             torch.randn(32, 3, 20, 20, dtype=torch.float64)]  # fmt: skip

    def cl(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last)

    torch.manual_seed(1)
    a = plain(x, views)
    torch.manual_seed(1)
    b = nhwc(cl(x), [cl(v) for v in views])
    a.backward(), b.backward()
    torch.testing.assert_close(b, a, rtol=1e-12, atol=0)
    pairs = zip(plain.query_parameters(), nhwc.query_parameters())
    gaps = [float((q.grad - p.grad).norm() / p.grad.norm()) for p, q in pairs]
    assert max(gaps) < 1e-10, max(gaps)  # measured 2.5e-14
    for bn in ("bn1", "layer4"):  # the running statistics of every sub-batch, averaged alike
        mine, theirs = (m.backbone.get_submodule(bn).state_dict() for m in (nhwc, plain))
        torch.testing.assert_close(mine, theirs)
    assert nhwc.backbone.layer1[0].conv1.weight.grad.is_contiguous(memory_format=torch.channels_last)


def test_sub_batch_major_normalises_the_same_sub_batches_in_channels_last_chunks() -> None:
    """sub_batch_major: in channels_last each split BN normalises contiguous chunks of rows
    reordered so that chunk r holds rows r, r + S, ... (the NCHW module's sub-batch r), its maps
    stay channels_last, and the output rows come back in order; without the reorder, chunks are
    other sub-batches."""
    torch.manual_seed(0)
    s, c = 4, 6
    net = nn.Sequential(nn.Conv2d(3, c, 3, bias=False), SplitBatchNorm(c, num_splits=s), nn.ReLU())
    nn.init.uniform_(net[1].weight, 0.5, 1.5), nn.init.uniform_(net[1].bias, -0.5, 0.5)
    nhwc = copy.deepcopy(net).to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 7, 7, dtype=torch.float64) * 2 + 0.5
    net.double(), nhwc.double()
    seen = []
    nhwc[1].register_forward_hook(lambda m, i, o: seen.append((m.rows_sub_batch_major, o)) and None)
    y = sub_batch_major(net, x)  # NCHW: the module as it is, one reshaped batch_norm
    y_cl = sub_batch_major(nhwc, x.contiguous(memory_format=torch.channels_last))
    (flag, bn_out), = seen
    assert flag and bn_out.is_contiguous(memory_format=torch.channels_last)
    assert not nhwc[1].rows_sub_batch_major  # reset after the call
    torch.testing.assert_close(y_cl, y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(nhwc[1].running_var, net[1].running_var, rtol=1e-12, atol=0)
    nhwc[1].rows_sub_batch_major = True  # chunks of rows in their given order: other sub-batches
    assert not torch.allclose(nhwc(x.contiguous(memory_format=torch.channels_last)), y, atol=1e-3)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_channels_last_trains_the_same_model(precision: str, tmp_path: Path) -> None:
    """memory_format=channels_last through pretrain() (multi-crop, split BN, fused SGD, the stem pool): the loss
    curve of the default layout (4 steps carry the rounding on: measured 6e-4 in fp32), an NCHW backbone file,
    and the model really in NHWC."""
    plain = _nhwc_run("contiguous", precision, tmp_path / "a")
    nhwc = _nhwc_run("channels_last", precision, tmp_path / "b")
    tol = 2e-3 if precision == "fp32" else 2e-2
    curves = torch.tensor(nhwc["loss_history"]), torch.tensor(plain["loss_history"])
    torch.testing.assert_close(*curves, rtol=tol, atol=0)
    saved = torch.load(nhwc["backbone"], weights_only=True)["state_dict"]
    assert all(v.is_contiguous() for v in saved.values())  # NCHW whatever the layout it trained in
    cfg = PretrainConfig.from_dict(
        {"moco": {"arch": "resnet18", "queue_size": 16}, "batch_size": 16, "memory_format": "channels_last"}
    )
    model, _ = _build(cfg, torch.device("cpu"))
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.backbone.conv1.weight.is_contiguous()


def test_a_run_resumes_in_the_other_layout(tmp_path: Path) -> None:
    """memory_format is execution only: epoch 1 in NCHW, epoch 2 resumed in NHWC, equals two NCHW epochs."""
    _nhwc_run("contiguous", "fp32", tmp_path / "r", epochs=1)
    resumed = _nhwc_run("channels_last", "fp32", tmp_path / "r", epochs=2)
    straight = _nhwc_run("contiguous", "fp32", tmp_path / "s", epochs=2)
    torch.testing.assert_close(torch.tensor(resumed["loss_history"]), torch.tensor(straight["loss_history"]),
                               rtol=2e-3, atol=0)  # fmt: skip


def test_memory_format_must_be_known() -> None:
    with pytest.raises(ValueError, match="memory_format"):
        PretrainConfig.from_dict({"memory_format": "nhwc"})


def test_channels_last_pool_input_takes_the_native_kernel() -> None:
    """A bf16 input already in channels_last (memory_format) is pooled as it is: same values, NHWC out."""
    x = torch.randn(4, 8, 17, 17).relu().bfloat16().contiguous(memory_format=torch.channels_last)
    y = MaxPool2dNHWC(3, 2, 1)(x)
    assert torch.equal(y, nn.MaxPool2d(3, 2, 1)(x.contiguous()))
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_auto_precision_runs_bf16_where_native_and_checkpoints_keep_auto(tmp_path: Path) -> None:
    """precision / memory_format "auto": bf16 in channels_last where the device has native bf16 (this machine's
    CPU, when it has AVX512-BF16), fp32 NCHW elsewhere (a device with no bf16 kernels); the run's summary says
    what ran, its checkpoint keeps "auto" (a resume on another machine chooses again), and the loss curve is the
    explicit setting's."""
    cfg = PretrainConfig.from_dict({"precision": "auto", "memory_format": "auto"})
    here = resolve_auto(cfg, torch.device("cpu"))
    fast = native_bf16(torch.device("cpu"))
    assert (here.precision, here.memory_format) == (("bf16", "channels_last") if fast else ("fp32", "contiguous"))
    none = resolve_auto(cfg, torch.device("meta"))  # no bf16 kernels
    assert (none.precision, none.memory_format) == ("fp32", "contiguous")
    explicit = PretrainConfig.from_dict({"precision": "fp32", "memory_format": "auto"})
    assert resolve_auto(explicit, torch.device("cpu")).memory_format == "contiguous"
    auto = _nhwc_run("auto", "auto", tmp_path / "auto", epochs=1)
    same = _nhwc_run(here.memory_format, here.precision, tmp_path / "same", epochs=1)
    assert (auto["precision"], auto["memory_format"]) == (here.precision, here.memory_format)
    assert auto["loss_history"] == same["loss_history"]
    saved = torch.load(tmp_path / "auto" / "checkpoint.pt", weights_only=False)["config"]
    assert (saved["precision"], saved["memory_format"]) == ("auto", "auto")
