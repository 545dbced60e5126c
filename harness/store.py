"""The run store: one directory per job, keyed by the job's content hash.

    <results>/jobs/<kind>-<key16>/
        job.json         the job: key, kind, name, resolved spec, dependency keys
        log.txt          everything the job logged
        progress.json    last progress report (epoch/step/loss), rewritten every few seconds
        result.json      the result; written atomically after success, the only proof a job is done
        error.json       the last failure (error, traceback, where); never read as a result
        provenance.json  git sha and dirty flag, package versions, host, SLURM ids, times
        slurm.json       SLURM job id and submitit folder, when submitted to a cluster
        work/            checkpoints and other files the job owns
    <results>/cache/     generated data sets, manifests, features: reusable, content-keyed
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.planner import Job

DONE, FAILED, RUNNING, QUEUED, PENDING, BLOCKED = (
    "done", "failed", "running", "queued", "pending", "blocked",
)  # fmt: skip


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temp file in the same directory, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        json.dump(payload, handle, indent=1, sort_keys=True, default=str)
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
        """Write job.json once (the job's identity); idempotent."""
        path = self.job_dir(job.key, job.kind)
        if not (path / "job.json").exists():
            write_json_atomic(path / "job.json", asdict(job))
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

    def is_done(self, job: Job) -> bool:
        return (self.job_dir(job.key, job.kind) / "result.json").exists()

    def local_state(self, job: Job) -> str:
        """State from the files alone (no scheduler query): done, failed, running or pending."""
        path = self.job_dir(job.key, job.kind)
        if (path / "result.json").exists():
            return DONE
        claim = read_json(path / "claim.json")
        if claim and _alive(claim):
            return RUNNING
        if (path / "error.json").exists():
            return FAILED
        return PENDING

    # -- writing ----------------------------------------------------------------------------

    def write_result(self, job: Job, result: dict) -> None:
        path = self.job_dir(job.key, job.kind)
        write_json_atomic(path / "result.json", result)
        (path / "error.json").unlink(missing_ok=True)

    def write_error(self, job: Job, error: dict) -> None:
        write_json_atomic(self.job_dir(job.key, job.kind) / "error.json", error)

    def write_progress(self, job: Job, progress: dict) -> None:
        write_json_atomic(self.job_dir(job.key, job.kind) / "progress.json", progress)

    def write_slurm(self, job: Job, info: dict) -> None:
        write_json_atomic(self.job_dir(job.key, job.kind) / "slurm.json", info)

    def claim(self, job: Job) -> None:
        """Mark the job as running here (host and pid), for status and for other runners."""
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        write_json_atomic(self.job_dir(job.key, job.kind) / "claim.json", info)

    def release(self, job: Job) -> None:
        (self.job_dir(job.key, job.kind) / "claim.json").unlink(missing_ok=True)


def _alive(claim: dict) -> bool:
    if claim.get("host") != socket.gethostname():
        return True  # another machine's process: trust the claim
    try:
        os.kill(int(claim["pid"]), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True
