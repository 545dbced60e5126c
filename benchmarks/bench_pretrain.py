"""Pretraining throughput: the harness's MoCo-v2 step against the official MoCo code's way of doing it.

Reference (facebookresearch/moco main_moco.py, aug+): per-image torchvision transforms on PIL images in
DataLoader workers (RandomResizedCrop(scale 0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8, Grayscale p=0.2,
GaussianBlur(sigma 0.1-2) p=0.5, HFlip, ToTensor, Normalize), fp32, default memory format; multi-crop adds
small RandomResizedCrops with the same colour pipeline (SwAV's way). Harness: `pretrain.train.pretrain` itself
(batched augmentation with per-sample parameters, then the same MoCo model), fp32, bf16 autocast, and bf16 with
the model and batches in channels_last (`memory_format`).
Both train the same `pretrain.moco.MoCo` (ResNet-18) with the same SGD, resolution, batch and torch threads.
A run is one epoch of `steps` steps. Two figures come from each run, in images (anchors) per second: the whole
epoch, warm-up and loader start included ("cold"), and its steps after the first `WARM_AFTER` ("warm": the steady
state of a long run, where oneDNN's first-call kernel set-up and the reference's first batches, made while the
model waits, are paid once). Each loop runs `--repeats` times (default 3), the loops interleaved, and its figure is
the median run's; a speedup is the median over repeats of that repeat's loop against the same repeat's reference
(run minutes apart: this VM's speed swings by up to 3x for minutes at a time, and single runs swung the ratios by
0.2-0.7 between two runs an hour apart).
bf16 changes numerics: the same seeded run (same batches, same augmentations) in fp32, bf16 and bf16 channels_last
must keep its per-epoch loss within `--loss-tol` (relative) of fp32.

python benchmarks/bench_pretrain.py [--quick] [--threads 2] [--workers 2] [--repeats 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision.transforms as T
from PIL import Image, ImageFilter

from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD
from pretrain.config import PretrainConfig
from pretrain.moco import MoCo
from pretrain.train import PROGRESS_EVERY, pretrain

sys.path.insert(0, str(Path(__file__).parent))
from record import RESULTS, table, write  # noqa: E402

FULL = {
    "size": 64,
    "image": 96,
    "batch": 128,
    "queue": 4096,
    "steps": 16,
    "check_epochs": 3,
    "check_steps": 4,
}
QUICK = {
    "size": 32,
    "image": 40,
    "batch": 16,
    "queue": 64,
    "steps": 11,
    "check_epochs": 2,
    "check_steps": 1,
}
N_SMALL = 4  # multi-crop: the paper's 4 small crops (pretrain/methods.py "mc")
# the warm figure's first step: pretrain's progress reports come every PROGRESS_EVERY steps and at an epoch's end
WARM_AFTER = PROGRESS_EVERY


def images(n: int, side: int, seed: int = 0) -> torch.Tensor:
    """n smooth random uint8 images (n, 3, side, side): low-frequency colour fields, so crops, jitter and
    blur do real work (content does not change the cost of a step)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, side // 8, side // 8, generator=g)
    return (
        (torch.nn.functional.interpolate(coarse, size=side, mode="bicubic") * 255)
        .clamp(0, 255)
        .byte()
    )


def config(
    s: dict, threads: int, precision: str, multicrop: bool, epochs: int = 1, device: str = "cpu",
    workers: int = 0, memory_format: str = "contiguous",
) -> PretrainConfig:
    """The harness config of one run (tiny profile's lr, plain MoCo-v2 or multi-crop; s["arch"], default
    ResNet-18). workers: DataLoader workers of the per-image path (a Dataset of PIL images)."""
    return PretrainConfig.from_dict(
        {
            "moco": {"arch": s.get("arch", "resnet18"), "queue_size": s["queue"], "knn_warmup": 0},
            "aug": {"size": s["size"], "n_small": N_SMALL if multicrop else 0},
            "epochs": epochs,
            "batch_size": s["batch"],
            "lr": 0.03,
            "precision": precision,
            "device": device,
            "threads": threads,
            "num_workers": workers,
            "memory_format": memory_format,
        }
    )


# ----------------------------------------------------------------------------- the reference


