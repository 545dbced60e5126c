"""MoCo-v2 "aug+" on whole batches, with per-sample random parameters (torchvision semantics).

Official pipeline (facebookresearch/moco main_moco.py, per image with PIL):
RandomResizedCrop(224, (0.2, 1)) -> ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8 -> RandomGrayscale 0.2
-> GaussianBlur(sigma in [0.1, 2]) p=0.5 -> HorizontalFlip -> Normalize(ImageNet).
Here every step runs on an N x 3 x H x W tensor; each sample draws its own parameters from
`generator`. Two paths: in-memory uint8 tensors (BatchAugment.__call__ crops and colours), and
variable-size images (CropViews crops per image in DataLoader workers; BatchAugment.finish
completes the batch).

The views of one image (paper Sec. 3.1, 4.1, 4.2) all come from `sample_view_boxes`: the anchor and
positive boxes (optionally with IoU below aug.max_iou) and the multi-crop small boxes (optionally
constrained to overlap the anchor). `crop_iou_samples` (Figure 1) draws from the same function.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2 as T
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


def box_area(b: Tensor) -> Tensor:
    return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)


def intersection(a: Tensor, b: Tensor) -> Tensor:
    """Area of box a_i intersected with box b_i: ... x 4 each -> ..."""
    lo, hi = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    return (hi - lo).clamp(min=0).prod(-1)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of box a_i and box b_i (pairwise, not all-pairs)."""
    inter = intersection(a, b)
    return inter / (box_area(a) + box_area(b) - inter)


def inside_fraction(small: Tensor, anchor: Tensor) -> Tensor:
    """Fraction of box small_i's area that lies inside box anchor_i (constrained multi-crop)."""
    return intersection(small, anchor) / box_area(small)


