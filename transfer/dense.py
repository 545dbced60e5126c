"""End-to-end finetuning for dense prediction (Table 3, 4, 9; A.3 segmentation, A.5 depth).

Model (official `evaluation/segmentation`): the pretrained ResNet with its last block dilated (dilation 2, stride 1:
output stride 16), then
- FCN head (VOC: dilation 6; Cityscapes: dilation 1): two 3x3 convs of 256 channels (BN, ReLU), then a 1x1 classifier;
- DeepLab-v3 decoder (NYUD): ASPP (1x1, three 3x3 at rates 6/12/18, image pooling; 256 channels) then a 3x3 conv
  (BN, ReLU) and a 1x1 classifier;
logits upsampled bilinearly to the input. Training: random scaling 0.5-2.0, horizontal flips, random crops padded
with the ignore label (255); cross-entropy ignoring 255 (segmentation), MSE on valid pixels (depth). Scored on val,
each image at its own size: mIoU from the split's summed confusion matrix, or RMSE pooled over the valid pixels.
The paper reports the mean of 5 runs (`n_runs`).

A split is a stacked tensor (the bias world) or lazy sequences of images of mixed sizes (real data,
transfer.real.dense); both are read the same way, item by item: a training batch decodes only its own images,
scales/flips/crops each one and stacks the crops; evaluation runs images of equal size together.

Schedules are fractions of the run, so a profile that shortens `epochs` keeps their shape: VOC's x0.1 at epochs
30 and 40 of 45 is `milestones=(30/45, 40/45)`; "poly" is lr * (1 - t)^0.9, t the fraction of steps done.
Each run checkpoints at every epoch end (ctx.checkpoint) and resumes from there (SLURM preemption); data order and
augmentation are drawn from generators seeded by (seed, run, epoch), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from transfer.features import normalize
from transfer.metrics import IGNORE_INDEX, confusion_matrix, miou
from transfer.real.common import DECODE_THREADS
from transfer.spatial import unstride

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("step", "poly")
HEADS = ("fcn", "deeplabv3")


# ----------------------------------------------------------------------------- the backbone


def dilate_last_block(net: nn.Module, dilation: int = 2) -> nn.Module:
    """In place: layer4 with stride 1 and dilated 3x3 convs (output stride 32 -> 16); the weights are unchanged.

    As torchvision's replace_stride_with_dilation (which refuses BasicBlock): the first block keeps dilation 1 and
    loses its stride (conv and downsample), the later blocks use `dilation` with padding = dilation. BasicBlock's
    two 3x3 convs and Bottleneck's middle 3x3 conv are the ones changed."""
    unstride(net.layer4, first=1, dilation=dilation)
    return net


def trunk(backbone: nn.Module) -> nn.Sequential:
    """The ResNet up to its last block, dilated: (N,3,H,W) -> (N,D,H/16,W/16); D = backbone.out_dim."""
    dilate_last_block(backbone)
    b = backbone
    net = nn.Sequential(b.conv1, b.bn1, b.relu, b.maxpool, b.layer1, b.layer2, b.layer3, b.layer4)
    net.out_dim = backbone.out_dim
    return net


# ----------------------------------------------------------------------------- heads


