"""MoCo-v2 "aug+" on whole batches, with per-sample random parameters (torchvision semantics).

Official pipeline (facebookresearch/moco main_moco.py, per image with PIL):
RandomResizedCrop(224, (0.2, 1)) -> ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8 -> RandomGrayscale 0.2
-> GaussianBlur(sigma in [0.1, 2]) p=0.5 -> HorizontalFlip -> Normalize(ImageNet).
Here every step runs on an N x 3 x H x W tensor; each sample draws its own parameters from
`generator`. Two paths: in-memory uint8 tensors (BatchAugment.__call__ crops and colours), and
variable-size images (CropViews crops per image in DataLoader workers; BatchAugment.colour
finishes the batch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.ops import roi_align
from torchvision.transforms.functional import pil_to_tensor

from pretrain.config import AugConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- crops


def sample_crop_boxes(
    n: int,
    height: int | Tensor,
    width: int | Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    tries: int = 10,
) -> Tensor:
    """n boxes (x0, y0, x1, y1) in pixels: RandomResizedCrop.get_params vectorised over n, tries."""
    H = torch.as_tensor(height, dtype=torch.float64).expand(n).unsqueeze(1)  # n x 1
    W = torch.as_tensor(width, dtype=torch.float64).expand(n).unsqueeze(1)
    u = torch.rand(n, 2, tries, generator=generator, dtype=torch.float64)
    area = H * W * (scale[0] + (scale[1] - scale[0]) * u[:, 0])  # n x tries
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u[:, 1])
    w, h = torch.round(torch.sqrt(area * aspect)), torch.round(torch.sqrt(area / aspect))
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)  # n x tries
    first = ok.to(torch.uint8).argmax(1, keepdim=True)  # first successful try
    w, h = w.gather(1, first), h.gather(1, first)
    fw, fh = _fallback_size(H, W, ratio)
    found = ok.any(1, keepdim=True)
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    pos = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    y0 = torch.where(
        found, torch.floor(pos[:, :1] * (H - h + 1)), torch.div(H - h, 2, rounding_mode="floor")
    )
    x0 = torch.where(
        found, torch.floor(pos[:, 1:] * (W - w + 1)), torch.div(W - w, 2, rounding_mode="floor")
    )
    return torch.cat([x0, y0, x0 + w, y0 + h], 1).float()


def _fallback_size(H: Tensor, W: Tensor, ratio: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """torchvision's centre-crop fallback: the whole image clipped to the ratio bounds."""
    in_ratio = W / H
    w = torch.where(in_ratio > max(ratio), torch.round(H * max(ratio)), W)
    h = torch.where(in_ratio < min(ratio), torch.round(W / min(ratio)), H)
    return w, h


