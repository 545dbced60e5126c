"""Cost per training step of each MoCo variant relative to plain MoCo-v2.

ResNet-18, 32 px crops of 64 px uint8 images, batch 64, queue 1024, CPU by default: one step =
augmentation (views) + forward + backward + SGD. Writes benchmarks/results/pretrain_variants.json.
python benchmarks/pretrain_variants.py [--steps 4] [--device cpu] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from pretrain.augment import BatchAugment
from pretrain.config import PretrainConfig
from pretrain.methods import variant
from pretrain.moco import MoCo

ROWS = {
    "plain": [],
    "iou_limited (0.5)": ["iou_limited"],
    "mc (4 small)": ["mc"],
    "cc": ["cc"],
    "a_plus": ["a_plus"],
    "nn": ["nn"],
    "cc+m_down+a_plus+nn": ["cc", "m_down", "a_plus", "nn"],
    "fixed_random_head": ["fixed_random_head"],
    "deeper_head": ["deeper_head"],
}
BASE = {"moco.arch": "resnet18", "moco.queue_size": 1024, "batch_size": 64, "moco.knn_warmup": 0}


def step_time(fields: dict, steps: int, device: torch.device) -> dict:
    cfg = PretrainConfig.from_dict({**fields, **BASE, "aug.size": 32})
    torch.manual_seed(0)
    model = MoCo(cfg.moco).to(device)
    opt = torch.optim.SGD(model.query_parameters(), lr=0.1, momentum=0.9)
    augment, gen = BatchAugment(cfg.aug), torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (cfg.batch_size, 3, 64, 64), dtype=torch.uint8, generator=gen)
    times, aug_times = [], []
    for i in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        anchor, positives = augment.views(data.to(device), gen)
        mid = time.perf_counter()
        loss = model(anchor, positives)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
            aug_times.append(mid - start)
    return {
        "step_s": sorted(times)[len(times) // 2],
        "augment_s": sorted(aug_times)[len(times) // 2],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = {}
    for name, names in ROWS.items():
        rows[name] = step_time(variant(*names), args.steps, device)
        rows[name]["relative"] = rows[name]["step_s"] / rows["plain"]["step_s"]
        print(
            f"{name:24s} {rows[name]['step_s']:.3f} s/step ({rows[name]['relative']:.2f}x), "
            f"augment {rows[name]['augment_s']:.3f} s",
            flush=True,
        )
    out = Path(__file__).parent / "results" / "pretrain_variants.json"
    meta = {
        "device": str(device),
        "threads": args.threads,
        "steps": args.steps,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
