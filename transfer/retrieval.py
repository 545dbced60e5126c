"""Semantic segment retrieval (Table 6; A.7): frozen dilated features, per-image K-means regions, nearest train region.

- ResNet with a dilated last block, no average pooling (transfer/spatial.py). A.7 gives 64x64 features for
  512x512 inputs, i.e. output stride 8 (layer3 and layer4 dilated); `output_stride=16` dilates layer4 only.
- Per image, K-means with K = 15 on its spatial features (`kmeans`: batched Lloyd iterations in torch, k-means++
  seeding from a generator seeded by (seed, image index)); a region's descriptor is the mean feature of its pixels.
- Train regions are labelled with the majority class of their pixels (ignore pixels skipped; a region with only
  ignore pixels is dropped); each val region takes the label of its nearest train region (cosine similarity of the
  descriptors by default, `distance="l2"` for Euclidean; one neighbour, not weighted).
- The per-pixel region-label map is upsampled (nearest) to the mask's size and scored by mIoU from the split's
  confusion matrix: over all classes (VOC: 21 with background) and over a subset (VOC: bus, airplane, car, person,
  cat, cow, bottle), each subset class's IoU taken from the full confusion matrix.
Bias world ("voc12_seg" on the voc07 variant): the 7-class subset is its 7 "things" person, car, bus, cat, dog,
sign, light (class ids 1-7 of the 21 with background), standing in for VOC's person, car, bus, cat, cow, bottle and
airplane.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from transfer.linear import torch_threads
from transfer.metrics import IGNORE_INDEX, class_iou, confusion_matrix, miou

DISTANCES = ("cosine", "l2")
VOC_SUBSET = ("bus", "aeroplane", "car", "person", "cat", "cow", "bottle")
BIASWORLD_SUBSET = ("person", "car", "bus", "cat", "dog", "sign", "light")


@dataclass
class RetrievalProtocol:
    n_clusters: int = 15  # K of the per-image K-means
    kmeans_iters: int = 50  # Lloyd iterations at most (stops earlier when no assignment changes)
    seed: int = 0
    distance: str = "cosine"  # region matching: "cosine" or "l2"
    output_stride: int = 8  # A.7: 64x64 features at 512x512
    subset: tuple[str, ...] = VOC_SUBSET  # class names of the reported subset mIoU
    biasworld_subset: tuple[str, ...] = BIASWORLD_SUBSET  # its stand-ins in the bias world
    batch_size: int = 16  # images per backbone forward: execution only
    threads: int = 0
    metric: str = "miou"
    multilabel: bool = False

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise ValueError(f"unknown distance '{self.distance}'; valid: {', '.join(DISTANCES)}")
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
        if self.n_clusters < 1 or self.kmeans_iters < 1:
            raise ValueError(f"need n_clusters >= 1 and kmeans_iters >= 1, got {self.n_clusters}, {self.kmeans_iters}")


def kmeans(x: torch.Tensor, k: int, iters: int, generators: list[torch.Generator]) -> torch.Tensor:
    """(B, P) cluster ids of B independent problems x (B, P, D), k-means++ seeding, squared L2, Lloyd iterations.
    With fewer than k distinct points a problem ends with fewer non-empty clusters."""
    B, P, _ = x.shape
    k = min(k, P)
    centres = torch.empty(B, k, x.shape[2], dtype=x.dtype)
    for b in range(B):  # k-means++: each next centre drawn with probability ~ squared distance to the chosen ones
        first = int(torch.randint(P, (1,), generator=generators[b]))
        chosen = [first]
        d2 = ((x[b] - x[b, first]) ** 2).sum(1)
        for _ in range(1, k):
            p = d2 / d2.sum() if d2.sum() > 0 else torch.full((P,), 1.0 / P)
            nxt = int(torch.multinomial(p, 1, generator=generators[b]))
            chosen.append(nxt)
            d2 = torch.minimum(d2, ((x[b] - x[b, nxt]) ** 2).sum(1))
        centres[b] = x[b, chosen]
    assign = torch.full((B, P), -1, dtype=torch.int64)
    for _ in range(iters):
        new = torch.cdist(x, centres).argmin(2)  # (B, P)
        if torch.equal(new, assign):
            break
        assign = new
        onehot = F.one_hot(assign, k).to(x.dtype)  # (B, P, k)
        counts = onehot.sum(1)  # (B, k)
        sums = onehot.transpose(1, 2) @ x  # (B, k, D)
        centres = torch.where(counts[..., None] > 0, sums / counts.clamp(min=1)[..., None], centres)
    return assign


def regions(feats: torch.Tensor, protocol: RetrievalProtocol, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image of feats (N, D, h, w): (region ids (N, h, w) in [0, K), descriptors (N, K, D), NaN for empty)."""
    N, D, h, w = feats.shape
    x = feats.flatten(2).transpose(1, 2).contiguous()  # (N, P, D)
    gens = [torch.Generator().manual_seed(protocol.seed * 1_000_003 + offset + i) for i in range(N)]
    assign = kmeans(x, protocol.n_clusters, protocol.kmeans_iters, gens)  # (N, P)
    onehot = F.one_hot(assign, protocol.n_clusters).float()  # (N, P, K)
    counts = onehot.sum(1)[..., None]  # (N, K, 1)
    desc = (onehot.transpose(1, 2) @ x) / counts  # (N, K, D): NaN rows for empty clusters
    return assign.view(N, h, w), desc