class GaussianBlur:
    """main_moco.py's blur: PIL GaussianBlur with sigma uniform in [0.1, 2]."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, x: Image.Image) -> Image.Image:
        return x.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


def aug_plus(size: int, scale: tuple[float, float]) -> T.Compose:
    """main_moco.py's augmentation (aug+), at `size` px and crop `scale`."""
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=scale),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([GaussianBlur()], p=0.5),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class Views(torch.utils.data.Dataset):
    """main_moco.py's TwoCropsTransform over PIL images (plus small crops for multi-crop): a list of views."""

    def __init__(self, pil: list[Image.Image], cfg: PretrainConfig) -> None:
        self.pil, self.n_small = pil, cfg.aug.n_small
        self.large = aug_plus(cfg.aug.size, cfg.aug.crop_scale)
        self.small = aug_plus(cfg.aug.small_side, cfg.aug.small_scale)

    def __len__(self) -> int:
        return len(self.pil)

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        image = self.pil[i]
        return [self.large(image), self.large(image)] + [
            self.small(image) for _ in range(self.n_small)
        ]


def pil_images(data: torch.Tensor) -> list[Image.Image]:
    """The uint8 N x 3 x H x W images as PIL images (what a real dataset's loader hands the transforms)."""
    return [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in data]


def warm_rate(steps: int, batch: int, seconds_at: dict[int, float]) -> float | None:
    """Images per second over the steps after WARM_AFTER, from the seconds since the epoch's start at the end
    of step WARM_AFTER and of the last step; None when the epoch is not longer than WARM_AFTER steps."""
    if steps <= WARM_AFTER:
        return None
    return (steps - WARM_AFTER) * batch / (seconds_at[steps] - seconds_at[WARM_AFTER])


def reference_epoch(cfg: PretrainConfig, data: torch.Tensor, workers: int) -> dict:
    """One epoch of the official-style loop (fp32, default memory format, per-image PIL aug in workers; on a
    GPU, main_moco.py's pinned batches copied with non_blocking): images per second over the epoch and warm
    (`warm_rate`) and, on a GPU, the peak memory allocated."""
    device = torch.device(cfg.device)
    cuda = device.type == "cuda"
    torch.manual_seed(cfg.seed)
    model = MoCo(cfg.moco).to(device)
    opt = torch.optim.SGD(model.query_parameters(), lr=cfg.lr, momentum=cfg.sgd_momentum,
                          weight_decay=cfg.weight_decay)  # fmt: skip
    loader = torch.utils.data.DataLoader(Views(pil_images(data), cfg), batch_size=cfg.batch_size, shuffle=True,
                                         num_workers=workers, drop_last=True, pin_memory=cuda)  # fmt: skip
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    seconds_at, start = {}, time.perf_counter()
    for step, views in enumerate(loader, 1):
        views = [v.to(device, non_blocking=True) for v in views]
        anchor, positive, small = views[0], views[1], views[2:]
        positives = [positive, torch.cat(small)] if small else [positive]  # small crops crop-major
        loss = model(anchor, positives)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in (WARM_AFTER, len(loader)):
            if cuda:
                torch.cuda.synchronize(device)
            seconds_at[step] = time.perf_counter() - start
    steps = len(loader)
    return {"images_per_s": steps * cfg.batch_size / seconds_at[steps],
            "warm_images_per_s": warm_rate(steps, cfg.batch_size, seconds_at),
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None}  # fmt: skip


# ----------------------------------------------------------------------------- the harness


