"""Object detection (Table 3; A.4; MoCo paper Sec. 4.2, MoCo's `detection/`): Faster R-CNN, all layers finetuned.

Versions (`version` fills `arch`, `pooler_size` and `precise_bn` when None; a field set in the spec or a profile wins):
- "dilated_c5" (default; the paper's A.4: Faster R-CNN with an R50-dilated-C5 backbone): torchvision's FasterRCNN on
  one feature map, the pretrained ResNet with its last block dilated (output stride 16;
  `transfer.dense.dilate_last_block`); an RPN over that map, RoIAlign of pooler_size (7) x pooler_size and a
  two-fc box head of representation_size (detectron2's DilatedC5 config: NUM_FC 2, POOLER_RESOLUTION 7, FC_DIM
  1024); no precise BN.
- "mocov1_c4" (MoCo paper Table 2b, Table 3's C4 columns, and the detection/ README's numbers: Faster R-CNN
  R50-C4; configs `pascal_voc_R_50_C4_24k.yaml` on `Base-RCNN-C4-BN.yaml`): the ResNet up to res4 (`layer3`,
  stride 16) gives the RPN's feature map; RoIAlign of 14 x 14 (detectron2's POOLER_RESOLUTION default) on it;
  the box head runs res5 (the backbone's own `layer4`, pretrained weights, stride 2 at its first block:
  14 -> 7) on every RoI, then an extra BN on res5's output (MoCo's `Res5ROIHeadsExtraNorm` in train_net.py) and
  global average pooling, then the predictor (class scores and boxes). torchvision's ResNet strides in the 3x3
  conv, as MoCo's STRIDE_IN_1X1: False. BN statistics are recomputed before testing (TEST.PRECISE_BN; detectron2's
  200 batches: `precise_bn` = 200 / 24000 of the run, at least one batch).
Common to both: BatchNorm trains everywhere (MoCo Sec. 4.2: "fine-tune with BN that is trained (and synchronized
across GPUs)"; Base-RCNN-C4-BN: naiveSyncBN, FREEZE_AT 0). Synchronized BN over 8 GPUs of 2 images each takes its
statistics over the whole batch of 16; this runs the whole batch in one process, where plain BN computes the same.
The RPN uses our AnchorGenerator: sizes 32-512, ratios 0.5/1/2 on the one stride-16 map (detectron2's defaults).
RoIAlign is torchvision's MultiScaleRoIAlign (aligned=False; detectron2's ROIAlignV2 samples half a pixel shifted);
on CPU with a fixed sampling ratio (the tiny profile's 2) the same values come from one sparse matrix product
(transfer/roi_align.py: the backward 6-12x faster than torchvision's serial CPU loop).
Training: VOC07+12 trainval (bias world: the voc07 variant's train split), shorter side drawn from train_sizes
(480-800, step 32: MIN_SIZE_TRAIN), horizontal flips, SGD lr 0.02, 24k iterations of batch 16, x0.1 at 18k and 22k,
linear warmup over 100 (pascal_voc_R_50_C4_24k.yaml; MoCo Sec. 4.2: 24k iterations, [480, 800]); scored on VOC07
test at size 800: AP (mean over IoU 0.5:0.95; `ap_recall_points`), AP50, AP75; difficult boxes ignored. MoCo reports
the mean of 5 trials (`n_runs`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

from pretrain.registry import fill_from_version
from transfer.dense import finetune, fused, trunk, with_initial_lr
from transfer.features import IMAGENET_MEAN, IMAGENET_STD
from transfer.metrics import detection_ap
from transfer.roi_align import SparseRoIAlign
from transfer.spatial import strided_trunk

ARCHS = ("dilated_c5", "c4")
VERSIONS: dict[str, dict[str, Any]] = {
    "dilated_c5": {"arch": "dilated_c5", "pooler_size": 7, "precise_bn": 0.0},
    "mocov1_c4": {"arch": "c4", "pooler_size": 14, "precise_bn": 200 / 24000},
}


@dataclass
class DetectionProtocol:
    version: str = "dilated_c5"  # a key of VERSIONS: sets arch, pooler_size and precise_bn when they are None
    arch: str | None = None  # "dilated_c5": dilated res5 + two fc; "c4": res4 map, res5 as the box head
    iterations: int = 24000
    batch_size: int = 16
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = (18000 / 24000, 22000 / 24000)  # fractions of the run
    gamma: float = 0.1
    warmup: float = 100 / 24000  # fraction of the run with a linear warmup from warmup_factor
    warmup_factor: float = 0.001
    train_sizes: tuple[int, ...] = tuple(range(480, 801, 32))  # shorter side, one drawn per batch
    test_size: int = 800
    max_size: int = 1333
    # a batch is padded to its largest image, rounded up to a multiple of this: detectron2's SIZE_DIVISIBILITY, 0
    # (no rounding) for a ResNet without FPN, C4 and DC5 alike; torchvision's FasterRCNN rounds to 32, which at the
    # tiny profile's 80 px pads every batch to 96 px (1.44x the pixels)
    size_divisible: int = 1
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one feature map: all sizes on it
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    pooler_size: int | None = None  # RoIAlign output, pooler_size x pooler_size
    representation_size: int = 1024  # dilated_c5: the two fc layers of the box head (FC_DIM); c4: unused
    precise_bn: float | None = None  # BN statistics recomputed over this fraction of the run's batches; 0: off
    sampling_ratio: int = 0  # RoIAlign samples per bin; 0: adaptive (detectron2's default)
    # RPN proposals kept before / after NMS, train and test (detectron2's defaults), sampled anchors and RoIs per image
    rpn_pre_nms: tuple[int, int] = (12000, 6000)
    rpn_post_nms: tuple[int, int] = (2000, 1000)
    rpn_batch_size: int = 256
    roi_batch_size: int = 512
    detections_per_image: int = 100
    flip: bool = True
    n_runs: int = 5  # MoCo: mean of 5 trials
    # AP interpolation: MoCo's VOC numbers come from detectron2's PascalVOCDetectionEvaluator, which on VOC2007 test
    # uses the 11-point VOC07 AP, averaged over IoU 0.50:0.95; 101 gives the COCO (pycocotools) interpolation
    ap_recall_points: int = 11
    seed: int = 0
    eval_batch_size: int = 8  # execution only
    threads: int = 0
    metric: str = "ap"
    multilabel: bool = False

    def __post_init__(self) -> None:
        fill_from_version(self, VERSIONS, "detection protocol")
        if self.arch not in ARCHS:
            raise ValueError(f"unknown detection arch '{self.arch}'; valid: {', '.join(ARCHS)}")
        if self.size_divisible < 1:
            raise ValueError(f"size_divisible must be >= 1 (1: pad to the largest image only), got {self.size_divisible}")
        if self.pooler_size < 1 or not 0 <= self.precise_bn < 1:
            raise ValueError(
                f"need pooler_size >= 1 and precise_bn in [0, 1); got {self.pooler_size}, {self.precise_bn}"
            )
        if self.metric != "ap":
            raise ValueError(f"unknown metric '{self.metric}' for detection; valid: ap")
        if self.iterations < 1 or self.batch_size < 1 or self.n_runs < 1 or not self.train_sizes:
            raise ValueError(
                f"need iterations >= 1, batch_size >= 1, n_runs >= 1 and some train_sizes; got iterations="
                f"{self.iterations}, batch_size={self.batch_size}, n_runs={self.n_runs}, train_sizes={self.train_sizes}"
            )
        if any(not 0 < m < 1 for m in self.milestones) or not 0 <= self.warmup < 1:
            raise ValueError(f"milestones and warmup are fractions of the run in (0, 1), got {self.milestones}, {self.warmup}")


class FeatureMap(nn.Module):
    """A ResNet trunk as FasterRCNN's backbone: one feature map at stride 16 with `out_channels` channels."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.out_channels = body.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # a tensor: FasterRCNN names it "0"


