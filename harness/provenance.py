"""Where and with what a result was computed: git state, package versions, host, scheduler ids."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys

from harness.spec import REPO

PACKAGES = ("torch", "torchvision", "numpy", "scikit-learn", "pandas", "submitit")
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT",
              "SLURM_JOB_PARTITION", "SLURM_JOB_NODELIST")  # fmt: skip


def provenance() -> dict:
    return {
        **git_state(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        # the cores this job may use and its torch threads (they change float rounding, not the job's key)
        "cores": sorted(os.sched_getaffinity(0)),
        **({"threads": torch.get_num_threads()} if (torch := sys.modules.get("torch")) else {}),
        "slurm": {k: os.environ[k] for k in SLURM_VARS if k in os.environ},
    }


@functools.cache
def git_state() -> dict:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                                 timeout=10)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_sha": git("rev-parse", "HEAD"), "git_dirty": bool(status) if status is not None else None}


@functools.cache
def package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions
