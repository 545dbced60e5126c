"""Scaling (issue 7): how the cost of pretraining, the linear protocol and the planner grows with their sizes.

Settings come from the harness itself: one cell of bench_orchestration's table planned under the tiny profile gives
the pretraining job's config (MoCo-v2, ResNet-18, 32 px crops, batch 128, queue 1024, lr 0.03, and the precision
the job runs at: fp32, TrainConfig's default, which the tiny profile keeps) and the linear job's protocol (the
batched solver, tol 1e-4, max_iter 100; n_wd back at the 45 of ssl-transfer). Series:

- pretrain_images: an epoch over N bias-world images (the job's data spec at N images). A step costs the same at
  every N, so the epoch is floor(N / batch) x the step time measured once (n_small 0 below); what is measured per N
  is the data a job builds: `generate` (cold: render and write the cache, as a job's first run) and `load` (cached).
- pretrain_n_small: seconds per step of pretrain.train's own epoch loop (_train_epoch over _batches, the augmentation,
  forward, backward and SGD step that pretrain() runs; no checkpoint) with n_small small crops, after a warm-up step;
  the median of `repeats` passes of `steps` steps.
- linear_dim / linear_classes: transfer.linear.linear_eval (sweep, selection, refit) on bench_linear's synthetic
  features; one run per point after a small warm-up run. Class separation is held fixed across dims (sep scaled by
  sqrt(dim_ref / dim)) so that the iteration counts stay comparable.
- planner_cells: harness.planner.plan and harness.status.print_status (over a store holding every job's result) of
  bench_orchestration's table at `cells` cells; best of 3, as bench_orchestration.

Each series records its empirical exponent: the least-squares slope of log seconds against log size (n_small: of the
extra seconds over n_small 0, against n_small > 0). Benchmarks are not tests: no figure is checked against a time.

python benchmarks/bench_scaling.py [--quick] [--threads 2] [--linear-threads 1] [--precision fp32] [--out DIR]
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from statistics import median

import numpy as np
import torch
import yaml

from harness.planner import plan
from harness.spec import load_profile, load_table
from harness.store import Store
from pretrain.data import load_pretrain_images
from pretrain.methods import forward_flags, method_config
from pretrain.train import _batches, _build, _device, _train_epoch
from transfer.linear import LinearProtocol, linear_eval

sys.path.insert(0, str(Path(__file__).parent))
from bench_linear import features  # noqa: E402
from bench_orchestration import _status, fake_results, table_yaml, timed  # noqa: E402
from record import arguments, table, write  # noqa: E402

FULL = {
    "images": (1000, 4000, 16000),  # the tiny profile's 4000 in the middle
    "n_small": (0, 2, 4, 6),
    "steps": 4,
    "repeats": 3,
    "pretrain": {},  # the tiny profile's job as planned
    "n_train": 10_000,
    "n_val": 2_000,
    "n_test": 2_000,
    "dims": (128, 512, 2048),
    "classes": (2, 10, 100),
    "dim": 512,  # of the classes series, and the dim at which `sep` holds
    "n_classes": 10,  # of the dims series
    "sep": 0.12,  # bench_linear's FULL
    "cells": (10, 100, 1_000, 10_000),
}
QUICK = {
    **FULL,
    "images": (64, 128),
    "steps": 1,
    "repeats": 1,
    "pretrain": {"batch_size": 16, "moco.queue_size": 64},
    "n_train": 300,
    "n_val": 100,
    "n_test": 100,
    "dims": (16, 32),
    "classes": (2, 5),
    "dim": 32,
    "n_classes": 5,
    "sep": 0.4,  # bench_linear's QUICK
    "cells": (10, 100),
}
COLUMNS = 25  # bench_orchestration's table width; fewer cells: one row of `cells` columns


def exponent(sizes: list[float], seconds: list[float]) -> float | None:
    """Slope of log seconds against log size (least squares); None without two positive points."""
    points = [(s, t) for s, t in zip(sizes, seconds) if s > 0 and t > 0]
    if len({s for s, _ in points}) < 2:
        return None
    logs = np.log(np.array(points, dtype=np.float64))
    return float(np.polyfit(logs[:, 0], logs[:, 1], 1)[0])


def reading(e: float | None, x: str) -> str:
    """The exponent in words for the README: constant, linear, or ~x^e."""
    if e is None:
        return "n/a"
    if abs(e) < 0.15:
        return f"constant in {x}"
    if abs(e - 1.0) < 0.1:
        return f"linear in {x}"
    return f"~{x}^{e:.1f}"


def series(x: str, sizes: list, seconds: dict[str, list[float]], symbol: str, **extra) -> dict:
    """One series: its sizes, the seconds of each timed quantity, their exponents and readings."""
    exps = {k: exponent(sizes, v) for k, v in seconds.items()}
    return {"x": x, "sizes": list(sizes), "seconds": seconds, "exponent": exps,
            "reading": {k: reading(e, symbol) for k, e in exps.items()}, **extra}  # fmt: skip


def harness_jobs(profile: str) -> dict[str, dict]:
    """The spec of each job kind of one planned cell (bench_orchestration's table, 1 x 1) under `profile`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "one_cell.yaml"
        path.write_text(yaml.safe_dump(table_yaml(1, 1)))
        jobs = plan(load_table(str(path)), load_profile(profile)).jobs.values()
    return {job.kind: dict(job.spec) for job in jobs}


# ----------------------------------------------------------------------------- pretraining


def step_seconds(cfg, data: torch.Tensor, steps: int, repeats: int) -> list[float]:
    """Seconds per step of `repeats` passes of `steps` steps of pretrain.train's epoch loop, after a warm-up step."""
    device = _device(cfg.device)
    model, optimizer = _build(cfg, device)  # cfg.threads set here
    generator = torch.Generator().manual_seed(cfg.seed)
    flags = forward_flags(cfg, 0)

    def run(k: int) -> float:
        start = time.perf_counter()
        batches = _batches(cfg, data[: k * cfg.batch_size], generator, generator, device)
        _train_epoch(model, optimizer, batches, cfg, 0, k, flags, None)  # .item(): synchronised
        return (time.perf_counter() - start) / k

    run(1)
    return [run(steps) for _ in range(repeats)]


def data_seconds(data_spec: dict, n: int, repeats: int) -> tuple[float, float]:
    """Median seconds of the job's data path at n images: cold (render + cache write), then cached (load)."""
    spec = {**data_spec, "size": n}
    cold, cached = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            for times in (cold, cached):
                start = time.perf_counter()
                load_pretrain_images(spec, Path(cache))
                times.append(time.perf_counter() - start)
    return median(cold), median(cached)


def pretraining(s: dict, job: dict, threads: int, precision: str) -> dict:
    """The n_small series (step times), then the images series (epoch = steps x the n_small 0 step)."""
    fields = {k: v for k, v in job.items() if k not in ("method", "data")}
    data_spec = job["data"]
    need = s["steps"] * (s["pretrain"].get("batch_size") or job["batch_size"])
    data = load_pretrain_images({**data_spec, "size": max(s["images"][0], need)}, None)
    steps = {}
    for n in s["n_small"]:
        overrides = {**s["pretrain"], "aug.n_small": n, "threads": threads, "precision": precision}
        cfg = method_config(job["method"], {**fields, **overrides})
        steps[n] = median(step_seconds(cfg, data, s["steps"], s["repeats"]))
    batch = cfg.batch_size
    t = [steps[n] for n in s["n_small"]]
    extra = [(n, steps[n] - t[0]) for n in s["n_small"] if n > 0]
    per_crop = float(np.polyfit(s["n_small"], t, 1)[0]) / t[0]  # seconds per small crop / step at 0
    e = exponent([n for n, _ in extra], [d for _, d in extra])
    small = series("n_small", s["n_small"], {"step": t}, "n_small", img_s=[batch / v for v in t],
                   relative=[v / t[0] for v in t], per_crop_relative=per_crop,
                   small_side=cfg.aug.small_side)  # fmt: skip
    small["exponent"] = {"step_extra": e}  # the extra cost over n_small 0 (log 0 has no slope)
    small["reading"] = {"step_extra": reading(e, "n_small")}
    generate, load = zip(*(data_seconds(data_spec, n, s["repeats"]) for n in s["images"]))
    n_steps = [n // batch for n in s["images"]]
    epoch = [k * t[0] for k in n_steps]
    images = series("images", s["images"], {"epoch": epoch, "generate": list(generate), "load": list(load)},
                    "N", steps=n_steps, step_s=t[0], img_s=batch / t[0])  # fmt: skip
    return {"pretrain_images": images, "pretrain_n_small": small}


# ----------------------------------------------------------------------------- linear protocol


def sweep_seconds(s: dict, dim: int, classes: int, protocol: LinearProtocol) -> dict:
    """One linear_eval on synthetic features (bench_linear's generator), class separation fixed across dims."""
    sep = s["sep"] * (s["dim"] / dim) ** 0.5
    train, val, test = (features(s[f"n_{k}"], dim, classes, sep, seed)
                        for seed, k in enumerate(("train", "val", "test"), 1))  # fmt: skip
    start = time.perf_counter()
    out = linear_eval(train, val, test, protocol)
    return {
        "s": time.perf_counter() - start,
        "iterations": int(sum(out["n_iter"])),
        "test": out["test"],
    }


def linear(s: dict, protocol: LinearProtocol) -> dict:
    """The sweep's seconds against the feature dim (at n_classes) and against the classes (at dim)."""
    sweep_seconds({**QUICK, "n_train": 200}, 8, 2, protocol)  # warm-up: torch's first calls
    points = {
        "dim": [(d, s["n_classes"]) for d in s["dims"]],
        "classes": [(s["dim"], c) for c in s["classes"]],
    }
    out, done = {}, {}  # (dim, classes) -> run: the point both series share runs once
    for x, pairs in points.items():
        runs = [done.get(p) or done.setdefault(p, sweep_seconds(s, *p, protocol)) for p in pairs]
        sizes = [p[0] if x == "dim" else p[1] for p in pairs]
        fixed = {"classes": s["n_classes"]} if x == "dim" else {"dim": s["dim"]}
        out[f"linear_{x}"] = series(x, sizes, {"sweep": [r["s"] for r in runs]}, "D" if x == "dim" else "C",
                                    iterations=[r["iterations"] for r in runs],
                                    test=[r["test"] for r in runs], **fixed)  # fmt: skip
    return out


# ----------------------------------------------------------------------------- planner


def planner(s: dict, profile: str) -> dict:
    """plan and status of bench_orchestration's table at each cell count (rows x COLUMNS columns)."""
    rows_cols = [(max(1, c // COLUMNS), min(c, COLUMNS)) for c in s["cells"]]
    bad = [c for c, (r, k) in zip(s["cells"], rows_cols) if r * k != c]
    if bad:
        raise ValueError(f"cells {bad}: each must be below {COLUMNS} or a multiple of it")
    plan_s, status_s, jobs = [], [], []
    prof = load_profile(profile)
    for rows, cols in rows_cols:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench.yaml"
            path.write_text(yaml.safe_dump(table_yaml(rows, cols)))
            spec = load_table(str(path))
            seconds, the_plan = timed(lambda: plan(spec, prof))
            store = Store(Path(tmp) / "results")
            fake_results(store, [the_plan])
            plan_s.append(seconds)
            status_s.append(_status(list(the_plan.jobs.values()), store)[0])
            jobs.append(len(the_plan.jobs))
    both = [a + b for a, b in zip(plan_s, status_s)]
    seconds = {"plan_status": both, "plan": plan_s, "status": status_s}
    return {"planner_cells": series("cells", s["cells"], seconds, "cells", jobs=jobs)}


def main(argv: list[str] | None = None) -> dict:
    parser = arguments(__doc__, "tiny sizes, one repeat: seconds")
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads of pretraining (a job has the machine)",
    )
    # 1: as bench_linear (2 BLAS threads beside busy neighbours spin on the shared 2-core machine)
    parser.add_argument(
        "--linear-threads", type=int, default=1, help="torch threads of the linear sweep"
    )
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                        help="pretraining autocast (default: the planned job's, fp32 at tiny)")  # fmt: skip
    parser.add_argument(
        "--profile", default="tiny", help="harness profile the jobs are planned under"
    )
    args = parser.parse_args(argv)
    s = QUICK if args.quick else FULL
    start = time.perf_counter()
    jobs = harness_jobs(args.profile)
    precision = args.precision or jobs["pretrain"]["precision"]
    figures = pretraining(s, jobs["pretrain"], args.threads, precision)
    # the linear job's protocol at ssl-transfer's 45 wds (bench_orchestration's columns set n_wd)
    protocol = LinearProtocol(**{**jobs["transfer"]["protocol"], "n_wd": LinearProtocol.n_wd,
                                 "threads": args.linear_threads})  # fmt: skip
    figures |= linear(s, protocol)
    figures |= planner(s, args.profile)
    rows = [(name, size, key, v) for name, f in figures.items() for key, values in f["seconds"].items()
            for size, v in zip(f["sizes"], values)]  # fmt: skip
    table(rows, ("series", "size", "timed", "seconds"))
    table([(name, key, e if e is None else round(e, 2), f["reading"][key])
           for name, f in figures.items() for key, e in f["exponent"].items()],
          ("series", "timed", "exponent", "reading"))  # fmt: skip
    pre = jobs["pretrain"]
    settings = {**{k: list(v) if isinstance(v, tuple) else v for k, v in s.items()}, "quick": args.quick,
                "profile": args.profile, "threads": args.threads, "linear_threads": args.linear_threads,
                "precision": precision, "arch": pre["moco"]["arch"], "crop": pre["aug"]["size"],
                "batch": s["pretrain"].get("batch_size", pre["batch_size"]),
                "queue": s["pretrain"].get("moco.queue_size", pre["moco"]["queue_size"]),
                "data": {k: v for k, v in pre["data"].items() if k != "size"}, "protocol": asdict(protocol),
                "wall_s": time.perf_counter() - start}  # fmt: skip
    write("bench_scaling", settings, figures, args.out)
    return figures


if __name__ == "__main__":
    main()
