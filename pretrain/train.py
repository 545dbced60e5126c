"""MoCo-v2 pretraining: feed (anchor, positive) batches to MoCo, step SGD, checkpoint every epoch.

Learning rate: cosine decay adjusted once per epoch, lr_e = lr * 0.5 * (1 + cos(pi e / E)), as the
official main_moco.py (--cos) does. Batches drop the last incomplete one. Resumes from
workdir/checkpoint.pt.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pretrain.augment import BatchAugment, CropViews
from pretrain.backbones import save_backbone
from pretrain.config import PretrainConfig
from pretrain.moco import MoCo

Progress = Callable[[dict], None]
Batches = Iterator[tuple[Tensor, Tensor]]
EXECUTION_KEYS = ("epochs", "device", "threads", "num_workers")  # may change between resumes
PROGRESS_EVERY = 10  # steps


def pretrain(
    cfg: PretrainConfig,
    data: Tensor | torch.utils.data.Dataset,
    workdir: Path,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Pretrain MoCo-v2 on `data` (uint8 N x 3 x H x W tensor, or a Dataset of PIL images)."""
    called = time.perf_counter()
    _check(cfg, data)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.device)
    model, optimizer = _build(cfg, device)
    generator = torch.Generator().manual_seed(cfg.seed)  # all augmentation and data order
    state: dict[str, Any] = {"epoch": 0, "loss_history": []}
    checkpoint = workdir / "checkpoint.pt"
    if checkpoint.exists():
        state = _resume(checkpoint, cfg, model, optimizer, generator)
    steps = len(data) // cfg.batch_size
    seen, busy = 0, 0.0
    for epoch in range(state["epoch"], cfg.epochs):
        _set_lr(optimizer, cfg, epoch)
        start = time.perf_counter()
        batches = _batches(cfg, data, generator, device)
        loss = _train_epoch(model, optimizer, batches, cfg, epoch, steps, progress)
        busy, seen = busy + time.perf_counter() - start, seen + steps * cfg.batch_size
        state = {"epoch": epoch + 1, "loss_history": [*state["loss_history"], loss]}
        _save_checkpoint(checkpoint, cfg, model, optimizer, generator, state)
    backbone = save_backbone(model.backbone, cfg.moco.arch, workdir / "backbone.pt")
    return {
        "epochs": cfg.epochs,
        "loss_history": state["loss_history"],
        "images_per_s": seen / busy if busy else None,  # (anchor, positive) pairs/s while training
        "wall_s": time.perf_counter() - called,  # this call, resumed epochs only
        "backbone": str(backbone),
    }


