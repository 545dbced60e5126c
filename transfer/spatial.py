"""Spatial (unpooled) feature maps of a frozen ResNet at a chosen output stride (video propagation, segment
retrieval, CAMs).

torchvision's ResNet reaches stride 8 after layer2, 16 after layer3 (res4) and 32 after layer4 (res5). A lower
output stride removes the stride of layer3 / layer4 (first block's conv and downsample); with `dilate` the later
3x3 convs are dilated as in torchvision's replace_stride_with_dilation (DeepLab: the receptive field is kept),
without it the weights see a denser grid at their trained dilation (videowalk's res4 "stride modification":
layer3 at stride 1, layer4 removed). transfer/dense.py's `dilate_last_block` is the output-stride-16 case of this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from transfer.features import normalize

LAYERS = ("layer3", "layer4")  # res4, res5
STRIDES = (8, 16, 32)


def unstride(layer: nn.Sequential, first: int, dilation: int) -> None:
    """In place: the layer's stride 2 removed; its first block at dilation `first`, the others at `dilation`."""
    for i, block in enumerate(layer):
        d = first if i == 0 else dilation
        if isinstance(block, Bottleneck):
            convs = [block.conv2]
        elif isinstance(block, BasicBlock):
            convs = [block.conv1, block.conv2]
        else:
            raise TypeError(f"cannot change the stride of {type(block).__name__}: expected BasicBlock or Bottleneck")
        for conv in convs:
            conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)
        block.stride = 1


def strided_trunk(backbone: nn.Module, layer: str = "layer4", output_stride: int = 32, dilate: bool = True) -> nn.Sequential:
    """The ResNet up to `layer` (no pooling) at `output_stride`: (N,3,H,W) -> (N,D,H/os,W/os). Changes backbone."""
    if layer not in LAYERS:
        raise ValueError(f"unknown feature layer '{layer}'; valid: {', '.join(LAYERS)}")
    native = {"layer3": 16, "layer4": 32}[layer]
    if output_stride not in STRIDES or output_stride > native:
        valid = [s for s in STRIDES if s <= native]
        raise ValueError(f"output_stride {output_stride} not possible at {layer}; valid: {valid}")
    b = backbone
    layers = [b.layer1, b.layer2, b.layer3] + ([b.layer4] if layer == "layer4" else [])
    stride, dilation = 8, 1  # after layer2
    for lay in layers[2:]:
        if stride < output_stride:
            stride *= 2
            continue
        new = dilation * 2 if dilate else 1
        unstride(lay, dilation if dilate else 1, new)
        dilation = new
    net = nn.Sequential(b.conv1, b.bn1, b.relu, b.maxpool, *layers)
    net.out_dim = layers[-1][-1].conv2.out_channels if isinstance(layers[-1][-1], BasicBlock) else layers[-1][-1].conv3.out_channels
    return net.eval()


@torch.no_grad()
def feature_maps(trunk: nn.Module, images: torch.Tensor, size: int | None = None, batch_size: int = 64) -> torch.Tensor:
    """(N, D, h, w) float32 maps of uint8 images (N,3,H,W), resized first so the short side is `size`."""
    trunk.eval()
    device = next(trunk.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start : start + batch_size])
        if size is not None and min(x.shape[-2:]) != size:
            scale = size / min(x.shape[-2:])
            hw = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
            x = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
        out.append(trunk(x.to(device)).float().cpu())
    return torch.cat(out)