class Res5Head(nn.Module):
    """C4's box head (MoCo's Res5ROIHeadsExtraNorm): res5 on each RoI, BN on its output, global average pooling.
    (R, C, p, p) RoI features -> (R, D); res5's first block has stride 2 (p -> p/2)."""

    def __init__(self, res5: nn.Sequential, out_dim: int) -> None:
        super().__init__()
        self.res5 = res5
        self.norm = nn.BatchNorm2d(out_dim)  # the "extra norm" after the res5 stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.res5(x)).mean((2, 3))  # (R, D)


def build_detector(backbone_path: Path, num_classes: int, protocol: DetectionProtocol) -> FasterRCNN:
    from pretrain.backbones import load_backbone

    net = load_backbone(backbone_path)
    if protocol.arch == "c4":
        body = FeatureMap(strided_trunk(net, "layer3", 16))  # stem .. res4: (N, C, H/16, W/16)
        box_head, head_dim = Res5Head(net.layer4, net.out_dim), net.out_dim
    else:
        body = FeatureMap(trunk(net))  # stem .. dilated res5: (N, D, H/16, W/16)
        box_head = TwoMLPHead(body.out_channels * protocol.pooler_size**2, protocol.representation_size)
        head_dim = protocol.representation_size
    anchors = AnchorGenerator(sizes=(tuple(protocol.anchor_sizes),), aspect_ratios=(tuple(protocol.aspect_ratios),))
    return FasterRCNN(
        body,
        min_size=tuple(protocol.train_sizes),
        max_size=protocol.max_size,
        size_divisible=protocol.size_divisible,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        rpn_anchor_generator=anchors,
        box_roi_pool=SparseRoIAlign(["0"], protocol.pooler_size, protocol.sampling_ratio),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(head_dim, num_classes + 1),  # + background (torchvision's class 0)
        rpn_pre_nms_top_n_train=protocol.rpn_pre_nms[0],
        rpn_pre_nms_top_n_test=protocol.rpn_pre_nms[1],
        rpn_post_nms_top_n_train=protocol.rpn_post_nms[0],
        rpn_post_nms_top_n_test=protocol.rpn_post_nms[1],
        rpn_batch_size_per_image=protocol.rpn_batch_size,
        box_batch_size_per_image=protocol.roi_batch_size,
        box_detections_per_img=protocol.detections_per_image,
    )


