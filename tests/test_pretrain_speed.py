"""Speed levers of the pretraining step compute what the plain code computes: split BN's one reshaped
batch_norm call (forward and backward), fused SGD, crops read from the images in place, the
channels_last stem max pool."""

from __future__ import annotations

import torch
from torch import nn

from pretrain.augment import BatchAugment, crop_resize, sample_view_boxes
from pretrain.config import AugConfig, MoCoConfig, PretrainConfig
from pretrain.moco import MaxPool2dNHWC, MoCo, SplitBatchNorm
from pretrain.train import _build


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