def sample_view_boxes(
    n: int, height: int | Tensor, width: int | Tensor, cfg: AugConfig, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """The crops of n images: anchor boxes n x 4, positive boxes n x 4, small boxes
    n x n_small x 4 (x0, y0, x1, y1 in pixels). With cfg.max_iou, IoU(anchor, positive) <
    max_iou; with cfg.small_min_overlap, each small box has that fraction of its area inside its
    anchor box. Per-image sizes: height/width may be n-vectors."""
    H, W = (torch.as_tensor(v).expand(n) for v in (height, width))
    pair = sample_crop_boxes(2 * n, H.repeat(2), W.repeat(2), cfg.crop_scale, cfg.crop_ratio, generator)
    anchor, positive = pair[:n], pair[n:]
    if cfg.max_iou is not None:
        anchor, positive = _limit_iou(anchor, positive, H, W, cfg, generator)
    m = cfg.n_small
    Hs, Ws, anchors = H.repeat_interleave(m), W.repeat_interleave(m), anchor.repeat_interleave(m, 0)
    small = sample_crop_boxes(n * m, Hs, Ws, cfg.small_scale, cfg.crop_ratio, generator)
    if cfg.small_min_overlap is not None and m:
        small = _constrain_small(small, anchors, Hs, Ws, cfg, generator)
    return anchor, positive, small.view(n, m, 4)


def _limit_iou(
    anchor: Tensor, positive: Tensor, H: Tensor, W: Tensor, cfg: AugConfig, g: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Rejection sampling of (anchor, positive) pairs with IoU < cfg.max_iou: a rejected pair is
    redrawn whole (an anchor covering the image admits no second crop below a low threshold),
    IOU_BLOCK candidates at a time, the first accepted one kept. After cfg.iou_tries candidates a
    pair keeps its lowest-IoU draw (the fallback)."""
    iou = box_iou(anchor, positive)
    for _ in range(math.ceil(cfg.iou_tries / IOU_BLOCK)):
        redo = (iou >= cfg.max_iou).nonzero().squeeze(1)
        if not len(redo):
            break
        m, b = len(redo), IOU_BLOCK
        hh, ww = H[redo].repeat_interleave(b).repeat(2), W[redo].repeat_interleave(b).repeat(2)
        pair = sample_crop_boxes(2 * m * b, hh, ww, cfg.crop_scale, cfg.crop_ratio, g)
        a, p = pair[: m * b].view(m, b, 4), pair[m * b :].view(m, b, 4)
        cand = box_iou(a, p)  # m x b
        ok = cand < cfg.max_iou
        # the first accepted candidate, else the lowest IoU (exact rejection sampling when found)
        pick = torch.where(ok.any(1), ok.to(torch.uint8).argmax(1), cand.argmin(1))
        rows = torch.arange(m)
        best, new_a, new_p = cand[rows, pick], a[rows, pick], p[rows, pick]
        better = best < iou[redo]
        take = redo[better]
        anchor[take], positive[take], iou[take] = new_a[better], new_p[better], best[better]
    return anchor, positive


IOU_BLOCK = 50  # candidates per rejected pair per round


def _constrain_small(
    small: Tensor, anchors: Tensor, H: Tensor, W: Tensor, cfg: AugConfig, g: torch.Generator
) -> Tensor:
    """Constrained multi-crop (paper appendix A.1): redraw a small box while less than
    cfg.small_min_overlap of its area lies inside its anchor box. After cfg.small_tries redraws
    the last draw is moved onto the anchor's centre (clamped into the image): for its size, the
    placement with the most overlap (with the paper's scales, at least 80%)."""
    for _ in range(cfg.small_tries):
        redo = (inside_fraction(small, anchors) < cfg.small_min_overlap).nonzero().squeeze(1)
        if not len(redo):
            return small
        small[redo] = sample_crop_boxes(
            len(redo), H[redo], W[redo], cfg.small_scale, cfg.crop_ratio, g
        )
    redo = (inside_fraction(small, anchors) < cfg.small_min_overlap).nonzero().squeeze(1)
    if len(redo):
        size = small[redo, 2:] - small[redo, :2]  # w, h
        centre = (anchors[redo, :2] + anchors[redo, 2:]) / 2
        limit = torch.stack([W[redo], H[redo]], 1).to(size) - size
        x0 = torch.minimum(torch.round(centre - size / 2).clamp(min=0), limit)
        small[redo] = torch.cat([x0, x0 + size], 1)
    return small


def crop_iou_samples(
    scale: tuple[float, float], n: int, seed: int, height: int = 256, width: int = 256
) -> Tensor:
    """Figure 1: IoU of n (anchor, positive) pairs drawn by the training crop sampler
    (`sample_view_boxes`, default aug+ ratio) at crop `scale`: MoCo (0.2, 1), SimCLR (0.08, 1)."""
    cfg = AugConfig(crop_scale=tuple(scale))
    generator = torch.Generator().manual_seed(seed)
    anchor, positive, _ = sample_view_boxes(n, height, width, cfg, generator)
    return box_iou(anchor, positive)


def _fallback_size(H: Tensor, W: Tensor, ratio: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """torchvision's centre-crop fallback: the whole image clipped to the ratio bounds."""
    in_ratio = W / H
    w = torch.where(in_ratio > max(ratio), torch.round(H * max(ratio)), W)
    h = torch.where(in_ratio < min(ratio), torch.round(W / min(ratio)), H)
    return w, h


def crop_resize(images: Tensor, boxes: Tensor, size: int, index: Tensor | None = None) -> Tensor:
    """Crop box i of image i (of image index[i] when given: M boxes over N images, no copies of
    the images), resize bilinearly: M x 3 x size x size float (in the input's range).

    roi_align(aligned=True) averages ceil(box/size)^2 bilinear samples per output pixel, so
    downscaling is area-like (anti-aliased) as PIL's resize is.
    """
    index = torch.arange(len(images)) if index is None else index
    index = index.to(images.device, torch.float32).unsqueeze(1)
    # rois: M x 5 (batch index, x0, y0, x1, y1)
    rois = torch.cat([index, boxes.to(images.device, torch.float32)], 1)
    return roi_align(images.float(), rois, (size, size), 1.0, -1, True)


class CropViews(torch.utils.data.Dataset):
    """Per-image path for variable-size images: item (i, seed) -> uint8 views, (anchor, positive)
    2 x 3 x size x size and the small crops n_small x 3 x s x s.

    Runs in DataLoader workers; the boxes come from the same sampler as the batched path
    (`sample_view_boxes`), seeded per item so that results do not depend on the number of workers.
    """

    def __init__(self, images: torch.utils.data.Dataset, cfg: AugConfig) -> None:
        self.images, self.cfg = images, cfg

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        index, seed = key
        image = self.images[index]
        image = image[0] if isinstance(image, tuple) else image
        generator = torch.Generator().manual_seed(int(seed))
        h, w = (image.height, image.width) if isinstance(image, Image.Image) else image.shape[-2:]
        anchor, positive, small = sample_view_boxes(1, h, w, self.cfg, generator)
        large = self._crop(image, torch.cat([anchor, positive]), self.cfg.size)
        return large, self._crop(image, small[0], self.cfg.small_side)

    @staticmethod
    def _crop(image: Image.Image | Tensor, boxes: Tensor, side: int) -> Tensor:
        if not len(boxes):
            return torch.zeros(0, 3, side, side, dtype=torch.uint8)
        if not isinstance(image, Image.Image):  # uint8 3 x H x W tensor
            crops = crop_resize(image.expand(len(boxes), -1, -1, -1), boxes, side)
            return crops.round().clamp(0, 255).to(torch.uint8)
        crops = [image.resize((side, side), Image.BILINEAR, box=tuple(b)) for b in boxes.tolist()]
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
        """One view per image (default transforms)."""
        n, _, height, width = images.shape
        boxes = sample_crop_boxes(
            n, height, width, self.cfg.crop_scale, self.cfg.crop_ratio, generator
        )
        crops = crop_resize(images, boxes, self.cfg.size)  # N x 3 x S x S, input range
        return self.colour(crops / 255.0 if images.dtype == torch.uint8 else crops, generator)

    def views(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, list[Tensor]]:
        """Training views of uint8 N x 3 x H x W images: the anchors N x 3 x S x S and the
        positives [N x 3 x S x S, (n_small N) x 3 x s x s (multi-crop only; row c N + i: crop c
        of image i)]."""
        cfg, (n, _, height, width) = self.cfg, images.shape
        anchor, positive, small = sample_view_boxes(n, height, width, cfg, generator)
        source, rows = images.float(), torch.arange(n)  # every box reads its image in place
        large = crop_resize(source, torch.cat([anchor, positive]), cfg.size, rows.repeat(2))
        smalls = None
        if cfg.n_small:
            boxes = small.transpose(0, 1).flatten(0, 1)  # crop-major: row c N + i
            smalls = crop_resize(source, boxes, cfg.small_side, rows.repeat(cfg.n_small))
            smalls = smalls.div_(255.0)
        return self.finish(large.div_(255.0), smalls, generator)

    def finish(
        self, large: Tensor, small: Tensor | None, generator: torch.Generator
    ) -> tuple[Tensor, list[Tensor]]:
        """Colour the crops. large: 2N (anchors, then positives); small: (n_small N) or None.
        uint8, or float in [0, 1]. A+: positives get AutoAugment with p = aug.autoaugment_p."""
        n, p = len(large) // 2, self.cfg.autoaugment_p
        auto = torch.cat([torch.zeros(n, dtype=torch.bool), _coin(n, p, generator)]) if p else None
        anchors, positive = self.colour(large, generator, auto).chunk(2)
        positives = [positive]
        if small is not None and len(small):
            auto = _coin(len(small), p, generator) if p else None
            positives.append(self.colour(small, generator, auto))
        return anchors, positives

    def colour(
        self, crops: Tensor, generator: torch.Generator, autoaugment: Tensor | None = None
    ) -> Tensor:
        """Everything after the crop, on fixed-size crops (uint8, or float in [0, 1]).
        autoaugment: M bool, rows that get AutoAugment instead of jitter, grayscale and blur."""
        x = crops.float() / 255.0 if crops.dtype == torch.uint8 else crops.float().clone()
        if autoaugment is not None and autoaugment.any():
            rows = autoaugment.nonzero().squeeze(1).to(x.device)
            rest = (~autoaugment).nonzero().squeeze(1).to(x.device)
            x[rest] = self._default(x[rest], generator)
            x[rows] = auto_augment(x[rows], generator)
        else:
            x = self._default(x, generator)
        device = x.device
        flip = _coin(len(x), self.cfg.flip_p, generator).to(device).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)  # x is this function's own tensor

    def _default(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """ColorJitter p, grayscale p, Gaussian blur p (float [0, 1], M x 3 x s x s)."""
        cfg, device = self.cfg, x.device
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
                x[blur], sigma.to(device), blur_radius(x.shape[-1], cfg.blur_sigma[1])
            )
        return x


AUTOAUGMENT = T.AutoAugment(T.AutoAugmentPolicy.IMAGENET)


def auto_augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """torchvision's AutoAugment (ImageNet policy) per image, each with its own sub-policy, on
    uint8 (float [0, 1] in and out: M x 3 x s x s). torchvision draws from the global RNG: it runs
    under a fork of it, seeded from `generator`, so runs stay reproducible and the global stream
    (split-BN shuffles) is untouched."""
    seed = int(torch.randint(2**62, (), generator=generator))
    images = (x * 255.0).round().clamp(0, 255).to(torch.uint8).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = torch.stack([AUTOAUGMENT(image) for image in images])
    return out.to(x.device, torch.float32) / 255.0
