"""Batched aug+ against torchvision's per-image ops; per-sample randomness; crop-box properties."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from pretrain.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchAugment,
    CropViews,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_jitter,
    crop_resize,
    gaussian_blur,
    sample_crop_boxes,
)
from pretrain.config import AugConfig


def images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Random colours in [0, 1], with some grey and saturated pixels (hue edge cases)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    x[:, :, 0] = x[:, :1, 0]  # grey row: r = g = b
    x[:, 0, 1], x[:, 1, 1], x[:, 2, 1] = 1.0, 0.0, 0.0  # pure red row
    return x


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(
        1, 3, 1, 1
    )


# ----------------------------------------------------------------------------- crop boxes


def fallback_box(h: int, w: int, ratio: tuple[float, float]) -> list[float]:
    """torchvision RandomResizedCrop.get_params' centre crop, transcribed."""
    if w / h < min(ratio):
        cw, ch = w, round(w / min(ratio))
    elif w / h > max(ratio):
        cw, ch = round(h * max(ratio)), h
    else:
        cw, ch = w, h
    y, x = (h - ch) // 2, (w - cw) // 2
    return [x, y, x + cw, y + ch]


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(4, 400),
    w=st.integers(4, 400),
    lo=st.floats(0.02, 1.0),
    span=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**31),
)
def test_crop_boxes_inside_image_and_within_scale_and_ratio(
    h: int, w: int, lo: float, span: float, seed: int
) -> None:
    scale, ratio = (lo, min(1.0, lo + span)), (3 / 4, 4 / 3)
    boxes = sample_crop_boxes(200, h, w, scale, ratio, torch.Generator().manual_seed(seed))
    x0, y0, x1, y1 = boxes.unbind(1)
    bw, bh = x1 - x0, y1 - y0
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= w).all() and (y1 <= h).all()
    assert (bw >= 1).all() and (bh >= 1).all() and (boxes == boxes.round()).all()
    # each box is a sampled one (area, ratio in bounds up to rounding w, h) or the fallback
    area_ok = ((bw + 0.5) * (bh + 0.5) >= scale[0] * h * w) & (
        (bw - 0.5) * (bh - 0.5) <= scale[1] * h * w
    )
    ratio_ok = ((bw + 0.5) / (bh - 0.5) >= ratio[0]) & ((bw - 0.5) / (bh + 0.5) <= ratio[1])
    fallback = (boxes == torch.tensor(fallback_box(h, w, ratio), dtype=boxes.dtype)).all(1)
    assert (area_ok & ratio_ok | fallback).all()


def test_crop_boxes_fallback_and_distribution_match_torchvision() -> None:
    g = torch.Generator().manual_seed(0)
    # no try can fit: centre crop
    wide = sample_crop_boxes(5, 10, 1000, (0.9, 1.0), (3 / 4, 4 / 3), g)
    assert (wide == torch.tensor(fallback_box(10, 1000, (3 / 4, 4 / 3)), dtype=wide.dtype)).all()
    boxes = sample_crop_boxes(4000, 60, 80, (0.2, 1.0), (3 / 4, 4 / 3), g)
    mine = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 4800).mean()
    torch.manual_seed(0)
    image = torch.zeros(3, 60, 80)
    theirs = [RandomResizedCrop.get_params(image, [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)]
    assert mine.item() == pytest.approx(
        sum(h * w for _, _, h, w in theirs) / 4000 / 4800, abs=0.015
    )


def test_crop_boxes_differ_per_sample() -> None:
    boxes = sample_crop_boxes(
        2, 64, 64, (0.2, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0)
    )
    assert not torch.equal(boxes[0], boxes[1])
    out = BatchAugment(AugConfig(size=16))(
        torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8).expand(2, -1, -1, -1),
        torch.Generator().manual_seed(0),
    )
    assert out.shape == (2, 3, 16, 16) and not torch.allclose(out[0], out[1])


def test_crop_resize_identity_and_area_downscale() -> None:
    x = images(3, 8)
    full = torch.tensor([[0.0, 0.0, 8.0, 8.0]]).expand(3, -1)
    torch.testing.assert_close(crop_resize(x, full, 8), x)
    torch.testing.assert_close(crop_resize(x, full, 4), torch.nn.functional.avg_pool2d(x, 2))
    # a 4x4 window at the same size
    part = crop_resize(x, torch.tensor([[2.0, 4.0, 6.0, 8.0]]).expand(3, -1), 4)
    torch.testing.assert_close(part, x[:, :, 4:8, 2:6])