def lr_at(protocol: DetectionProtocol, t: float) -> float:
    """detectron2's WarmupMultiStepLR as a function of the fraction t of iterations done."""
    factor = protocol.gamma ** sum(t >= m for m in protocol.milestones)
    if t < protocol.warmup:
        a = t / protocol.warmup
        factor *= protocol.warmup_factor * (1 - a) + a
    return factor


def _targets(data: Any, i: int, flip: bool) -> dict[str, torch.Tensor]:
    boxes = torch.as_tensor(data.boxes[i], dtype=torch.float32).reshape(-1, 4)
    if flip:
        w = data.images[i].shape[-1]
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
    return {"boxes": boxes, "labels": torch.as_tensor(data.box_labels[i], dtype=torch.int64) + 1}


def _batch(data: Any, idx: torch.Tensor, g: torch.Generator, protocol: DetectionProtocol, device: str) -> tuple:
    """(images, targets) of a training batch: images float 0-1, each flipped with p=0.5 (one draw of g each)."""
    flips = (torch.rand(len(idx), generator=g) < 0.5) & protocol.flip
    pairs = list(zip(idx.tolist(), flips.tolist()))
    images = [(data.images[i].flip(-1) if f else data.images[i]).float().div(255).to(device) for i, f in pairs]
    targets = [{k: v.to(device) for k, v in _targets(data, i, f).items()} for i, f in pairs]
    return images, targets


