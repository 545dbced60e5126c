"""`python -m harness status`: each job's state, progress, elapsed time, SLURM id and log."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from harness.planner import Job
from harness.progress import TimeLeft, describe, time_left_line
from harness.store import BLOCKED, DONE, FAILED, PENDING, Store, read_json


def job_state(store: Store, job: Job, slurm_states: dict[str, str]) -> str:
    state = store.local_state(job)
    info = store.slurm(job)
    if state in (PENDING, FAILED) and info and info["job_id"] in slurm_states:
        scheduler = slurm_states[info["job_id"]]
        if scheduler in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING"):
            return f"slurm:{scheduler.lower()}"
        if state == PENDING and scheduler.startswith("CANCELLED"):
            return "cancelled"
    return state


def query_slurm(job_ids: list[str]) -> dict[str, str]:
    """One sacct call for all ids: {job id: STATE}; empty when SLURM is not there."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    cmd = ["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(job_ids)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    states = {}
    for line in out.stdout.splitlines():
        job_id, _, state = line.partition("|")
        states[job_id] = state.split()[0] if state else "UNKNOWN"
    return states


def elapsed(store: Store, job: Job) -> float | None:
    prov = read_json(store.job_dir(job.key, job.kind) / "provenance.json")
    if not prov or "started" not in prov:
        return None
    return prov.get("ended", time.time()) - prov["started"]


def print_status(jobs: list[Job], store: Store, log_lines: int = 3) -> None:
    ids = [info["job_id"] for job in jobs if (info := store.slurm(job))]
    slurm_states = query_slurm(ids)
    print(
        f"{'job':<12}  {'kind':<9}  {'state':<16} {'elapsed':>8}  {'slurm':>7}  name / progress / log"
    )
    counts: dict[str, int] = {}
    time_left, to_run = TimeLeft(), []
    for job in jobs:
        state = job_state(store, job, slurm_states)
        took = elapsed(store, job)
        if state == DONE and took is not None:
            time_left.add(job, took)
        elif state not in (DONE, FAILED, BLOCKED, "cancelled"):
            to_run.append(job)
        info = store.slurm(job) or {}
        progress = store.progress(job) if state != DONE else None
        where = store.job_dir(job.key, job.kind) / "log.txt"
        print(f"{job.short:<12}  {job.kind:<9}  {state:<16} {_fmt_s(took):>8}  "
              f"{info.get('job_id', '-'):>7}  {job.name}")  # fmt: skip
        if progress:
            print(f"{'':<60}{describe(progress)}")
        print(f"{'':<60}log: {where}")
        if state == FAILED and (error := store.error(job)):
            print(f"{'':<60}error: {error['error']}")
        if state in (FAILED, "cancelled"):
            for line in log_tail(where if where.exists() else _slurm_stderr(info), log_lines):
                print(f"{'':<60}| {line}")
        counts[state] = counts.get(state, 0) + 1
    left = time_left(to_run) if to_run else None
    estimate = f" · {time_left_line(left)} (from the {counts.get(DONE, 0)} done)" if left is not None else ""
    print(f"{len(jobs)} jobs: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) + estimate)


def log_tail(path: Path | None, lines: int) -> list[str]:
    """The last `lines` lines of a log; none when it is absent."""
    if path is None or not path.is_file():
        return []
    return path.read_text(errors="replace").strip().splitlines()[-lines:]


def _slurm_stderr(info: dict) -> Path | None:
    """submitit's stderr of a SLURM job that died before the job's own log existed (e.g. no node, OOM)."""
    if not info.get("folder"):
        return None
    return Path(info["folder"]) / f"{info['job_id']}_0_log.err"


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
