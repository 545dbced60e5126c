"""LiveTapConv2d: the kernel cropped to the taps that read real pixels computes what nn.Conv2d computes."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from pretrain.backbones import build_backbone
from pretrain.convs import LiveTapConv2d, gemm_weight_grad, live_tap_convs, live_taps

CASES = [  # (input side, kernel, stride, padding, dilation)
    (1, 3, 1, 1, 1),  # ResNet layer4 on 32 px crops: the centre tap only
    (2, 3, 2, 1, 1),  # layer4's strided first conv, 2 x 2 -> 1 x 1: taps 1..2, no padding
    (3, 3, 1, 6, 6),  # the FCN head (dilation 6) on a 3 x 3 map: the centre tap only
    (3, 3, 1, 2, 2),  # layer4 dilated by 2 on a 3 x 3 map: every tap is live
    (5, 3, 1, 4, 4),  # taps at -4 / +4 read pixels 0..0 / 4..4 of a 5-long map: every tap is live
    (1, 7, 2, 3, 1),  # the stem on a 1-pixel image: tap 3 only
    (3, 5, 1, 1, 1),  # a 5-wide kernel, padding 1, on 3 pixels: taps 1..3
]


@pytest.mark.parametrize("side,k,s,p,d", CASES)
def test_live_tap_conv_equals_conv2d_outputs_and_gradients(side: int, k: int, s: int, p: int, d: int) -> None:
    torch.manual_seed(0)
    ref = nn.Conv2d(4, 5, k, stride=s, padding=p, dilation=d, bias=True).double()
    live = live_tap_convs(nn.Sequential(copy.deepcopy(ref)))[0]
    assert type(live) is LiveTapConv2d
    x = torch.randn(3, 4, side, side + 1, dtype=torch.float64)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ref(a), live(b)
    g = torch.randn_like(ya)
    ya.backward(g), yb.backward(g)
    torch.testing.assert_close(yb, ya, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(live.weight.grad, ref.weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(live.bias.grad, ref.bias.grad, rtol=1e-12, atol=1e-12)


def test_live_taps_crops_where_only_padding_is_read() -> None:
    assert live_taps(1, 3, 1, 1, 1) == (1, 1, 0)  # centre only, no padding left
    assert live_taps(2, 3, 2, 1, 1) == (1, 2, 0)
    assert live_taps(3, 3, 1, 6, 6) == (1, 1, 0)
    assert live_taps(3, 3, 1, 2, 2) is None  # nothing to crop
    assert live_taps(8, 3, 1, 1, 1) is None
    assert live_taps(3, 5, 1, 1, 1) == (1, 3, 0)
    assert live_taps(4, 3, 2, 1, 1) is None  # stride 2: every tap serves some output
    # the cropped convolution really is smaller: a 1 x 1 map reads one tap of the 3 x 3 kernel
    conv = LiveTapConv2d(2, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 1, 1] = 1.0  # only the centre: the output is the input summed over channels
    x = torch.randn(1, 2, 1, 1)
    torch.testing.assert_close(conv(x), x.sum(1, keepdim=True).expand(1, 2, 1, 1))


def test_backbones_use_live_tap_convs_with_the_state_dict_of_torchvision() -> None:
    net = build_backbone("resnet18")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert {type(m) for m in convs if m.kernel_size != (1, 1)} == {LiveTapConv2d}
    assert {type(m) for m in convs if m.kernel_size == (1, 1)} == {nn.Conv2d}
    ref = torchvision.models.resnet18(weights=None)
    ref.fc = nn.Identity()
    ref.load_state_dict(net.state_dict())  # same keys and shapes
    x = torch.randn(2, 3, 32, 32)  # layer4 at 1 x 1: the centre taps
    net.eval(), ref.eval()
    torch.testing.assert_close(net(x), ref(x), rtol=1e-5, atol=1e-5)


def test_swap_keeps_the_parameter_tensors() -> None:
    conv = nn.Conv2d(3, 3, 3, padding=1)
    weight = conv.weight
    opt = torch.optim.SGD(conv.parameters(), lr=0.1)
    live_tap_convs(nn.Sequential(conv))
    assert type(conv) is LiveTapConv2d and conv.weight is weight
    before = weight.detach().clone()
    conv(torch.randn(1, 3, 1, 1)).sum().backward()
    opt.step()  # the optimizer built before the swap still owns the weights
    assert weight.grad is not None and not torch.equal(weight, before)
    assert torch.equal(weight.grad[:, :, 0], torch.zeros(3, 3, 3))  # a dead tap: zero gradient


def test_dilated_small_maps_take_the_gemm_weight_gradient_and_match_conv2d() -> None:
    """Where a dilated kernel's reach covers the map, the weight gradient is one GEMM (DilatedSmallMapConv):
    float64 outputs and gradients equal nn.Conv2d's, with and without bias, input gradient or not, stride 2."""
    torch.manual_seed(0)
    for side, s, p, d, bias, input_grad in [(3, 1, 2, 2, True, True), (4, 1, 2, 2, False, False), (5, 2, 2, 2, True, True),
                                             (3, 1, 1, 1, True, True)]:  # fmt: skip
        ref = nn.Conv2d(4, 6, 3, stride=s, padding=p, dilation=d, bias=bias).double()
        live = live_tap_convs(nn.Sequential(copy.deepcopy(ref)))[0]
        x = torch.randn(2, 4, side, side, dtype=torch.float64)
        assert gemm_weight_grad(x, live.weight, live.dilation, 1) == (d > 1)
        a, b = x.clone().requires_grad_(input_grad), x.clone().requires_grad_(input_grad)
        ya, yb = ref(a), live(b)
        assert (yb.grad_fn.name() == "DilatedSmallMapConvBackward") == (d > 1)
        g = torch.randn_like(ya)
        ya.backward(g), yb.backward(g)
        torch.testing.assert_close(yb, ya, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(live.weight.grad, ref.weight.grad, rtol=1e-12, atol=1e-12)
        if bias:
            torch.testing.assert_close(live.bias.grad, ref.bias.grad, rtol=1e-12, atol=1e-12)
        if input_grad:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-12, atol=1e-12)


def test_gemm_weight_gradient_only_where_it_is_faster() -> None:
    """oneDNN keeps larger maps (6 x 6 at dilation 2: it is faster there), frozen weights, autocast, groups."""
    w = nn.Parameter(torch.randn(8, 8, 3, 3))
    assert gemm_weight_grad(torch.randn(2, 8, 5, 5), w, (2, 2), 1)
    assert not gemm_weight_grad(torch.randn(2, 8, 6, 6), w, (2, 2), 1)
    assert gemm_weight_grad(torch.randn(2, 8, 9, 9), w, (4, 4), 1)
    assert not gemm_weight_grad(torch.randn(2, 8, 5, 5), w, (2, 2), 2)
    assert not gemm_weight_grad(torch.randn(2, 8, 5, 5), w.detach(), (2, 2), 1)
    with torch.no_grad():
        assert not gemm_weight_grad(torch.randn(2, 8, 5, 5), w, (2, 2), 1)
    with torch.autocast("cpu", torch.bfloat16):
        assert not gemm_weight_grad(torch.randn(2, 8, 5, 5), w, (2, 2), 1)
    assert not gemm_weight_grad(torch.randn(2, 8, 5, 5), w[:, :, 1:2, 1:2], (2, 2), 1)  # one tap: no spread
