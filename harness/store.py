"""The run store: one directory per job, keyed by the job's content hash.

    <results>/jobs/<kind>-<key16>/
        job.json         the job: key, kind, name, resolved spec, dependency keys
        log.txt          everything the job logged
        progress.json    last progress report (epoch/step/loss), rewritten every few seconds
        result.json      the result; written atomically after success, the only proof a job is done
        error.json       the last failure (error, traceback, where); never read as a result
        blocked.json     which failed dependency kept the job from running (and SLURM's reason)
        claim.json       host and pid of the process running the job (claim.lock is its flock)
        provenance.json  git sha and dirty flag, package versions, host, SLURM ids, times
        slurm.json       SLURM job id and submitit folder, when submitted to a cluster
        work/            the files the job's result names (backbones, CAM grids): its outputs
        resume/          resume state of an unfinished job (pretraining and finetuning checkpoints,
                         ~3x a backbone each); deleted once result.json is written
    <results>/cache/     generated data sets, manifests, features: reusable, content-keyed
    <results>/submit.lock  held by a `run` while it submits to SLURM (one submitter at a time)

Locks are fcntl.flock on files: the kernel drops them when their process dies, so a killed worker
or orchestrator never leaves a claim that looks alive.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.planner import Job

DONE, FAILED, RUNNING, QUEUED, PENDING, BLOCKED = (
    "done", "failed", "running", "queued", "pending", "blocked",
)  # fmt: skip


def write_json_atomic(path: Path, payload: Any, durable: bool = True) -> None:
    """Write JSON to a temp file in the same directory, fsync, then rename over `path`. The rename
    alone survives a killed process; fsync also a power loss. It costs ~6 ms, so records a rerun
    rebuilds (job.json, slurm.json: x1,000 in a sweep) skip it (durable=False)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        json.dump(payload, handle, indent=1, sort_keys=True, default=str)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def job_dir(self, key: str, kind: str | None = None) -> Path:
        if kind is None:
            found = list((self.root / "jobs").glob(f"*-{key[:16]}"))
            if not found:
                raise FileNotFoundError(f"no job {key[:16]} in {self.root}")
            return found[0]
        return self.root / "jobs" / f"{kind}-{key[:16]}"

    # -- jobs -------------------------------------------------------------------------------

    def register(self, job: Job) -> Path:
        """Write job.json once (the job's identity); idempotent, and repairs an unreadable one."""
        path = self.job_dir(job.key, job.kind)
        if read_json(path / "job.json") is None:
            write_json_atomic(path / "job.json", asdict(job), durable=False)
        return path

    def load_job(self, key: str) -> Job:
        raw = read_json(self.job_dir(key) / "job.json")
        if raw is None:
            raise FileNotFoundError(f"job {key[:16]} has no job.json in {self.root}")
        return Job(**{**raw, "deps": tuple(raw["deps"])})

    def jobs(self) -> list[Job]:
        return [self.load_job(p.name.rsplit("-", 1)[1]) for p in sorted((self.root / "jobs").glob("*-*"))
                if (p / "job.json").exists()]  # fmt: skip

    # -- state ------------------------------------------------------------------------------

    def result(self, job: Job) -> dict | None:
        return read_json(self.job_dir(job.key, job.kind) / "result.json")

    def error(self, job: Job) -> dict | None:
        return read_json(self.job_dir(job.key, job.kind) / "error.json")

    def progress(self, job: Job) -> dict | None:
        return read_json(self.job_dir(job.key, job.kind) / "progress.json")

    def slurm(self, job: Job) -> dict | None:
        return read_json(self.job_dir(job.key, job.kind) / "slurm.json")

    def blocked(self, job: Job) -> dict | None:
        """{by: name of the failed dependency, by_key, reason} while the job is blocked."""
        return read_json(self.job_dir(job.key, job.kind) / "blocked.json")

    def is_done(self, job: Job) -> bool:
        return (self.job_dir(job.key, job.kind) / "result.json").exists()

    def local_state(self, job: Job) -> str:
        """State from the files alone (no scheduler query): done, running, blocked, failed or
        pending. A claim whose process died (killed mid-job) is stale: the job reads as not running.
        """
        path = self.job_dir(job.key, job.kind)
        if (path / "result.json").exists():
            return DONE
        if (path / "claim.json").exists() and _held(path / "claim.lock"):
            return RUNNING
        if (path / "blocked.json").exists():
            return BLOCKED
        if (path / "error.json").exists():
            return FAILED
        return PENDING

    # -- writing ----------------------------------------------------------------------------

    def work_dir(self, job: Job) -> Path:
        return self.job_dir(job.key, job.kind) / "work"

    def resume_dir(self, job: Job) -> Path:
        return self.job_dir(job.key, job.kind) / "resume"

    def write_result(self, job: Job, result: dict) -> None:
        """Mark the job done; only then drop its resume state (a smoke Table 3 kept 3.9 GB of it)."""
        path = self.job_dir(job.key, job.kind)
        write_json_atomic(path / "result.json", result)
        (path / "error.json").unlink(missing_ok=True)
        shutil.rmtree(self.resume_dir(job), ignore_errors=True)

    def write_blocked(self, job: Job, by: Job, reason: str = "") -> None:
        info = {"by": by.name, "by_key": by.key, "reason": reason, "time": time.time()}
        write_json_atomic(self.job_dir(job.key, job.kind) / "blocked.json", info)

    def write_error(self, job: Job, error: dict) -> None:
        write_json_atomic(self.job_dir(job.key, job.kind) / "error.json", error)

    def write_progress(self, job: Job, progress: dict) -> None:
        write_json_atomic(self.job_dir(job.key, job.kind) / "progress.json", progress)

    def write_slurm(self, job: Job, info: dict) -> None:
        write_json_atomic(self.job_dir(job.key, job.kind) / "slurm.json", info, durable=False)

    @contextmanager
    def claim(self, job: Job) -> Iterator[None]:
        """Run the job here: waits while another process holds it (the caller then re-checks
        is_done, so two runners never run it twice), records host and pid in claim.json."""
        path = self.job_dir(job.key, job.kind)
        with _locked(path / "claim.lock"):
            (path / "blocked.json").unlink(missing_ok=True)
            info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
            write_json_atomic(path / "claim.json", info)
            try:
                yield
            finally:
                (path / "claim.json").unlink(missing_ok=True)

    @contextmanager
    def submission_lock(self) -> Iterator[None]:
        """Held by a `run` from reading slurm.json to writing it for its new submissions, so two
        `run`s started together submit each job once (the second attaches to the first's jobs).
        One lock for the store, not one per job: a 1,000-job array would need 1,000 open files."""
        with _locked(self.root / "submit.lock"):
            yield


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on `path`, waiting for it; the kernel releases it if we die."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _held(path: Path) -> bool:
    """Whether a live process holds the flock on `path` (probed without waiting)."""
    try:
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False
