"""Pretraining: feed (anchor, positives) batches to the method's module (MoCo-v2 by default; SimCLR,
SwAV: pretrain/methods.py), step SGD, checkpoint every epoch.

Learning rate: cosine decay adjusted once per epoch, lr_e = lr * 0.5 * (1 + cos(pi e / E)), as the
official main_moco.py (--cos) does. Batches drop the last incomplete one. Resumes from
checkpoint.pt in resume_dir (workdir unless given). kNN-MoCo's loss_nn switches on at epoch moco.knn_warmup (0-based).

Several processes: DistributedDataParallel over the process group that `init_distributed` starts
from the environment (torchrun's RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR, or submitit's SLURM task
environment). batch_size is the global batch: rank r takes rows r::W of each one (the convention of
pretrain/moco.py's shuffling BN). Rank 0 writes checkpoints and backbones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from pretrain.augment import BatchAugment, CropViews
from pretrain.backbones import save_backbone
from pretrain.config import PretrainConfig, TrainConfig
from pretrain.methods import (
    build_model,
    forward_flags,
    frozen_parameters,
    needs_labels,
    section,
    with_section,
)
from pretrain.moco import MoCo, world

Progress = Callable[[dict], None]
Batches = Iterator[tuple[Tensor, list[Tensor], Tensor]]
# may change between resumes
EXECUTION_KEYS = ("epochs", "device", "threads", "num_workers", "save_backbone_epochs", "memory_format")
PROGRESS_EVERY = 10  # steps
# torch's fused SGD / Adam (one kernel per tensor): pretraining's SGD (ResNet-18 on 2 CPU cores: 13 -> 5 ms a step)
# and finetuning's (transfer/dense.py `fused`)
FUSED_DEVICES = ("cpu", "cuda")
log = logging.getLogger(__name__)


def pretrain(
    cfg: TrainConfig,
    data: Tensor | torch.utils.data.Dataset,
    workdir: Path,
    progress: Progress | None = None,
    labels: Tensor | None = None,
    resume_dir: Path | None = None,
) -> dict[str, Any]:
    """Pretrain cfg's method (MoCo, SimCLR, SwAV, supervised: pretrain/methods.py) on `data` (uint8
    N x 3 x H x W tensor, or a Dataset of PIL images). labels: per image, (N,) class ids or (N, C)
    0/1 multi-label rows; only the supervised method reads them (and needs them). The backbones go to
    workdir; the resume checkpoints (model, key encoder, queue, optimizer: ~3x a backbone) to resume_dir,
    workdir when None, which a caller may delete once it has the backbone."""
    called = time.perf_counter()
    rank, size = init_distributed()
    _check(cfg, data, size)
    cfg, labels = with_classes(cfg, labels, len(data))
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.device)
    given, cfg = cfg, resolve_auto(cfg, device)  # checkpoints keep `given`: "auto" resumes on any machine
    model, optimizer = _build(cfg, device)
    generator = torch.Generator().manual_seed(cfg.seed)  # data order (shared by all ranks)
    # augmentation: the same generator on one process (as before), one per rank otherwise
    augment_gen = generator if size == 1 else torch.Generator().manual_seed(cfg.seed + 7919 * rank)
    checkpoint = Path(resume_dir or workdir) / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    state = _resume(checkpoint, given, model, optimizer, generator, augment_gen)
    steps = len(data) // cfg.batch_size
    seen, busy = 0, 0.0
    for epoch in range(state["epoch"], cfg.epochs):
        _set_lr(optimizer, cfg, epoch)
        start = time.perf_counter()
        batches = _batches(cfg, data, generator, augment_gen, device)
        flags = forward_flags(cfg, epoch)
        loss = _train_epoch(model, optimizer, batches, cfg, epoch, steps, flags, progress, labels)
        busy, seen = busy + time.perf_counter() - start, seen + steps * cfg.batch_size
        state = {"epoch": epoch + 1, "loss_history": [*state["loss_history"], loss]}
        _save_checkpoint(checkpoint, given, _inner(model), optimizer, generator, augment_gen, state)
        if epoch + 1 in cfg.save_backbone_epochs and rank == 0:
            path = workdir / f"backbone_ep{epoch + 1}.pt"
            save_backbone(_inner(model).backbone, section(cfg).arch, path)
    backbone = workdir / "backbone.pt"
    if rank == 0:
        save_backbone(_inner(model).backbone, section(cfg).arch, backbone)
    return {
        "epochs": cfg.epochs,
        "loss_history": state["loss_history"],
        "loss_curve": state["loss_history"],  # per-epoch mean loss (fig 2, fig 5)
        "images_per_s": seen / busy if busy else None,  # (anchor, positive) pairs/s while training
        "wall_s": time.perf_counter() - called,  # this call, resumed epochs only
        "precision": cfg.precision,  # as run ("auto" resolved on this machine)
        "memory_format": cfg.memory_format,
        "backbone": str(backbone),
        "backbones": {
            e: str(workdir / f"backbone_ep{e}.pt") for e in sorted(cfg.save_backbone_epochs)
        },
    }


def random_init(cfg: PretrainConfig, workdir: Path) -> dict[str, Any]:
    """The paper's "Rand. init." rows: the backbone MoCo would start from (cfg.seed), never trained.
    BN running statistics stay at their init (mean 0, var 1), as torchvision's untrained models."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = MoCo(cfg.moco)
    backbone = save_backbone(model.backbone, cfg.moco.arch, workdir / "backbone.pt")
    return {"epochs": 0, "loss_history": [], "loss_curve": [], "images_per_s": None, "wall_s": 0.0,
            "backbone": str(backbone), "backbones": {}}  # fmt: skip