@torch.no_grad()
def precise_bn(model: FasterRCNN, train: Any, protocol: DetectionProtocol, seed: int, device: str) -> int:
    """detectron2's PreciseBN: every BN's running statistics replaced by the equal-weight mean of its batch
    statistics over `precise_bn` x iterations training batches (train mode, no weight update). Returns the batches."""
    n = max(1, round(protocol.precise_bn * protocol.iterations)) if protocol.precise_bn > 0 else 0
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if n == 0 or not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: batch k weighs 1/k, so every batch counts the same
    model.train()
    g = torch.Generator().manual_seed(seed * 100003 - 1)  # apart from finetune's seed * 100003 + epoch
    for _ in range(n):
        idx = torch.randperm(len(train.images), generator=g)[: protocol.batch_size]
        model(*_batch(train, idx, g, protocol, device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return n


def train_run(train: Any, protocol: DetectionProtocol, run: int, ctx: Any) -> FasterRCNN:
    seed = protocol.seed + run
    torch.manual_seed(seed)  # heads' initialisation; later: RPN/RoI sampling and the size drawn per image
    model = build_detector(ctx.backbone_path, train.num_classes, protocol).to(ctx.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = with_initial_lr(
        torch.optim.SGD(params, lr=protocol.lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay,
                        fused=fused(params))
    )

    def step_loss(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return sum(model(*_batch(train, idx, g, protocol, ctx.device)).values())

    model.losses = finetune(
        model, optimizer, step_loss, len(train.images), protocol.batch_size, protocol.iterations,
        lambda t: lr_at(protocol, t), ctx.checkpoint(f"run{run}.pt"), seed, ctx.progress,
        f"finetune run {run + 1}/{protocol.n_runs}",
    )  # fmt: skip
    if protocol.precise_bn > 0:
        ctx.progress({"stage": f"precise BN run {run + 1}/{protocol.n_runs}"})
        precise_bn(model, train, protocol, seed, ctx.device)
    return model


@torch.no_grad()
def evaluate(model: FasterRCNN, test: Any, protocol: DetectionProtocol, device: str) -> dict:
    model.eval()
    model.transform.min_size = (protocol.test_size,)
    detections = []
    for start in range(0, len(test.images), protocol.eval_batch_size):
        batch = [im.float().div(255).to(device) for im in test.images[start : start + protocol.eval_batch_size]]
        for out in model(batch):
            detections.append({"boxes": out["boxes"].cpu(), "scores": out["scores"].cpu(), "labels": out["labels"].cpu() - 1})
    truth = [
        {"boxes": test.boxes[i], "labels": test.box_labels[i],
         "difficult": test.box_difficult[i] if test.box_difficult is not None else None}
        for i in range(len(test.images))
    ]  # fmt: skip
    return detection_ap(detections, truth, test.num_classes, recall_points=protocol.ap_recall_points)


def run_detection(spec: dict, ctx: Any) -> dict:
    """n_runs Faster R-CNN finetuning runs on train, scored on test; AP mean and std (also AP50, AP75)."""
    from transfer.data import load_dense
    from transfer.linear import torch_threads  # here: transfer.linear imports the task registry

    protocol = DetectionProtocol(**spec["protocol"])
    splits = {s: load_dense(spec["data"], s, ctx.cache_dir / "biasworld", ctx.roots) for s in ("train", "test")}
    runs, curves, start = [], [], time.perf_counter()
    with torch_threads(protocol.threads):
        for run in range(protocol.n_runs):
            model = train_run(splits["train"], protocol, run, ctx)
            ctx.progress({"stage": f"evaluate run {run + 1}/{protocol.n_runs}"})
            runs.append(evaluate(model, splits["test"], protocol, ctx.device))
            curves.append(model.losses)
    mean = {k: float(np.mean([r[k] for r in runs])) for k in ("ap", "ap50", "ap75")}
    return {
        "value": mean["ap"],
        "metric": "ap",
        "std": float(np.std([r["ap"] for r in runs], ddof=1)) if len(runs) > 1 else 0.0,
        "ap50": mean["ap50"],
        "ap75": mean["ap75"],
        "runs": [r["ap"] for r in runs],
        "losses": curves,
        "fit_s": time.perf_counter() - start,
    }


def _register() -> None:
    from transfer.tasks import Task, register

    register(
        Task(
            name="detection",
            protocol=DetectionProtocol,
            run=run_detection,
            targets=("voc_det",),
            description="Faster R-CNN (dilated-C5; MoCo v1's R50-C4), all layers finetuned, AP on VOC07 test (Table 3)",
        )
    )


_register()
