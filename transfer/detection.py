"""Object detection (Table 3; A.4; MoCo's `detection/`, detectron2 R50-dilated-C5): Faster R-CNN, all layers finetuned.

Model: torchvision's FasterRCNN on one feature map, the pretrained ResNet with its last block dilated (output stride
16; `transfer.dense.dilate_last_block`); an RPN over that map with our AnchorGenerator, RoIAlign of pooler_size x
pooler_size and a two-fc box head (detectron2's DilatedC5 config: NUM_FC 2, POOLER_RESOLUTION 7). BatchNorm trains
(the paper: synchronized BN; one process here). Training: VOC07+12 trainval (bias world: the voc07 variant's train
split), shorter side drawn from train_sizes (480-800), horizontal flips, SGD lr 0.02, 24k iterations of batch 16,
x0.1 at 18k and 22k, linear warmup over 100; scored on VOC07 test at size 800: COCO-style AP (mean over IoU
0.5:0.95, 101 recall points; difficult boxes ignored), AP50, AP75. MoCo reports the mean of 5 trials (`n_runs`).
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
from torchvision.ops import MultiScaleRoIAlign

from transfer.dense import finetune, trunk, with_initial_lr
from transfer.features import IMAGENET_MEAN, IMAGENET_STD
from transfer.metrics import detection_ap


@dataclass
class DetectionProtocol:
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
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one feature map: all sizes on it
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    pooler_size: int = 7
    representation_size: int = 1024  # the two fc layers of the box head (detectron2's FC_DIM)
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
        if self.metric != "ap":
            raise ValueError(f"unknown metric '{self.metric}' for detection; valid: ap")
        if self.iterations < 1 or self.batch_size < 1 or self.n_runs < 1 or not self.train_sizes:
            raise ValueError(
                f"need iterations >= 1, batch_size >= 1, n_runs >= 1 and some train_sizes; got iterations="
                f"{self.iterations}, batch_size={self.batch_size}, n_runs={self.n_runs}, train_sizes={self.train_sizes}"
            )
        if any(not 0 < m < 1 for m in self.milestones) or not 0 <= self.warmup < 1:
            raise ValueError(f"milestones and warmup are fractions of the run in (0, 1), got {self.milestones}, {self.warmup}")


class C5(nn.Module):
    """The dilated ResNet as FasterRCNN's backbone: one feature map at stride 16 with `out_channels` channels."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.out_channels = body.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # a tensor: FasterRCNN names it "0"


def build_detector(backbone_path: Path, num_classes: int, protocol: DetectionProtocol) -> FasterRCNN:
    from pretrain.backbones import load_backbone

    anchors = AnchorGenerator(sizes=(tuple(protocol.anchor_sizes),), aspect_ratios=(tuple(protocol.aspect_ratios),))
    body = C5(trunk(load_backbone(backbone_path)))
    return FasterRCNN(
        body,
        min_size=tuple(protocol.train_sizes),
        max_size=protocol.max_size,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0"], protocol.pooler_size, protocol.sampling_ratio),
        box_head=TwoMLPHead(body.out_channels * protocol.pooler_size**2, protocol.representation_size),
        # + background (torchvision's class 0)
        box_predictor=FastRCNNPredictor(protocol.representation_size, num_classes + 1),
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


def train_run(train: Any, protocol: DetectionProtocol, run: int, ctx: Any) -> FasterRCNN:
    seed = protocol.seed + run
    torch.manual_seed(seed)  # heads' initialisation; later: RPN/RoI sampling and the size drawn per batch
    model = build_detector(ctx.backbone_path, train.num_classes, protocol).to(ctx.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = with_initial_lr(
        torch.optim.SGD(params, lr=protocol.lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay)
    )

    def step_loss(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        flips = (torch.rand(len(idx), generator=g) < 0.5) & protocol.flip
        images = [
            (train.images[i].flip(-1) if f else train.images[i]).float().div(255).to(ctx.device)
            for i, f in zip(idx.tolist(), flips.tolist())
        ]
        targets = [{k: v.to(ctx.device) for k, v in _targets(train, i, f).items()} for i, f in zip(idx.tolist(), flips.tolist())]
        return sum(model(images, targets).values())

    model.losses = finetune(
        model, optimizer, step_loss, len(train.images), protocol.batch_size, protocol.iterations,
        lambda t: lr_at(protocol, t), Path(ctx.workdir) / f"run{run}.pt", seed, ctx.progress,
        f"finetune run {run + 1}/{protocol.n_runs}",
    )  # fmt: skip
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
            description="Faster R-CNN on the dilated-C5 ResNet, all layers finetuned, COCO-style AP on VOC07 test (Table 3)",
        )
    )


_register()
