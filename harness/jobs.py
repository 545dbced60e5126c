"""The importable job callables. Local and SLURM executors run exactly these.

`JobRunner(results, key)` loads the job from the store, runs it unless it is done, and records the
outcome: result.json (atomically, only after success) or error.json. It is submitit-Checkpointable:
on preemption or timeout it is requeued, and the pretraining loop resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from harness.planner import Job
from harness.provenance import provenance
from harness.spec import spec_hash
from harness.store import Store, write_json_atomic

log = logging.getLogger("harness")
Display = Callable[[Job, dict], None]


@dataclass
class JobContext:
    store: Store
    job: Job
    roots: dict[str, str]
    display: Display | None = None
    _last_write: float = 0.0

    @property
    def workdir(self) -> Path:
        return self.store.work_dir(self.job)

    @property
    def resume_dir(self) -> Path:
        return self.store.resume_dir(self.job)

    def progress(self, info: dict) -> None:
        """Progress reports from inside the job: shown live, persisted at most every 2 s."""
        if self.display is not None:
            self.display(self.job, info)
        now = time.time()
        if now - self._last_write > 2.0:
            self.store.write_progress(self.job, {**info, "updated": now})
            self._last_write = now


class JobRunner(submitit.helpers.Checkpointable):
    """Run one stored job; submitit pickles this object, so it holds only strings."""

    def __init__(self, results: str, key: str, roots: dict[str, str] | None = None):
        self.results = str(results)
        self.key = key
        self.roots = dict(roots or {})

    def __call__(self, display: Display | None = None) -> dict:
        store = Store(self.results)
        job = store.load_job(self.key)
        if store.is_done(job):
            return store.result(job)
        return execute(JobContext(store, job, self.roots, display))

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # Requeue the same job: it resumes from resume/, the checkpoints written every epoch.
        return submitit.helpers.DelayedSubmission(JobRunner(self.results, self.key, self.roots))


def execute(ctx: JobContext) -> dict:
    """Run the job under its claim: a second runner of the same job waits, then finds it done."""
    store, job = ctx.store, ctx.job
    for dep in job.deps:
        dep_job = store.load_job(dep)
        if not store.is_done(dep_job):
            raise RuntimeError(f"{job.name}: dependency '{dep_job.name}' ({dep[:12]}) is not done")
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    with store.claim(job):
        if store.is_done(job):
            return store.result(job)
        return _execute_claimed(ctx)


def _execute_claimed(ctx: JobContext) -> dict:
    """Log, provenance, then result.json (atomically, only after success) or error.json."""
    store, job = ctx.store, ctx.job
    handler = _attach_log(store.job_dir(job.key, job.kind) / "log.txt")
    started = time.time()
    prov_path = store.job_dir(job.key, job.kind) / "provenance.json"
    write_json_atomic(prov_path, {**provenance(), "started": started, "spec_hash": job.key})
    try:
        log.info("start %s (%s)", job.name, job.key[:12])
        result = RUNNERS[job.kind](ctx)
        result["wall_s"] = round(time.time() - started, 3)
        write_json_atomic(prov_path, {**provenance(), "started": started, "ended": time.time(),
                                      "spec_hash": job.key})  # fmt: skip
        store.write_result(job, result)
        log.info("done %s in %.1f s", job.name, result["wall_s"])
        return result
    except SystemExit:  # submitit requeued the job (preemption, time limit): not a failure
        log.warning("%s interrupted: requeued, it resumes from its last checkpoint", job.name)
        raise
    except BaseException as err:
        store.write_error(job, {
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
            "progress": store.progress(job),
            "time": time.time(),
        })  # fmt: skip
        log.error("failed %s: %s", job.name, err)
        raise
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _attach_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


# ----------------------------------------------------------------------------- job kinds


def _setup_torch(spec: dict) -> str:
    import torch

    # the cores this process may use (a parallel local run pins each worker to its share; SLURM, its allocation)
    threads = spec.get("threads") or int(os.environ.get("SLURM_CPUS_PER_TASK", len(os.sched_getaffinity(0))))
    torch.set_num_threads(max(1, threads))
    device = spec.get("device", "auto")
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def run_pretrain(ctx: JobContext) -> dict:
    from pretrain.methods import method_config, needs_labels
    from pretrain.data import load_pretrain_images, load_pretrain_labels
    from pretrain.train import pretrain, random_init

    spec = dict(ctx.job.spec)
    _setup_torch(spec)
    config = method_config(
        spec["method"], {k: v for k, v in spec.items() if k not in ("method", "data")}
    )
    if spec["method"] == "random":
        summary = random_init(config, ctx.workdir)
    else:
        cache = ctx.store.cache / "biasworld"
        data = load_pretrain_images(spec["data"], cache, ctx.roots)
        labels = load_pretrain_labels(spec["data"], cache, ctx.roots) if needs_labels(config) else None
        summary = pretrain(config, data, ctx.workdir, progress=ctx.progress, labels=labels,
                           resume_dir=ctx.resume_dir)
    summary["backbone"] = str(Path(summary["backbone"]).relative_to(ctx.workdir))
    summary["backbones"] = {
        e: str(Path(p).relative_to(ctx.workdir)) for e, p in summary["backbones"].items()
    }
    return summary


def run_transfer(ctx: JobContext) -> dict:
    from transfer.tasks import TaskContext, run_task

    spec = dict(ctx.job.spec)
    # an earlier backbone of the same pretraining (a table's checkpoints); None: the final one
    epoch = spec.pop("checkpoint", None)
    device = _setup_torch(spec)
    source = ctx.store.load_job(ctx.job.deps[0])
    summary = ctx.store.result(source)
    backbone = summary["backbone"] if epoch is None else _kept_backbone(source, summary, epoch)
    task_ctx = TaskContext(
        backbone_path=ctx.store.work_dir(source) / backbone,
        source_key=(
            source.key if epoch is None else spec_hash({"source": source.key, "epoch": epoch})
        ),
        cache_dir=ctx.store.cache,
        workdir=ctx.workdir,
        roots=dict(ctx.roots or {}),
        device=device,
        progress=ctx.progress,
        resume_dir=ctx.resume_dir,
    )
    return run_task(spec, task_ctx)


def _kept_backbone(source: Job, summary: dict, epoch: int) -> str:
    """The backbone the pretraining job saved after `epoch` (its spec's save_backbone_epochs)."""
    kept = summary.get("backbones") or {}
    if str(epoch) not in kept:
        raise RuntimeError(f"pretraining job '{source.name}' ({source.short}) kept no backbone at epoch {epoch}; "
                           f"it kept {sorted(kept, key=int)}: plan the table again (save_backbone_epochs)")  # fmt: skip
    return kept[str(epoch)]


def run_datastats(ctx: JobContext) -> dict:
    from pretrain.data import overview

    return overview(ctx.job.spec, ctx.store.cache / "biasworld", ctx.roots)


def run_cropstats(ctx: JobContext) -> dict:
    """IoU between the two views of n_pairs pairs from the very crop sampler training uses (Figure 1)."""
    import numpy as np

    from pretrain.augment import crop_iou_samples

    spec = ctx.job.spec
    iou = crop_iou_samples(
        tuple(spec["crop_scale"]), spec["n_pairs"], spec["seed"], spec["height"], spec["width"]
    )
    iou = iou.double().numpy()
    counts, edges = np.histogram(iou, bins=20, range=(0.0, 1.0))
    cells = {
        "No overlap (%)": float(100 * (iou <= 0).mean()),
        "IoU < 0.2 (%)": float(100 * (iou < 0.2).mean()),
        "Mean IoU": float(iou.mean()),
        "Median IoU": float(np.median(iou)),
    }
    return {
        "cells": cells,
        "histogram": counts.tolist(),
        "edges": edges.tolist(),
        "n_pairs": len(iou),
    }


RUNNERS: dict[str, Callable[[JobContext], dict]] = {
    "cropstats": run_cropstats,
    "pretrain": run_pretrain,
    "transfer": run_transfer,
    "datastats": run_datastats,
}