def crop_resize(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Crop box i of image i, resize bilinearly: N x 3 x size x size float (in the input's range).

    roi_align(aligned=True) averages ceil(box/size)^2 bilinear samples per output pixel, so
    downscaling is area-like (anti-aliased) as PIL's resize is.
    """
    index = torch.arange(len(images), device=images.device, dtype=torch.float32).unsqueeze(1)
    # rois: N x 5 (batch index, x0, y0, x1, y1)
    rois = torch.cat([index, boxes.to(images.device, torch.float32)], 1)
    return roi_align(images.float(), rois, (size, size), 1.0, -1, True)


class CropViews(torch.utils.data.Dataset):
    """Per-image path for variable-size images: item (i, seed) -> uint8 views x 3 x size x size.

    Runs in DataLoader workers; the boxes come from the same sampler as the batched path, seeded
    per item so that results do not depend on the number of workers.
    """

    def __init__(self, images: torch.utils.data.Dataset, cfg: AugConfig, views: int = 2) -> None:
        self.images, self.cfg, self.views = images, cfg, views

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> Tensor:
        index, seed = key
        image = self.images[index]
        image = image[0] if isinstance(image, tuple) else image
        generator = torch.Generator().manual_seed(int(seed))
        h, w = (image.height, image.width) if isinstance(image, Image.Image) else image.shape[-2:]
        boxes = sample_crop_boxes(
            self.views, h, w, self.cfg.crop_scale, self.cfg.crop_ratio, generator
        )
        if not isinstance(image, Image.Image):  # uint8 3 x H x W tensor
            crops = crop_resize(image.expand(self.views, -1, -1, -1), boxes, self.cfg.size)
            return crops.round().clamp(0, 255).to(torch.uint8)
        size = (self.cfg.size, self.cfg.size)
        crops = [image.resize(size, Image.BILINEAR, box=tuple(b)) for b in boxes.tolist()]
        return torch.stack([pil_to_tensor(c) for c in crops])


# ----------------------------------------------------------------------------- colour


def grayscale(x: Tensor) -> Tensor:
    """ITU-R 601-2 luma (torchvision rgb_to_grayscale): N x 3 x H x W -> N x 1 x H x W."""
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(a: Tensor, b: Tensor, ratio: Tensor) -> Tensor:
    """torchvision _blend: ratio * a + (1 - ratio) * b, clamped to [0, 1]; ratio: M."""
    ratio = ratio.view(-1, 1, 1, 1)
    return (ratio * a + (1.0 - ratio) * b).clamp(0.0, 1.0)


def adjust_brightness(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, torch.zeros_like(x), f)


def adjust_contrast(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, grayscale(x).mean((1, 2, 3), keepdim=True), f)


def adjust_saturation(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, grayscale(x), f)


def adjust_hue(x: Tensor, f: Tensor) -> Tensor:
    """Rotate the hue of sample i by f_i (in turns, |f| <= 0.5): RGB -> HSV, h += f, HSV -> RGB."""
    h, s, v = _rgb_to_hsv(x)  # each M x H x W
    h = (h + f.view(-1, 1, 1)) % 1.0
    # HSV -> RGB: channel n in (R, G, B) = (5, 3, 1) is v - v s clamp(min(k, 4 - k), 0, 1),
    # k = (n + 6h) mod 6
    k = (
        torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1) + 6.0 * h.unsqueeze(1)
    ) % 6.0
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def _rgb_to_hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r, g, b = x.unbind(1)
    v, lo = x.amax(1), x.amin(1)
    c = v - lo  # chroma
    c_safe = torch.where(c > 0, c, torch.ones_like(c))
    s = c / torch.where(v > 0, v, torch.ones_like(v))
    h = torch.where(
        v == r,
        (g - b) / c_safe,
        torch.where(v == g, 2.0 + (b - r) / c_safe, 4.0 + (r - g) / c_safe),
    )
    return (h / 6.0) % 1.0, s, v


COLOUR_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(
    x: Tensor, strength: tuple[float, ...], p: float, generator: torch.Generator
) -> Tensor:
    """RandomApply(ColorJitter(*strength), p) per sample, each with its own random op order."""
    n = len(x)
    apply = _coin(n, p, generator)
    u = torch.rand(n, 4, generator=generator)
    lo = torch.tensor([max(0.0, 1.0 - s) for s in strength[:3]] + [-strength[3]])
    hi = torch.tensor([1.0 + s for s in strength[:3]] + [strength[3]])
    factors = (lo + (hi - lo) * u).to(x.device)  # n x 4: brightness, contrast, saturation, hue
    # n x 4: a random permutation per sample (torchvision: randperm(4) per image)
    order = torch.rand(n, 4, generator=generator).argsort(1)
    for stage in range(4):
        for op in range(4):
            if strength[op] == 0:
                continue  # torchvision skips an op whose strength is 0
            idx = (apply & (order[:, stage] == op)).nonzero().squeeze(1).to(x.device)
            if len(idx):
                x[idx] = COLOUR_OPS[op](x[idx], factors[idx, op])
    return x


def gaussian_blur(x: Tensor, sigma: Tensor, radius: int) -> Tensor:
    """Separable Gaussian blur, sigma_i per sample (grouped conv), reflect padding: M x 3 x H x W"""
    m, c, height, width = x.shape
    radius = min(radius, height - 1, width - 1)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma.view(-1, 1).to(x) ** 2))  # M x (2r+1)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (M*3) x (2r+1)
    y = F.pad(x.reshape(1, m * c, height, width), (radius,) * 4, mode="reflect")
    y = F.conv2d(y, kernel.view(m * c, 1, 1, -1), groups=m * c)  # horizontal
    y = F.conv2d(y, kernel.view(m * c, 1, -1, 1), groups=m * c)  # vertical
    return y.view(m, c, height, width)


def blur_radius(size: int, sigma_max: float) -> int:
    """Half-width: the usual kernel of ~10% of the side (odd), widened to cover 3 sigma_max."""
    return max(int(0.1 * size) // 2, math.ceil(3 * sigma_max))


def _coin(n: int, p: float, generator: torch.Generator) -> Tensor:
    return torch.rand(n, generator=generator) < p  # n (CPU bool)


class BatchAugment:
    """aug+ for N x 3 x H x W uint8 images -> N x 3 x size x size float, ImageNet-normalised."""

    def __init__(self, cfg: AugConfig) -> None:
        self.cfg = cfg

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, _, height, width = images.shape
        boxes = sample_crop_boxes(
            n, height, width, self.cfg.crop_scale, self.cfg.crop_ratio, generator
        )
        crops = crop_resize(images, boxes, self.cfg.size)  # N x 3 x S x S, input range
        return self.colour(crops / 255.0 if images.dtype == torch.uint8 else crops, generator)

    def colour(self, crops: Tensor, generator: torch.Generator) -> Tensor:
        """Everything after the crop, on fixed-size crops (uint8, or float in [0, 1])."""
        cfg, device = self.cfg, crops.device
        x = crops.float() / 255.0 if crops.dtype == torch.uint8 else crops.float().clone()
        x = color_jitter(x, cfg.jitter, cfg.jitter_p, generator)
        gray = _coin(len(x), cfg.grayscale_p, generator).to(device).view(-1, 1, 1, 1)
        x = torch.where(gray, grayscale(x).expand_as(x), x)
        blur = _coin(len(x), cfg.blur_p, generator).nonzero().squeeze(1)
        sigma = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * torch.rand(
            len(blur), generator=generator
        )
        if len(blur):
            blur = blur.to(device)
            x[blur] = gaussian_blur(
                x[blur], sigma.to(device), blur_radius(cfg.size, cfg.blur_sigma[1])
            )
        flip = _coin(len(x), cfg.flip_p, generator).to(device).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        return (x - mean) / std
