"""GPU pretraining throughput: the harness's MoCo-v2 step at the paper's size against the official MoCo loop.

ResNet-50 at 224 px, batch 256 on one GPU, queue 65536 (the paper profile's MoCo-v2). Reference: main_moco.py's
way (per-image PIL aug+ in DataLoader workers, pinned batches copied non_blocking, fp32, default memory format;
`bench_pretrain.reference_epoch`). Harness, each a real `pretrain.train.pretrain` epoch:
- `tensor`: images in host memory as one uint8 tensor; each batch goes to the GPU and is cropped, coloured and
  blurred there (the bias world's path), fp32, bf16 autocast, and bf16 with the model and batches in
  channels_last (`memory_format`, the layout tensor cores read without a transpose);
- `workers`: a Dataset of PIL images (a real dataset's path): per-image crops in DataLoader workers, colour and
  blur on the GPU, bf16, for each worker count in `--workers-grid`.
Each variant records images (anchors) per second over one epoch of `steps` steps (warm-up included, as in
bench_pretrain) and the peak GPU memory allocated. bf16 changes numerics: the same seeded run in fp32 and bf16
keeps its per-epoch loss within `--loss-tol` (relative) of fp32. The JSON names the device; the paper profile's
settings are chosen from these figures (README "Measured on a GPU").

Images are decoded once before timing on both sides (a JPEG decode per image costs both sides the same).
Without a CUDA device the full run stops and says so; `--quick` then runs the same code on the CPU at toy sizes
(CI checks that it works, never a figure).

python benchmarks/bench_gpu.py [--quick] [--workers 16] [--workers-grid 8,16] [--out DIR]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

from pretrain.train import pretrain

sys.path.insert(0, str(Path(__file__).parent))
from bench_pretrain import config, images, pil_images, reference_epoch  # noqa: E402
from record import arguments, table, write  # noqa: E402

FULL = {"arch": "resnet50", "size": 224, "image": 256, "batch": 256, "queue": 65536, "steps": 30,
        "check_epochs": 3, "check_steps": 8}  # fmt: skip
QUICK = {"arch": "resnet18", "size": 32, "image": 40, "batch": 16, "queue": 64, "steps": 2,
         "check_epochs": 2, "check_steps": 1}  # fmt: skip


def harness_epoch(cfg, data) -> dict:
    """One harness epoch (pretrain.train.pretrain) in a throwaway workdir: images/s, peak GPU memory, losses."""
    device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as workdir:
        out = pretrain(cfg, data, Path(workdir))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"images_per_s": out["images_per_s"], "peak_memory_gib": peak, "loss_history": out["loss_history"]}


def main(argv: list[str] | None = None) -> dict:
    parser = arguments(__doc__, "toy sizes on whatever device there is (CPU here): checks the code, seconds")
    cores = len(os.sched_getaffinity(0))
    parser.add_argument("--workers", type=int, default=cores, help="reference DataLoader workers (default: cores)")
    parser.add_argument("--workers-grid", default=None,
                        help="harness DataLoader workers to try, comma-separated (default: cores/2,cores)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--loss-tol", type=float, default=0.02, help="bf16 vs fp32, relative")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        parser.exit(2, "bench_gpu: no CUDA device here. Run it on a GPU machine, or with --quick to check the "
                       "code on the CPU (its figures mean nothing).\n")  # fmt: skip
    device = "cuda" if cuda else "cpu"
    s = QUICK if args.quick else FULL
    grid = [int(w) for w in args.workers_grid.split(",")] if args.workers_grid else sorted({max(1, cores // 2), cores})
    if args.quick:
        args.workers, grid = min(args.workers, 1), [min(grid)]
    data = images(s["steps"] * s["batch"], s["image"])
    pil = pil_images(data)

    def cfg(precision: str, workers: int = 0, epochs: int = 1, memory_format: str = "contiguous"):
        return config(s, args.threads, precision, False, epochs, device=device, workers=workers,
                      memory_format=memory_format)  # fmt: skip

    figures: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu"}
    ref = reference_epoch(cfg("fp32"), data, args.workers)
    figures["reference_fp32"] = {**ref, "workers": args.workers}
    variants = {"tensor_fp32": (cfg("fp32"), data), "tensor_bf16": (cfg("bf16"), data),
                "tensor_bf16_channels_last": (cfg("bf16", memory_format="channels_last"), data)}  # fmt: skip
    variants |= {f"workers{w}_bf16": (cfg("bf16", w), pil) for w in grid}
    rows = [("reference (PIL, workers, fp32)", ref["images_per_s"], 1.0, ref["peak_memory_gib"])]
    for name, (c, d) in variants.items():
        run = harness_epoch(c, d)
        speedup = run["images_per_s"] / ref["images_per_s"]
        figures[name] = {"images_per_s": run["images_per_s"], "speedup": speedup,
                         "peak_memory_gib": run["peak_memory_gib"]}  # fmt: skip
        rows.append((f"harness {name}", run["images_per_s"], speedup, run["peak_memory_gib"]))
    best = max(variants, key=lambda n: figures[n]["images_per_s"])
    figures["best"] = best
    check_data = images(s["check_steps"] * s["batch"], s["image"], seed=1)
    curves = {p: harness_epoch(cfg(p, epochs=s["check_epochs"]), check_data)["loss_history"] for p in ("fp32", "bf16")}
    gap = max(abs(a - b) / abs(a) for a, b in zip(curves["fp32"], curves["bf16"]))
    figures["bf16_numerics"] = {"loss_fp32": curves["fp32"], "loss_bf16": curves["bf16"], "max_rel_gap": gap,
                                "tolerance": args.loss_tol, "within_tolerance": gap <= args.loss_tol}  # fmt: skip
    print(f"device: {figures['device']}")
    table(rows, ("loop", "img/s", "x reference", "peak GiB"))
    print(f"best: {best}; bf16 vs fp32 loss: max relative gap {gap:.4f} (tolerance {args.loss_tol})")
    settings = {**s, "workers": args.workers, "workers_grid": grid, "threads": args.threads, "quick": args.quick}
    write("bench_gpu", settings, figures, args.out)
    return figures


if __name__ == "__main__":
    main()