def _build(cfg: PretrainConfig, device: torch.device) -> tuple[MoCo, torch.optim.Optimizer]:
    """MoCo initialised from cfg.seed; SGD over theta_f only (f' moves by momentum)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = MoCo(cfg.moco).to(device)
    optimizer = torch.optim.SGD(
        model.query_parameters(),
        lr=cfg.lr,
        momentum=cfg.sgd_momentum,
        weight_decay=cfg.weight_decay,
    )
    return model, optimizer


def _train_epoch(
    model: MoCo,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    cfg: PretrainConfig,
    epoch: int,
    steps: int,
    progress: Progress | None,
) -> float:
    """One pass; returns the mean loss. epoch/step are reported 1-based."""
    autocast = torch.autocast(
        _device(cfg.device).type, torch.bfloat16, enabled=cfg.precision == "bf16"
    )
    total, start = 0.0, time.perf_counter()
    for step, (anchor, positive) in enumerate(batches):
        with autocast:
            loss = model(anchor, positive)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(
                f"loss is {value} at epoch {epoch + 1}/{cfg.epochs}, step {step + 1}/{steps}"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += value
        if progress and ((step + 1) % PROGRESS_EVERY == 0 or step + 1 == steps):
            rate = (step + 1) * cfg.batch_size / (time.perf_counter() - start)
            progress(
                {
                    "epoch": epoch + 1,
                    "epochs": cfg.epochs,
                    "step": step + 1,
                    "steps": steps,
                    "loss": value,
                    "images_per_s": rate,
                }
            )
    return total / steps


def _batches(
    cfg: PretrainConfig,
    data: Tensor | torch.utils.data.Dataset,
    generator: torch.Generator,
    device: torch.device,
) -> Batches:
    """(anchor x, positive x+) pairs of augmented views, N x 3 x S x S each, in a random order."""
    augment, n = BatchAugment(cfg.aug), cfg.batch_size
    order = torch.randperm(len(data), generator=generator)
    if isinstance(data, Tensor):  # in memory: crop and colour whole batches
        for s in range(len(data) // n):
            x = data[order[s * n : (s + 1) * n]].to(device, non_blocking=True)
            yield augment(torch.cat([x, x]), generator).chunk(2)
        return
    seeds = torch.randint(2**62, (len(data),), generator=generator)  # per-image crop seeds
    loader = torch.utils.data.DataLoader(
        CropViews(data, cfg.aug),
        batch_size=n,
        sampler=list(zip(order.tolist(), seeds.tolist())),
        drop_last=True,
        num_workers=cfg.num_workers,
    )
    for views in loader:  # N x 2 x 3 x S x S uint8, cropped per image
        # 2N x 3 x S x S: anchors, then positives
        views = views.to(device).transpose(0, 1).flatten(0, 1)
        yield augment.colour(views, generator).chunk(2)


def _set_lr(optimizer: torch.optim.Optimizer, cfg: PretrainConfig, epoch: int) -> None:
    lr = cfg.lr * (
        0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs)) if cfg.schedule == "cosine" else 1.0
    )
    for group in optimizer.param_groups:
        group["lr"] = lr


def _save_checkpoint(
    path: Path,
    cfg: PretrainConfig,
    model: MoCo,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    state: dict[str, Any],
) -> None:
    """Atomic: write a temporary file, then os.replace. Holds everything a resume needs."""
    blob = {
        **state,  # epoch (completed), loss_history
        "config": cfg.to_dict(),
        "model": model.state_dict(),  # both encoders, queue Q and its pointer
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),  # split-BN shuffles
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),  # augmentation and data order
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def _resume(
    path: Path,
    cfg: PretrainConfig,
    model: MoCo,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> dict[str, Any]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    saved, now = blob["config"], cfg.to_dict()
    changed = sorted(
        k for k in set(saved) | set(now) if k not in EXECUTION_KEYS and saved.get(k) != now.get(k)
    )
    if changed:
        raise ValueError(
            f"{path} was written with a different config ({', '.join(changed)}); use a new workdir"
        )
    model.load_state_dict(blob["model"])
    optimizer.load_state_dict(blob["optimizer"])
    torch.set_rng_state(blob["torch_rng"])
    if blob["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    generator.set_state(blob["generator"])
    return {"epoch": blob["epoch"], "loss_history": list(blob["loss_history"])}


def _device(name: str) -> torch.device:
    return torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    )


def _check(cfg: PretrainConfig, data: Tensor | torch.utils.data.Dataset) -> None:
    if cfg.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision '{cfg.precision}': valid are fp32, bf16")
    if cfg.schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule '{cfg.schedule}': valid are cosine, constant")
    if len(data) < cfg.batch_size:
        raise ValueError(
            f"{len(data)} images is less than one batch of {cfg.batch_size} (batches drop the last)"
        )
    if cfg.moco.queue_size % cfg.batch_size:
        raise ValueError(
            f"queue size K={cfg.moco.queue_size} must be a multiple of the batch size "
            f"N={cfg.batch_size}"
        )
    if cfg.moco.split_bn > 1 and cfg.batch_size % cfg.moco.split_bn:
        raise ValueError(
            f"batch size {cfg.batch_size} must be a multiple of split_bn={cfg.moco.split_bn}"
        )
    if isinstance(data, Tensor) and (
        data.dtype != torch.uint8 or data.dim() != 4 or data.shape[1] != 3
    ):
        raise ValueError(
            f"image tensor must be uint8 N x 3 x H x W, got {data.dtype} {tuple(data.shape)}"
        )
