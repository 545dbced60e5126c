"""Job management: `retry`, `cancel`, `clean` and `verify` over the run store.

python -m harness retry table2            # failed and blocked jobs again (clears their error.json)
python -m harness cancel table2           # scancel queued/running SLURM jobs; SIGTERM local ones
python -m harness clean table2            # remove failed and partial job dirs (never finished ones)
python -m harness clean --all --finished --yes   # everything, finished results included
python -m harness verify                  # every stored result against its spec hash and files
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from harness.cli import _table_args, cmd_run, executor_args, make_plan
from harness.errors import HarnessError
from harness.planner import Job, make_job
from harness.status import job_state, query_slurm
from harness.store import BLOCKED, DONE, FAILED, PENDING, Store, read_json

ACTIVE = ("running", "slurm:pending", "slurm:running", "slurm:requeued", "slurm:configuring",
          "slurm:completing")  # fmt: skip


def add_commands(sub: argparse._SubParsersAction) -> None:
    retry = sub.add_parser("retry", help="run a table's failed and blocked jobs again")
    _table_args(retry)
    executor_args(retry)
    retry.set_defaults(func=cmd_retry, dry_run=False)

    cancel = sub.add_parser("cancel", help="cancel a table's queued and running jobs")
    _table_args(cancel)
    cancel.set_defaults(func=cmd_cancel)

    clean = sub.add_parser(
        "clean", help="remove failed and partial job dirs and finished jobs' leftover resume state "
        "(finished results themselves: --finished)"
    )
    _table_args(clean, table_required=False)
    clean.add_argument("--all", action="store_true", help="every job in the store, not one table's")
    clean.add_argument("--finished", action="store_true", help="remove finished results too")
    clean.add_argument("--yes", action="store_true", help="confirm --finished")
    clean.set_defaults(func=cmd_clean)

    verify = sub.add_parser(
        "verify", help="check every stored result against its spec hash and files"
    )
    _table_args(verify, table_required=False)
    verify.set_defaults(func=cmd_verify)


def table_jobs(args: argparse.Namespace, store: Store) -> list[Job]:
    """The table's planned jobs that have a directory in the store, or every stored job (no table)."""
    if not args.table:
        return store.jobs()
    jobs = make_plan(args).jobs.values()
    return [job for job in jobs if store.job_dir(job.key, job.kind).exists()]


def states(jobs: list[Job], store: Store) -> dict[str, str]:
    """job key -> state, as `status` shows it (one sacct call for all SLURM ids)."""
    slurm = query_slurm([info["job_id"] for job in jobs if (info := store.slurm(job))])
    return {job.key: job_state(store, job, slurm) for job in jobs}


# ----------------------------------------------------------------------------- retry


def cmd_retry(args: argparse.Namespace) -> int:
    """Clear the failures of the table's jobs, then run the table: failed and blocked jobs run again,
    finished ones stay cached."""
    store = Store(args.results)
    failed = [job for job in table_jobs(args, store) if store.local_state(job) in (FAILED, BLOCKED)]
    for job in failed:
        for name in ("error.json", "blocked.json"):
            (store.job_dir(job.key, job.kind) / name).unlink(missing_ok=True)
    print(f"retry: cleared {len(failed)} failed or blocked job(s): {', '.join(j.name for j in failed) or '-'}",
          file=sys.stderr)  # fmt: skip
    return cmd_run(args)


# ----------------------------------------------------------------------------- cancel