def init_distributed() -> tuple[int, int]:
    """(rank, world size). Starts the process group from the environment when it names more than
    one process: RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT (torchrun), or, with SLURM_NTASKS > 1 and
    no RANK, submitit's TorchDistributedEnvironment (which exports them). Backend: nccl on CUDA,
    gloo otherwise. One process: nothing starts, (0, 1)."""
    if world()[1] > 1 or not dist.is_available():
        return world()
    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return world()


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    """The method's module inside DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _build(cfg: TrainConfig, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The method's module initialised from cfg.seed; SGD over the parameters that require a
    gradient (MoCo: theta_f only, f' moves by momentum; in MoCo's query_parameters() order)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device, memory_format=_memory_format(cfg))
    params = [p for p in model.parameters() if p.requires_grad]
    if world()[1] > 1:  # MoCo's queue is the same on every rank, SwAV's per rank: no broadcast
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=ids, broadcast_buffers=False
        )
    optimizer = torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.sgd_momentum,
        weight_decay=cfg.weight_decay,
        # one kernel per tensor, the same update bit for bit; not when a parameter takes its first step later than
        # the others (SwAV's frozen prototypes): fused SGD refuses a mix of present and missing momentum buffers
        fused=device.type in FUSED_DEVICES and not frozen_parameters(_inner(model), 0),
    )
    return model, optimizer


def _train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    cfg: TrainConfig,
    epoch: int,
    steps: int,
    flags: dict[str, Any],
    progress: Progress | None,
    labels: Tensor | None = None,
) -> float:
    """One pass; returns the mean loss (over all processes). epoch/step are reported 1-based.
    flags: the method's per-epoch forward switches (methods.forward_flags); labels: each image's,
    passed as `target` for the batch's images to a method that wants them (supervised)."""
    frozen = frozen_parameters(_inner(model), epoch)
    autocast = torch.autocast(
        _device(cfg.device).type, torch.bfloat16, enabled=cfg.precision == "bf16"
    )
    total, start = 0.0, time.perf_counter()
    wants = needs_labels(cfg)
    layout = _memory_format(cfg)
    for step, (anchor, positives, index) in enumerate(batches):
        if layout is torch.channels_last:
            anchor = anchor.contiguous(memory_format=layout)
            positives = [x.contiguous(memory_format=layout) for x in positives]
        with autocast:
            if wants:
                loss = model(anchor, positives, target=labels[index].to(anchor.device), **flags)
            else:
                loss = model(anchor, positives, **flags)
        value = _mean_over_processes(loss)
        if not math.isfinite(value):
            raise FloatingPointError(
                f"loss is {value} at epoch {epoch + 1}/{cfg.epochs}, step {step + 1}/{steps}"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for p in frozen:  # no step at all, as SwAV's `p.grad = None` (momentum, weight decay)
            p.grad = None
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
    # the last step's update is never seen by a loss: an exploded step leaves non-finite weights
    bad = next((n for n, p in model.named_parameters() if not torch.isfinite(p).all()), None)
    if bad is not None:
        raise FloatingPointError(
            f"weights are not finite ({bad}) after epoch {epoch + 1}/{cfg.epochs}, step {steps}/{steps}:"
            " the loss exploded (lower the lr)"
        )
    return total / steps


def with_classes(
    cfg: TrainConfig, labels: Tensor | None, n: int
) -> tuple[TrainConfig, Tensor | None]:
    """A method that trains on labels (supervised): its config with num_classes read from the labels
    (or, when the spec sets it, checked against them), the labels checked; other methods' unchanged
    (their labels, if any, are not used)."""
    if not needs_labels(cfg):
        return cfg, None
    if labels is None:
        raise ValueError(
            "supervised pretraining needs the images' labels: this dataset gives none (a real set "
            "needs its class folders or annotations; the bias world always has them)"
        )
    labels = torch.as_tensor(labels)
    if len(labels) != n or labels.ndim not in (1, 2):
        raise ValueError(f"labels {tuple(labels.shape)}: need (N,) class ids or (N, C) 0/1 rows for N={n} images")
    if labels.ndim == 1 and (labels.dtype.is_floating_point or labels.min() < 0):
        raise ValueError("single-label targets must be class ids >= 0")
    classes = labels.shape[1] if labels.ndim == 2 else int(labels.max()) + 1
    given = section(cfg).num_classes
    if given is not None:  # set in the spec: the labels must fit it (a class may have no image)
        if classes > given or (labels.ndim == 2 and classes != given):
            kind = f"rows of width {classes}" if labels.ndim == 2 else f"class ids up to {classes - 1}"
            raise ValueError(
                f"supervised.num_classes={given}, but the labels have {kind}: leave "
                "supervised.num_classes unset to read it from the labels"
            )
        classes = given
    return with_section(cfg, num_classes=classes), labels.long() if labels.ndim == 1 else labels


def _memory_format(cfg: TrainConfig) -> torch.memory_format:
    """cfg.memory_format as torch's: the model's 4-d weights and each batch's views take it."""
    return torch.channels_last if cfg.memory_format == "channels_last" else torch.contiguous_format


def _mean_over_processes(loss: Tensor) -> float:
    value = loss.detach().float()
    if world()[1] > 1:
        dist.all_reduce(value)
        value /= world()[1]
    return value.item()


def _batches(
    cfg: TrainConfig,
    data: Tensor | torch.utils.data.Dataset,
    generator: torch.Generator,
    augment_gen: torch.Generator,
    device: torch.device,
) -> Batches:
    """(anchor x: N x 3 x S x S, positives X+: [N x 3 x S x S] + multi-crop [(n_small N) x 3 x s x
    s], index: the N images' indices in `data`) of augmented views, in a random order. N is this
    process's share of the batch."""
    augment, n = BatchAugment(cfg.aug), cfg.batch_size
    rank, size = world()
    order = torch.randperm(len(data), generator=generator)
    if isinstance(data, Tensor):  # in memory: crop and colour whole batches
        for s in range(len(data) // n):
            mine = order[s * n : (s + 1) * n][rank::size]
            yield *augment.views(data[mine].to(device, non_blocking=True), augment_gen), mine
        return
    seeds = torch.randint(2**62, (len(data),), generator=generator)  # per-image crop seeds
    items = list(zip(order.tolist(), seeds.tolist()))
    items = [item for s in range(len(data) // n) for item in items[s * n : (s + 1) * n][rank::size]]
    loader = torch.utils.data.DataLoader(
        CropViews(data, cfg.aug),
        batch_size=n // size,
        sampler=items,
        drop_last=True,
        num_workers=cfg.num_workers,
    )
    mine = torch.tensor([i for i, _ in items])
    for s, (large, small) in enumerate(loader):  # N x 2 x 3 x S x S and N x n_small x 3 x s x s uint8
        # 2N x 3 x S x S: anchors, then positives; small crop-major: row c N + i
        large = large.to(device).transpose(0, 1).flatten(0, 1)
        small = small.to(device).transpose(0, 1).flatten(0, 1) if cfg.aug.n_small else None
        yield *augment.finish(large, small, augment_gen), mine[s * len(large) // 2 : (s + 1) * len(large) // 2]


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
    augment_gen: torch.Generator,
    state: dict[str, Any],
) -> None:
    """Holds everything a resume needs. Several processes: rank 0 writes, with every rank's
    augmentation generator. Crash-safe at every instant: the new file's sha256 joins the digests
    first, the last checkpoint is kept as checkpoint.prev.pt, then the new one is renamed in."""
    rank, size = world()
    augment_states = [augment_gen.get_state()]
    if size > 1:
        augment_states = [None] * size
        dist.all_gather_object(augment_states, augment_gen.get_state())
        if rank != 0:
            return
    blob = {
        **state,  # epoch (completed), loss_history
        "config": cfg.to_dict(),
        "model": model.state_dict(),  # both encoders, queue Q and its pointer
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),  # split-BN shuffles
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),  # data order (and augmentation, one process)
        "augment_generators": augment_states,  # per rank
    }
    buffer = io.BytesIO()  # serialised once: hashed in memory, not read back from disk
    torch.save(blob, buffer)
    raw = buffer.getbuffer()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(raw)
    digests = _digests(path)
    _write_digests(path, [*digests[-1:], hashlib.sha256(raw).hexdigest()])
    if path.exists():
        os.replace(path, _previous(path))
    os.replace(tmp, path)


def _previous(path: Path) -> Path:
    return path.with_suffix(".prev.pt")


def _digests(path: Path) -> list[str]:
    """sha256 of the checkpoints that may be on disk (the current one and the previous one)."""
    try:
        return list(json.loads(path.with_suffix(".sha256").read_text()))
    except (FileNotFoundError, ValueError):
        return []


def _write_digests(path: Path, digests: list[str]) -> None:
    tmp = path.with_suffix(".sha256.tmp")
    tmp.write_text(json.dumps(digests))
    os.replace(tmp, path.with_suffix(".sha256"))


def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The newest checkpoint that is whole: its sha256 is recorded and torch can load it; falls
    back to checkpoint.prev.pt (a truncated or corrupt file is logged and skipped)."""
    digests = _digests(path)
    for candidate in (path, _previous(path)):
        if not candidate.exists():
            continue
        raw = candidate.read_bytes()
        if digests and hashlib.sha256(raw).hexdigest() not in digests:
            log.warning("checkpoint %s is corrupt or truncated (sha256 differs): skipped", candidate)
            continue
        try:
            blob = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except Exception as err:  # truncated zip, bad pickle: any load failure means unusable
            log.warning("checkpoint %s does not load (%s): skipped", candidate, err)
            continue
        log.info("resuming from %s (after epoch %d)", candidate, blob["epoch"])
        return blob
    if path.exists() or _previous(path).exists():
        log.warning("no checkpoint in %s loads: training starts over from epoch 0", path.parent)
    return None


def _resume(
    path: Path,
    cfg: PretrainConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    augment_gen: torch.Generator,
) -> dict[str, Any]:
    """Restore everything from the newest whole checkpoint; {epoch 0} when there is none."""
    blob = _load_checkpoint(path)
    if blob is None:
        return {"epoch": 0, "loss_history": []}
    rank, size = world()
    augment_states = blob.get("augment_generators", [None])
    if len(augment_states) != size:
        raise ValueError(f"{path} was written by {len(augment_states)} processes, not {size}")
    saved, now = blob["config"], cfg.to_dict()
    changed = sorted(
        k for k in set(saved) | set(now) if k not in EXECUTION_KEYS and saved.get(k) != now.get(k)
    )
    if changed:
        raise ValueError(
            f"{path} was written with a different config ({', '.join(changed)}); use a new workdir"
        )
    _inner(model).load_state_dict(blob["model"])
    load_optimizer_state(optimizer, blob["optimizer"])
    torch.set_rng_state(blob["torch_rng"])
    if blob["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    generator.set_state(blob["generator"])
    if size > 1:
        augment_gen.set_state(augment_states[rank])
    return {"epoch": blob["epoch"], "loss_history": list(blob["loss_history"])}


def _device(name: str) -> torch.device:
    return torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    )


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """optimizer.load_state_dict(state), keeping this optimizer's fused / foreach kernels: load_state_dict also
    restores the writer's choice, which a run resumed elsewhere (or written before a kernel changed) need not share."""
    kernels = [(g.get("fused"), g.get("foreach")) for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for g, (fused, foreach) in zip(optimizer.param_groups, kernels):
        g["fused"], g["foreach"] = fused, foreach


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively: a CUDA GPU with bf16 support, or a CPU whose oneDNN has bf16
    kernels and whose cores have bf16 dot products (x86 AVX512-BF16 or AMX; Arm BF16). Elsewhere bf16 is
    emulated, slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False  # no way to tell (not Linux): fp32, the safe choice
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(flags))


def resolve_auto(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """cfg with precision and memory_format "auto" resolved for `device`: precision bf16 (autocast) where the
    device computes bf16 natively (native_bf16), else fp32; memory_format channels_last when the precision is
    bf16 (the layout its CPU and GPU kernels are fastest in), else contiguous. On 2 AVX512-BF16 cores a tiny-profile
    pretraining step (32 px, batch 128) ran 1.3x (two threads) to 1.5x (one) faster in bf16 channels_last."""
    changes: dict[str, str] = {}
    if cfg.precision == "auto":
        changes["precision"] = "bf16" if native_bf16(device) else "fp32"
    if cfg.memory_format == "auto":
        bf16 = changes.get("precision", cfg.precision) == "bf16"
        changes["memory_format"] = "channels_last" if bf16 else "contiguous"
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _check(cfg: PretrainConfig, data: Tensor | torch.utils.data.Dataset, processes: int) -> None:
    if cfg.schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule '{cfg.schedule}': valid are cosine, constant")
    if len(data) < cfg.batch_size:
        raise ValueError(
            f"{len(data)} images is less than one batch of {cfg.batch_size} (batches drop the last)"
        )
    if cfg.batch_size % processes:
        raise ValueError(f"batch_size={cfg.batch_size}: must be a multiple of {processes} processes")
    if isinstance(data, Tensor) and (
        data.dtype != torch.uint8 or data.dim() != 4 or data.shape[1] != 3
    ):
        raise ValueError(
            f"image tensor must be uint8 N x 3 x H x W, got {data.dtype} {tuple(data.shape)}"
        )