def _upsample(ids: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(ids[:, None].float(), size=size, mode="nearest")[:, 0].long()


def region_labels(ids: torch.Tensor, desc: torch.Tensor, masks: torch.Tensor, num_classes: int) -> tuple:
    """Train regions: (descriptors (R, D), labels (R,)): majority class of each non-empty region's pixels."""
    up = _upsample(ids, masks.shape[-2:])  # (N, H, W)
    K = desc.shape[1]
    keep = masks != IGNORE_INDEX
    flat = (torch.arange(len(ids))[:, None, None] * K + up)[keep] * num_classes + masks[keep]
    votes = torch.bincount(flat, minlength=len(ids) * K * num_classes).view(len(ids) * K, num_classes)
    valid = (votes.sum(1) > 0) & ~torch.isnan(desc.flatten(0, 1)).any(1)
    return desc.flatten(0, 1)[valid], votes.argmax(1)[valid]


def nearest_labels(query: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor, distance: str) -> torch.Tensor:
    """(Q,) label of each query descriptor's nearest key (queries with NaN get label 0, never used)."""
    q = torch.nan_to_num(query)
    if distance == "cosine":
        nearest = (F.normalize(q, dim=1) @ F.normalize(keys, dim=1).T).argmax(1)
    else:
        nearest = torch.cdist(q, keys).argmin(1)
    return key_labels[nearest]


def run_retrieval(spec: dict, ctx: Any) -> dict:
    """Train regions labelled by their pixels, val regions labelled by retrieval; mIoU (all classes, subset)."""
    from pretrain.backbones import load_backbone
    from transfer.data import load_dense
    from transfer.spatial import feature_maps, strided_trunk

    protocol = RetrievalProtocol(**spec["protocol"])
    start = time.perf_counter()
    with torch_threads(protocol.threads):
        trunk = strided_trunk(load_backbone(ctx.backbone_path).to(ctx.device), "layer4", protocol.output_stride)
        out = {}
        for split in ("train", "val"):
            data = load_dense(spec["data"], split, ctx.cache_dir / "biasworld", ctx.roots)
            images, masks = torch.as_tensor(data.images), torch.as_tensor(data.class_mask)
            feats = feature_maps(trunk, images, spec["image_size"], protocol.batch_size)
            ctx.progress({"stage": f"features + k-means {split}", "n": len(images)})
            out[split] = (data, masks, *regions(feats, protocol, offset=0 if split == "train" else 10**6))
    data, masks, ids, desc = out["train"]
    keys, key_labels = region_labels(ids, desc, masks, data.num_classes)
    val, vmasks, vids, vdesc = out["val"]
    labels = nearest_labels(vdesc.flatten(0, 1), keys, key_labels, protocol.distance).view(vdesc.shape[:2])
    pred = torch.gather(labels, 1, vids.flatten(1)).view_as(vids)  # (N, h, w) region label per feature pixel
    pred = _upsample(pred, vmasks.shape[-2:])
    conf = confusion_matrix(pred, vmasks, val.num_classes)
    subset = _subset_ids(val.class_names, protocol, spec["data"]["source"])
    iou = class_iou(conf)
    subset_miou = 100.0 * float(np.nanmean(iou[subset])) if not np.isnan(iou[subset]).all() else float("nan")
    return {
        "value": miou(conf),
        "metric": "miou",
        "miou_all": miou(conf),
        "miou_subset": subset_miou,
        "subset": [val.class_names[i] for i in subset],
        "n_train_regions": int(len(keys)),
        "class_iou": [None if np.isnan(v) else 100.0 * float(v) for v in iou],
        "fit_s": time.perf_counter() - start,
    }


def _subset_ids(class_names: tuple[str, ...], protocol: RetrievalProtocol, source: str) -> list[int]:
    names = protocol.biasworld_subset if source == "biasworld" else protocol.subset
    missing = [n for n in names if n not in class_names]
    if missing:
        raise ValueError(f"subset classes {missing} are not classes of the target; its classes: {list(class_names)}")
    return [class_names.index(n) for n in names]


def _register() -> None:
    from transfer.tasks import Task, register

    register(
        Task(
            name="retrieval",
            protocol=RetrievalProtocol,
            run=run_retrieval,
            targets=("voc12_seg",),
            spec_defaults={"image_size": 512},  # A.7: input 512x512
            description="per-image K-means regions of frozen dilated features, nearest train region, mIoU (Table 6)",
        )
    )


_register()