def cmd_cancel(args: argparse.Namespace) -> int:
    store = Store(args.results)
    jobs = table_jobs(args, store)
    state = states(jobs, store)
    slurm_ids = [store.slurm(j)["job_id"] for j in jobs if state[j.key].startswith("slurm:")]
    local = [j for j in jobs if state[j.key] == "running" and not store.slurm(j)]
    if slurm_ids:
        out = subprocess.run(["scancel", *slurm_ids], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise HarnessError(f"scancel {' '.join(slurm_ids)} failed: {out.stderr.strip()}")
    for job in local:
        claim = read_json(store.job_dir(job.key, job.kind) / "claim.json") or {}
        _terminate(int(claim.get("pid", 0)), job)
    print(f"cancelled {len(slurm_ids)} SLURM job(s) {' '.join(slurm_ids)} and signalled "
          f"{len(local)} local run(s)" if slurm_ids or local else "nothing queued or running")  # fmt: skip
    return 0


def _terminate(pid: int, job: Job) -> None:
    """SIGTERM the local process that claimed `job` (the harness run executing it)."""
    if pid in (0, os.getpid()):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    print(f"sent SIGTERM to pid {pid} running '{job.name}'")


# ----------------------------------------------------------------------------- clean


def cmd_clean(args: argparse.Namespace) -> int:
    if bool(args.table) == args.all:
        raise HarnessError("clean needs a table or --all (not both)")
    if args.finished and not args.yes:
        raise HarnessError("--finished deletes finished results for good; add --yes to confirm")
    store = Store(args.results)
    jobs = table_jobs(args, store)
    state = states(jobs, store)
    removable = (FAILED, BLOCKED, PENDING, "cancelled", *((DONE,) if args.finished else ()))
    doomed = [j for j in jobs if state[j.key] in removable]
    if args.all:  # directories without a readable job.json are partial too
        known = {store.job_dir(j.key, j.kind) for j in jobs}
        doomed_dirs = [store.job_dir(j.key, j.kind) for j in doomed]
        doomed_dirs += [d for d in sorted((store.root / "jobs").glob("*-*")) if d not in known]
    else:
        doomed_dirs = [store.job_dir(j.key, j.kind) for j in doomed]
    for path in doomed_dirs:
        shutil.rmtree(path)
    kept = sum(state[j.key] == DONE for j in jobs) if not args.finished else 0
    active = sum(state[j.key] in ACTIVE for j in jobs)
    # with --finished the finished jobs' dirs went above, resume state and all
    stale = [] if args.finished else [f for j in jobs if state[j.key] == DONE for f in stale_resume_state(store, j)]
    freed = sum(f.stat().st_size for path in stale for f in (path.rglob("*") if path.is_dir() else [path]))
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    print(
        f"removed {len(doomed_dirs)} job dir(s); kept {kept} finished and {active} queued/running; "
        f"freed {freed / 1e9:.2f} GB of finished jobs' resume state ({len(stale)} file(s))"
    )
    return 0


# resume state that stores written before resume/ existed kept in work/ after the job finished
LEGACY_RESUME = ("checkpoint.pt", "checkpoint.prev.pt", "checkpoint.sha256", "run*.pt", ".*.tmp", "checkpoint*.tmp")


def stale_resume_state(store: Store, job: Job) -> list[Path]:
    """A finished job's leftovers: resume/ (a worker killed between result.json and its deletion) and the
    checkpoints older stores kept in work/; never a file the result names."""
    resume, work = store.resume_dir(job), store.work_dir(job)
    named = {work / n for n in _named_files(store.result(job) or {})}
    legacy = [f for pattern in LEGACY_RESUME for f in sorted(work.glob(pattern)) if f not in named]
    return [*([resume] if resume.exists() else []), *legacy]


# ----------------------------------------------------------------------------- verify


def cmd_verify(args: argparse.Namespace) -> int:
    store = Store(args.results)
    dirs = sorted((store.root / "jobs").glob("*-*"))
    if args.table:
        wanted = {store.job_dir(j.key, j.kind) for j in make_plan(args).jobs.values()}
        dirs = [d for d in dirs if d in wanted]
    finished = [d for d in dirs if (d / "result.json").exists()]
    problems = [f"{d.name}: {p}" for d in finished for p in check_job_dir(store, d)]
    for line in problems:
        print(line)
    print(f"verified {len(finished)} finished job(s): {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


def check_job_dir(store: Store, path: Path) -> list[str]:
    """What is wrong with one finished job's directory (empty: nothing)."""
    raw, result = read_json(path / "job.json"), read_json(path / "result.json")
    if raw is None:
        return ["job.json is missing or not valid JSON"]
    if result is None:
        return ["result.json is not valid JSON"]
    key = make_job(raw["kind"], raw["name"], raw["spec"], tuple(raw["deps"])).key
    problems = []
    if key != raw["key"]:
        problems.append(f"spec hash {key[:16]} differs from the stored key {raw['key'][:16]} "
                        "(job.json edited, or the job's code version changed)")  # fmt: skip
    if path.name != f"{raw['kind']}-{raw['key'][:16]}":
        problems.append(f"directory name does not match its job.json key {raw['key'][:16]}")
    problems += [f"references {f}, which does not exist" for f in _missing_files(path, raw, result)]
    for dep in raw["deps"]:
        found = list((store.root / "jobs").glob(f"*-{dep[:16]}"))
        if not found or not (found[0] / "result.json").exists():
            problems.append(f"its dependency {dep[:16]} has no result in the store")
    return problems


def _missing_files(path: Path, raw: dict, result: dict) -> list[Path]:
    """Files the result names that are not there."""
    if raw["kind"] != "pretrain":
        return []
    return [f for f in (path / "work" / n for n in _named_files(result)) if not f.is_file()]


def _named_files(result: dict) -> list[str]:
    """Files in work/ a result names: a pretraining job's backbone and the earlier ones it kept."""
    if "backbone" not in result:
        return []
    return [result["backbone"], *(result.get("backbones") or {}).values()]
