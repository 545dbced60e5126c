"""Pooled features of a frozen backbone (weights and BN statistics), cached per (checkpoint, dataset, split).

Protocol A.2: no augmentation, images resized to the evaluation resolution (224 in the paper),
ImageNet normalisation, average-pooled last-block features.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N,3,H,W) -> normalised float (N,3,size,size), the Resize(size x size) of the protocol."""
    x = images.float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0-255 float) (N,3,H,W) -> ImageNet-normalised float, at the images' own size."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


@torch.no_grad()
def extract(backbone: nn.Module, images: torch.Tensor, size: int, batch_size: int = 256) -> torch.Tensor:
    """(N, D) float32 features of a backbone in eval mode; asserts it leaves the backbone untouched."""
    backbone.eval()
    before = state_fingerprint(backbone)
    device = next(backbone.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        batch = preprocess(images[start : start + batch_size], size).to(device)
        out.append(backbone(batch).float().cpu())
    if state_fingerprint(backbone) != before:
        raise RuntimeError("the frozen backbone changed during feature extraction (weights or BN stats)")
    return torch.cat(out)


def data_id(data: dict, image_size: int) -> str:
    """16 hex digits naming (target data spec, evaluation size) for feature caches."""
    import json

    blob = json.dumps({"data": data, "image_size": image_size}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def state_fingerprint(module: nn.Module) -> str:
    """sha256 over every parameter and buffer (BN running statistics included)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cached_features(
    cache_file: Path, backbone: nn.Module, images: torch.Tensor, size: int, batch_size: int = 256
) -> torch.Tensor:
    """Features from `cache_file` if present, else extracted and saved atomically."""
    if cache_file.exists():
        feats = torch.load(cache_file, weights_only=True)
        if feats.shape[0] == len(images):
            return feats
    feats = extract(backbone, images, size, batch_size)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
    torch.save(feats, tmp)
    os.replace(tmp, cache_file)
    return feats
