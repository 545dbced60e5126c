"""Backbones g by name: torchvision ResNets (standard stem) with the classifier removed.

forward(x: N x 3 x H x W) -> N x D pooled features; D is `.out_dim` (512 for ResNet-18/34,
2048 for ResNet-50).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from pretrain.convs import live_tap_convs
from pretrain.registry import lookup

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
}


def build_backbone(arch: str, norm_layer: Callable[[int], nn.Module] | None = None) -> nn.Module:
    """Randomly initialised `arch` (torchvision init), fc replaced by identity; sets `.out_dim`. Its
    convolutions skip the kernel taps that read only padding (pretrain/convs.py: same results)."""
    net = lookup(BACKBONES, arch, "backbone")(weights=None, norm_layer=norm_layer)
    net.out_dim = net.fc.in_features  # D
    net.fc = nn.Identity()
    return live_tap_convs(net)


def save_backbone(module: nn.Module, arch: str, path: str | Path) -> Path:
    """Write {"arch", "state_dict"} (CPU tensors) atomically; split-BN weights load as plain BN."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}  # NCHW in any memory_format
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"arch": arch, "state_dict": state}, tmp)
    os.replace(tmp, path)
    return path


def load_backbone(path: str | Path) -> nn.Module:
    """The saved backbone with plain BatchNorm, in eval mode."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    net = build_backbone(blob["arch"])
    net.load_state_dict(blob["state_dict"])
    return net.eval()