def harness_run(cfg: PretrainConfig, data: torch.Tensor) -> dict:
    """pretrain.train.pretrain on the uint8 tensor, in a throwaway workdir; with one epoch, its warm images
    per second too, from the progress reports (each gives the images per second since the epoch's start)."""
    seconds_at = {}

    def progress(p: dict) -> None:
        seconds_at[p["step"]] = p["step"] * cfg.batch_size / p["images_per_s"]

    with tempfile.TemporaryDirectory() as workdir:
        out = pretrain(cfg, data, Path(workdir), progress=progress)
    if cfg.epochs == 1:
        out["warm_images_per_s"] = warm_rate(len(data) // cfg.batch_size, cfg.batch_size, seconds_at)
    return out


LOOPS = ("reference_fp32", "harness_fp32", "harness_bf16", "harness_bf16_channels_last")
SUFFIX = {"cold": "", "warm": "_warm"}  # a figure's key: f"{loop}{SUFFIX[when]}_img_s", f"speedup_...{SUFFIX[when]}"


def config_for(s: dict, threads: int, loop: str, multicrop: bool) -> PretrainConfig:
    """The config of one of LOOPS (the reference trains in fp32, in the default layout)."""
    precision = "fp32" if loop.endswith("fp32") else "bf16"
    layout = "channels_last" if loop.endswith("channels_last") else "contiguous"
    return config(s, threads, precision, multicrop, memory_format=layout)


def one_run(loop: str, cfg: PretrainConfig, data: torch.Tensor, workers: int) -> tuple[float, float | None]:
    """Images per second of one epoch of `loop` (one of LOOPS): (cold, warm)."""
    out = reference_epoch(cfg, data, workers) if loop == "reference_fp32" else harness_run(cfg, data)
    return out["images_per_s"], out["warm_images_per_s"]


def bf16_check(s: dict, threads: int, tol: float) -> dict:
    """The same seeded run in fp32, bf16 and bf16 channels_last: per-epoch mean losses and the largest relative
    gap of either bf16 run to fp32."""
    data = images(s["check_steps"] * s["batch"], s["image"], seed=1)
    runs = {"fp32": ("fp32", "contiguous"), "bf16": ("bf16", "contiguous"), "bf16_cl": ("bf16", "channels_last")}
    curves = {
        name: harness_run(config(s, threads, p, False, s["check_epochs"], memory_format=f), data)["loss_history"]
        for name, (p, f) in runs.items()
    }
    gap = max(abs(a - b) / abs(a) for run in ("bf16", "bf16_cl") for a, b in zip(curves["fp32"], curves[run]))
    return {"loss_fp32": curves["fp32"], "loss_bf16": curves["bf16"], "loss_bf16_channels_last": curves["bf16_cl"],
            "max_rel_gap": gap, "tolerance": tol, "within_tolerance": gap <= tol}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced size, seconds")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="folder of the JSON (default benchmarks/results)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both sides")
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    parser.add_argument("--loss-tol", type=float, default=0.02, help="bf16 vs fp32, relative")
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs of each loop, interleaved; the figure is their median (default 3, quick 1)")  # fmt: skip
    args = parser.parse_args(argv)
    s = QUICK if args.quick else FULL
    args.repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(args.threads)
    data = images(s["steps"] * s["batch"], s["image"])
    figures, rows = {}, []
    for name, multicrop in (("mocov2", False), ("multicrop", True)):
        runs = {(loop, when): [] for loop in LOOPS for when in SUFFIX}
        for _ in range(args.repeats):  # interleaved: a slow spell of a shared machine hits every loop alike
            for loop in LOOPS:
                cold, warm = one_run(loop, config_for(s, args.threads, loop, multicrop), data, args.workers)
                runs[loop, "cold"].append(cold)
                runs[loop, "warm"].append(warm)
        f = figures[name] = {}
        for (loop, when), r in runs.items():
            key = f"{loop}{SUFFIX[when]}_img_s"
            f[key], f[f"{key}_runs"] = statistics.median(r), r
        for loop in LOOPS[1:]:  # each repeat's loop against the same repeat's reference, minutes apart at most
            short = loop[len("harness_"):]
            for when, tail in SUFFIX.items():
                ratios = [h / r for h, r in zip(runs[loop, when], runs["reference_fp32", when])]
                f[f"speedup_{short}{tail}_runs"] = ratios
                f[f"speedup_{short}{tail}"] = statistics.median(ratios)
        rows.append((name, "reference (PIL, workers, fp32)", f["reference_fp32_img_s"], 1.0,
                     f["reference_fp32_warm_img_s"], 1.0))  # fmt: skip
        for loop in LOOPS[1:]:
            short = loop[len("harness_"):]
            rows.append((name, f"harness {short.replace('_', ' ', 1)}", f[f"{loop}_img_s"], f[f"speedup_{short}"],
                         f[f"{loop}_warm_img_s"], f[f"speedup_{short}_warm"]))  # fmt: skip
    figures["bf16_numerics"] = bf16_check(s, args.threads, args.loss_tol)
    table(rows, ("variant", "loop", "img/s", "x reference", f"warm img/s (steps > {WARM_AFTER})", "x warm reference"))
    check = figures["bf16_numerics"]
    print(
        f"bf16 vs fp32 loss: max relative gap {check['max_rel_gap']:.4f} (tolerance {args.loss_tol})"
    )
    settings = {**s, "warm_after": WARM_AFTER, "n_small": N_SMALL, "arch": "resnet18", "threads": args.threads,
                "workers": args.workers, "repeats": args.repeats, "quick": args.quick}  # fmt: skip
    write("bench_pretrain", settings, figures, args.out)
    return figures


if __name__ == "__main__":
    main()