def test_crop_views_per_image_path_is_seeded_and_fixed_size() -> None:
    g = torch.Generator().manual_seed(0)
    pil = [
        Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
        for h, w in [(40, 60), (90, 30)]
    ]
    views = CropViews(pil, AugConfig(size=16))
    # item: (anchor, positive) and the multi-crop small crops (none by default)
    a, b, again = views[(0, 5)][0], views[(1, 6)][0], views[(0, 5)][0]
    assert views[(0, 5)][1].shape == (0, 3, 10, 10)
    assert a.shape == b.shape == (2, 3, 16, 16) and a.dtype == torch.uint8
    assert torch.equal(a, again) and not torch.equal(a[0], a[1])
    tensor_views = CropViews([TF.pil_to_tensor(p) for p in pil], AugConfig(size=16))[(0, 5)][0]
    assert (
        tensor_views.float() - a.float()
    ).abs().mean() < 12  # same boxes, PIL vs roi_align resampling


# ----------------------------------------------------------------------------- colour


@pytest.mark.parametrize(
    "mine, theirs, lo, hi",
    [
        (adjust_brightness, TF.adjust_brightness, 0.6, 1.4),
        (adjust_contrast, TF.adjust_contrast, 0.6, 1.4),
        (adjust_saturation, TF.adjust_saturation, 0.6, 1.4),
        (adjust_hue, TF.adjust_hue, -0.5, 0.5),
    ],
)
def test_colour_ops_equal_torchvision_per_image(mine, theirs, lo: float, hi: float) -> None:
    x = images(8)
    factors = torch.linspace(lo, hi, 8)
    expected = torch.stack([theirs(x[i], factors[i].item()) for i in range(8)])
    torch.testing.assert_close(mine(x, factors), expected, atol=2e-5, rtol=0)


def test_color_jitter_applies_torchvision_ops_in_each_samples_order() -> None:
    x, strength = images(16), (0.4, 0.4, 0.4, 0.1)
    out = color_jitter(x.clone(), strength, 0.8, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # replay the draws: apply, factors, order
    apply, u, order = (
        torch.rand(16, generator=g) < 0.8,
        torch.rand(16, 4, generator=g),
        torch.rand(16, 4, generator=g),
    )
    lo, hi = torch.tensor([0.6, 0.6, 0.6, -0.1]), torch.tensor([1.4, 1.4, 1.4, 0.1])
    factors, order = lo + (hi - lo) * u, order.argsort(1)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(16):
        y = x[i]
        for op in order[i].tolist() if apply[i] else []:
            y = ops[op](y, factors[i, op].item())
        torch.testing.assert_close(out[i], y, atol=2e-5, rtol=0)
    assert len({tuple(o) for o in order.tolist()}) > 1  # orders do differ between samples


def test_blur_equals_torchvision_per_sample_sigma() -> None:
    x, sigma = images(4, 20), torch.tensor([0.1, 0.7, 1.3, 2.0])
    expected = torch.stack(
        [TF.gaussian_blur(x[i], [13, 13], [s.item()] * 2) for i, s in enumerate(sigma)]
    )
    torch.testing.assert_close(gaussian_blur(x, sigma, 6), expected, atol=1e-5, rtol=0)


def only(**kw) -> AugConfig:
    """Whole-image 'crops' at the input size and every random op off except those given."""
    base = {
        "size": 8,
        "crop_scale": (1.0, 1.0),
        "crop_ratio": (1.0, 1.0),
        "jitter_p": 0.0,
        "grayscale_p": 0.0,
        "blur_p": 0.0,
        "flip_p": 0.0,
    }
    return AugConfig(**{**base, **kw})


def test_flip_and_grayscale_probabilities() -> None:
    x = (images(1, 8) * 255).round().to(torch.uint8).expand(2000, -1, -1, -1)
    plain = unnormalise(BatchAugment(only())(x[:1], torch.Generator()))
    flipped = unnormalise(BatchAugment(only(flip_p=0.5))(x, torch.Generator().manual_seed(0)))
    is_flip = (flipped - plain.flip(-1)).abs().amax((1, 2, 3)) < 1e-5
    assert (((flipped - plain).abs().amax((1, 2, 3)) < 1e-5) | is_flip).all()
    assert is_flip.float().mean().item() == pytest.approx(0.5, abs=0.04)
    grey = unnormalise(BatchAugment(only(grayscale_p=0.2))(x, torch.Generator().manual_seed(1)))
    is_grey = (grey - grey[:, :1]).abs().amax((1, 2, 3)) < 1e-5
    assert is_grey.float().mean().item() == pytest.approx(0.2, abs=0.03)


def test_defaults_are_moco_v2_aug_plus() -> None:
    cfg = AugConfig()
    assert (cfg.size, cfg.crop_scale, cfg.jitter, cfg.jitter_p) == (
        224,
        (0.2, 1.0),
        (0.4, 0.4, 0.4, 0.1),
        0.8,
    )
    assert (cfg.grayscale_p, cfg.blur_p, cfg.blur_sigma, cfg.flip_p) == (0.2, 0.5, (0.1, 2.0), 0.5)
    assert math.isclose(cfg.crop_ratio[0], 3 / 4) and math.isclose(cfg.crop_ratio[1], 4 / 3)