def _conv_bn_relu(cin: int, cout: int, dilation: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def fcn_head(cin: int, outputs: int, channels: int = 256, dilation: int = 6) -> nn.Sequential:
    """Two 3x3 convs (BN, ReLU) at `dilation`, then a 1x1 classifier."""
    return nn.Sequential(
        *_conv_bn_relu(cin, channels, dilation), *_conv_bn_relu(channels, channels, dilation), nn.Conv2d(channels, outputs, 1)
    )


def deeplabv3_head(cin: int, outputs: int, channels: int = 256, rates: tuple[int, ...] = (6, 12, 18)) -> nn.Sequential:
    """DeepLab-v3: ASPP (torchvision's: 1x1 + 3x3 at `rates` + image pooling, projection with dropout 0.5),
    a 3x3 conv (BN, ReLU), a 1x1 classifier."""
    return nn.Sequential(
        ASPP(cin, list(rates), channels), *_conv_bn_relu(channels, channels, 1), nn.Conv2d(channels, outputs, 1)
    )


class DenseModel(nn.Module):
    """Dilated trunk + head; forward: (N,3,H,W) normalised -> (N,outputs,H,W) upsampled logits / depth."""

    def __init__(self, trunk: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.trunk(x))  # (N, outputs, H/16, W/16)
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------- the protocol


@dataclass
class DenseProtocol:
    """Segmentation on VOC (A.3); Cityscapes and NYUD differ per target (Task.per_target below)."""

    epochs: int = 45
    batch_size: int = 16
    optimizer: str = "sgd"  # "sgd" (momentum) or "adam"
    lr: float = 0.003
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"  # "step": x gamma at each milestone; "poly": (1 - t)^poly_power
    milestones: tuple[float, ...] = (30 / 45, 40 / 45)  # fractions of the run: epochs 30 and 40 of 45
    gamma: float = 0.1
    poly_power: float = 0.9
    head: str = "fcn"  # "fcn" (VOC, Cityscapes) or "deeplabv3" (NYUD)
    head_channels: int = 256
    head_dilation: int = 6  # FCN head: 6 VOC, 1 Cityscapes
    aspp_rates: tuple[int, ...] = (6, 12, 18)  # DeepLab-v3 at output stride 16
    crop_size: int = 513
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    ignore_index: int = IGNORE_INDEX
    n_runs: int = 5  # the official code reports the mean of 5 runs
    seed: int = 0  # run r uses seed + r
    eval_batch_size: int = 16  # execution only
    threads: int = 0  # torch threads; 0: all cores this process may use
    metric: str = "miou"  # set from the target: "miou", or "rmse" for depth
    multilabel: bool = False

    def __post_init__(self) -> None:
        for name, value, valid in (
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("schedule", self.schedule, SCHEDULES),
            ("head", self.head, HEADS),
            ("metric", self.metric, ("miou", "rmse")),
        ):
            if value not in valid:
                raise ValueError(f"unknown {name} '{value}'; valid: {', '.join(valid)}")
        if self.epochs < 1 or self.batch_size < 2 or self.n_runs < 1 or self.crop_size < 16:
            raise ValueError(
                f"need epochs >= 1, batch_size >= 2 (BatchNorm), n_runs >= 1, crop_size >= 16; got epochs={self.epochs}, "
                f"batch_size={self.batch_size}, n_runs={self.n_runs}, crop_size={self.crop_size}"
            )
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {self.scale_range}")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError(f"milestones are fractions of the run in (0, 1), got {self.milestones}")


def lr_factor(protocol: Any, t: float) -> float:
    """Multiplier of the base lr after a fraction t in [0, 1) of the steps."""
    if protocol.schedule == "poly":
        return (1.0 - t) ** protocol.poly_power
    return protocol.gamma ** sum(t >= m for m in protocol.milestones)


def fused(params: list) -> bool:
    """Whether torch's fused optimizer kernels (one per tensor) apply: every parameter on a CPU or CUDA device.
    The same update up to float rounding; measured on this CPU (19M parameters, one thread): an Adam step
    80.8 -> 13.1 ms (Seg. NYUD: 36% of its step was the per-tensor Adam), an SGD step 22.8 -> 10.9 ms."""
    from pretrain.train import FUSED_DEVICES

    return bool(params) and all(p.device.type in FUSED_DEVICES for p in params)


def make_optimizer(params: list, protocol: Any) -> torch.optim.Optimizer:
    kw = {"lr": protocol.lr, "weight_decay": protocol.weight_decay, "fused": fused(params)}
    if protocol.optimizer == "sgd":
        return torch.optim.SGD(params, momentum=protocol.momentum, **kw)
    return torch.optim.Adam(params, **kw)


# ----------------------------------------------------------------------------- the training loop (shared)


class Preempted(Exception):
    """Raised by a progress callback to stop a run between epochs (tests: a SLURM preemption)."""


def finetune(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step_loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    n_items: int,
    batch_size: int,
    total_steps: int,
    lr_at: Callable[[float], float],
    checkpoint: Path,
    seed: int,
    progress: Callable[[dict], None],
    stage: str,
) -> list[float]:
    """Trains for `total_steps` steps of `batch_size` items (the last partial batch of an epoch is dropped);
    step_loss(indices, generator) -> scalar loss. Checkpoints {model, optimizer, step, losses, rng} at every epoch
    end and resumes from `checkpoint` if present. Returns the mean loss of each epoch."""
    per_epoch = n_items // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} exceeds the {n_items} training items")
    epochs = math.ceil(total_steps / per_epoch)
    step, losses = 0, []
    if checkpoint.exists():
        from pretrain.train import load_optimizer_state

        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        load_optimizer_state(optimizer, state["optimizer"])
        step, losses = state["step"], state["losses"]
        torch.set_rng_state(state["rng"])
    for epoch in range(len(losses), epochs):
        model.train()
        g = torch.Generator().manual_seed(seed * 100003 + epoch)  # data order and augmentation of this epoch
        order = torch.randperm(n_items, generator=g)
        total = []
        for b in range(min(per_epoch, total_steps - step)):
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * lr_at(step / total_steps)
            loss = step_loss(order[b * batch_size : (b + 1) * batch_size], g)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{stage}: loss is {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total.append(loss.item())
            step += 1
        losses.append(float(np.mean(total)))
        _save(checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                           "losses": losses, "rng": torch.get_rng_state()})  # fmt: skip
        progress({"stage": stage, "epoch": epoch + 1, "epochs": epochs, "loss": losses[-1]})
    return losses


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def with_initial_lr(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return optimizer


# ----------------------------------------------------------------------------- augmentation


def augment(
    images: Sequence[torch.Tensor],
    target: Sequence[torch.Tensor],
    protocol: DenseProtocol,
    g: torch.Generator,
    fill: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: random scale in scale_range, horizontal flip, random crop_size crop (padded: image 0 after
    normalisation, target `fill`). N float images (3,H_i,W_i) and targets (H_i,W_i), of any sizes (a list, or
    a stacked tensor) -> (N,3,S,S), (N,S,S). Four draws of `g` per image, in order."""
    lo, hi = protocol.scale_range
    S = protocol.crop_size
    out_x, out_y = [], []
    for x, y in zip(images, target):
        q = torch.rand(4, generator=g).tolist()
        h, w = x.shape[-2:]
        size = (max(1, round(h * (lo + (hi - lo) * q[0]))), max(1, round(w * (lo + (hi - lo) * q[0]))))
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
        y = F.interpolate(y[None, None].float(), size=size, mode="nearest")[0, 0].to(y.dtype)
        if protocol.flip and q[1] < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        ph, pw = max(S - size[0], 0), max(S - size[1], 0)
        x = F.pad(x, (0, pw, 0, ph), value=0.0)
        y = F.pad(y, (0, pw, 0, ph), value=fill)
        top = int(q[2] * (x.shape[-2] - S + 1))
        left = int(q[3] * (x.shape[-1] - S + 1))
        out_x.append(x[:, top : top + S, left : left + S])
        out_y.append(y[top : top + S, left : left + S])
    return torch.stack(out_x), torch.stack(out_y)


# ----------------------------------------------------------------------------- reading a split


def _split(data: Any, depth: bool, what: str) -> tuple[Any, Any]:
    """(images, targets) of a split, indexed alike item by item: a stacked uint8 (N,3,H,W) tensor and (N,H,W)
    targets (the bias world), or sequences of (3,H_i,W_i) / (H_i,W_i) items decoded when read (real data)."""
    name = "depth" if depth else "class_mask"
    targets = getattr(data, name)
    if targets is None:
        raise ValueError(f"{what}: the split has no {name} targets; this dataset cannot be used for this task")
    if len(data.images) == 0:
        raise ValueError(f"{what}: the split is empty (0 images); check the dataset root and its split file")
    if len(data.images) != len(targets):
        raise ValueError(f"{what}: {len(data.images)} images but {len(targets)} {name} targets; they must pair up")
    return data.images, targets


def _items(images: Any, targets: Any, idx: Sequence[int], what: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (image uint8 (3,H,W), target (H,W)) pairs at idx, checked to agree in size; sequences are decoded in
    threads (the whole split is never held), a tensor is only indexed (views)."""

    def item(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = images[i], targets[i]
        if x.ndim != 3 or x.shape[0] != 3 or x.shape[-2:] != y.shape:
            files = getattr(images, "files", None)
            named = f" ({files[i]})" if files is not None else ""
            raise ValueError(
                f"{what}: image {i}{named} is {tuple(x.shape)} but its target is {tuple(y.shape)}; an image must be "
                "(3,H,W) and its mask/depth map (H,W) of the same size: fix or remove that pair"
            )
        return x, y

    idx = [int(i) for i in idx]
    if isinstance(images, torch.Tensor) or len(idx) <= 1:
        return [item(i) for i in idx]
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:  # PIL decoding releases the GIL
        return list(pool.map(item, idx))


def _same_size(items: list[tuple[torch.Tensor, torch.Tensor]]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """items grouped by image size, in order of first appearance (one group when all sizes agree)."""
    groups: dict[tuple[int, ...], list] = {}
    for x, y in items:
        groups.setdefault(tuple(x.shape), []).append((x, y))
    return list(groups.values())


# ----------------------------------------------------------------------------- one run


def build_model(backbone_path: Path, outputs: int, protocol: DenseProtocol) -> DenseModel:
    from pretrain.backbones import load_backbone
    from pretrain.convs import live_tap_convs

    body = trunk(load_backbone(backbone_path))
    if protocol.head == "fcn":
        head = fcn_head(body.out_dim, outputs, protocol.head_channels, protocol.head_dilation)
    else:
        head = deeplabv3_head(body.out_dim, outputs, protocol.head_channels, tuple(protocol.aspp_rates))
    return DenseModel(body, live_tap_convs(head))  # dilated 3x3s on small maps: centre taps only


def train_run(train: Any, protocol: DenseProtocol, depth: bool, run: int, ctx: Any, what: str = "train") -> nn.Module:
    """One finetuning run (seed + run) on the train split; resumes from ctx.checkpoint("run<r>.pt"). Each batch reads
    its images from the split (any sizes), normalises and augments them one by one, and stacks the crops."""
    images, targets = _split(train, depth, what)
    seed = protocol.seed + run
    torch.manual_seed(seed)  # the head's initialisation (and ASPP dropout)
    model = build_model(ctx.backbone_path, 1 if depth else train.num_classes, protocol).to(ctx.device)
    optimizer = with_initial_lr(make_optimizer(list(model.parameters()), protocol))
    fill = 0.0 if depth else float(protocol.ignore_index)

    def step_loss(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        batch = _items(images, targets, idx.tolist(), what)
        x, y = augment([normalize(x[None])[0] for x, _ in batch], [y for _, y in batch], protocol, g, fill)
        out = model(x.to(ctx.device))
        y = y.to(ctx.device)
        if depth:
            valid = y > 0
            return F.mse_loss(out[:, 0][valid], y[valid])
        return F.cross_entropy(out, y, ignore_index=protocol.ignore_index)

    model.losses = finetune(
        model, optimizer, step_loss, len(images), protocol.batch_size,
        protocol.epochs * (len(images) // protocol.batch_size), lambda t: lr_factor(protocol, t),
        ctx.checkpoint(f"run{run}.pt"), seed, ctx.progress, f"finetune run {run + 1}/{protocol.n_runs}",
    )  # fmt: skip
    return model


@torch.no_grad()
def evaluate(
    model: nn.Module, val: Any, protocol: DenseProtocol, depth: bool, device: str, what: str = "val"
) -> tuple[float, int]:
    """(mIoU in percent from the split's summed confusion matrix, or RMSE pooled over the valid pixels; the
    number of pixels scored). Each image at its own size, no padding: the dilated trunk and the heads take any
    size and the logits are upsampled to the input. Up to eval_batch_size images of equal size run together."""
    model.eval()
    images, targets = _split(val, depth, what)
    confusion = np.zeros((val.num_classes, val.num_classes), dtype=np.int64)
    sse, pixels = 0.0, 0  # depth: summed squared error (float64) and valid pixels
    for start in range(0, len(images), protocol.eval_batch_size):
        chunk = _items(images, targets, range(start, min(start + protocol.eval_batch_size, len(images))), what)
        for group in _same_size(chunk):
            x, y = torch.stack([x for x, _ in group]), torch.stack([y for _, y in group])
            out = model(normalize(x).to(device)).float().cpu()
            if depth:
                valid = y > 0  # NYUD: 0 = invalid depth
                sse += float(((out[:, 0].double() - y.double())[valid] ** 2).sum())
                pixels += int(valid.sum())
            else:
                confusion += confusion_matrix(out.argmax(1), y, val.num_classes, protocol.ignore_index)
    if depth:
        if pixels == 0:
            raise ValueError(f"{what}: RMSE is undefined: no valid (> 0) depth pixel in the split")
        return math.sqrt(sse / pixels), pixels
    return miou(confusion), int(confusion.sum())


def run_dense(spec: dict, ctx: Any) -> dict:
    """Segmentation or depth (by the target's metric): n_runs finetuning runs, scored on val; mean and std."""
    from transfer.data import load_dense
    from transfer.linear import torch_threads  # here: transfer.linear imports the task registry

    protocol = DenseProtocol(**spec["protocol"])
    depth = protocol.metric == "rmse"
    splits = {s: load_dense(spec["data"], s, ctx.cache_dir / "biasworld", ctx.roots) for s in ("train", "val")}
    name = spec["data"]["name"]
    runs, curves, start = [], [], time.perf_counter()
    with torch_threads(protocol.threads):
        for run in range(protocol.n_runs):
            model = train_run(splits["train"], protocol, depth, run, ctx, f"{name} train")
            ctx.progress({"stage": f"evaluate run {run + 1}/{protocol.n_runs}"})
            value, pixels = evaluate(model, splits["val"], protocol, depth, ctx.device, f"{name} val")
            runs.append(value)
            curves.append(model.losses)
    return {
        "value": float(np.mean(runs)),
        "metric": protocol.metric,
        "std": float(np.std(runs, ddof=1)) if len(runs) > 1 else 0.0,
        "runs": runs,
        "losses": curves,
        "val_pixels": pixels,  # pixels scored per run: labelled (not ignore_index) or valid depth (> 0)
        "fit_s": time.perf_counter() - start,
    }


def _register() -> None:
    from transfer.tasks import Task, register

    # Cityscapes and NYUD (A.3): Adam 1e-4 with the poly schedule; NYUD with the DeepLab-v3 decoder
    adam = {"optimizer": "adam", "lr": 1e-4, "schedule": "poly"}
    nyud = {**adam, "epochs": 100, "batch_size": 8, "crop_size": 512, "head": "deeplabv3"}
    register(
        Task(
            name="segmentation",
            protocol=DenseProtocol,
            run=run_dense,
            targets=("voc12_seg", "cityscapes", "nyud_seg"),
            per_target={
                "voc12_seg": {},
                "cityscapes": {**adam, "epochs": 150, "head_dilation": 1, "crop_size": 768},
                "nyud_seg": nyud,
            },
            description="end-to-end finetuning, dilated ResNet + FCN / DeepLab-v3 head, mIoU on val (Table 3)",
        )
    )
    register(
        Task(
            name="depth",
            protocol=DenseProtocol,
            run=run_dense,
            targets=("nyud_depth",),
            per_target={"nyud_depth": nyud},
            description="NYUD depth: the NYUD segmentation model and schedule, MSE loss, RMSE on val (Table 3)",
        )
    )


_register()
