"""Executors: run a plan's jobs in dependency order, locally or on SLURM through submitit.

Both run the same callable (`harness.jobs.JobRunner`), skip every job whose result is stored, and
never run a job whose dependency failed (it is reported, and recorded in blocked.json, as blocked by
that dependency).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from harness.errors import HarnessError, unknown
from harness.jobs import JobRunner
from harness.planner import Job, Plan
from harness.progress import Reporter
from harness.spec import REPO
from harness.store import BLOCKED, DONE, FAILED, Store

CLUSTER_PROFILES = REPO / "slurm" / "profiles"
MAX_ARRAY = 1000  # tasks per job array: SLURM's default MaxArraySize (1001) allows indices 0-1000


@dataclass
class Outcome:
    states: dict[str, str] = field(default_factory=dict)  # job key -> done | failed | blocked
    cached: int = 0
    ran: int = 0

    def count(self, state: str) -> int:
        return sum(s == state for s in self.states.values())


class Executor(Protocol):
    def run(self, plan: Plan, store: Store, reporter: Reporter) -> Outcome: ...


def blocked_by(job: Job, states: dict[str, str]) -> str | None:
    return next((d for d in job.deps if states.get(d) in (FAILED, BLOCKED)), None)


class LocalExecutor:
    """Runs each job in this process, in topological order; a failure does not stop the others.
    With jobs > 1 and more than one job to run, up to that many jobs at once, each in a worker process
    pinned to a share of the cores (`ParallelRun`)."""

    def __init__(self, roots: dict[str, str] | None = None, jobs: int = 1):
        if jobs < 1:
            raise HarnessError(f"--jobs {jobs}: give at least 1 (jobs run at once on this machine)")
        self.roots = roots or {}
        self.jobs = jobs
        self.at_once = min(jobs, len(os.sched_getaffinity(0)))  # ParallelRun's workers

    def run(self, plan: Plan, store: Store, reporter: Reporter) -> Outcome:
        if self.jobs > 1 and sum(not store.is_done(job) for job in plan.jobs.values()) > 1:  # else no pool to start
            return ParallelRun(plan, store, reporter, self.roots, self.at_once).run()
        outcome = Outcome()
        for job in plan.jobs.values():
            store.register(job)
            if store.is_done(job):
                outcome.states[job.key], outcome.cached = DONE, outcome.cached + 1
                reporter.cached(job)
            elif (dep := blocked_by(job, outcome.states)) is not None:
                outcome.states[job.key] = BLOCKED
                store.write_blocked(job, plan.jobs[dep])
                reporter.blocked(job, plan.jobs[dep])
            else:
                outcome.ran += 1
                outcome.states[job.key] = self._run_one(job, store, reporter)
        return outcome

    def _run_one(self, job: Job, store: Store, reporter: Reporter) -> str:
        reporter.start(job)
        try:
            result = JobRunner(str(store.root), job.key, self.roots)(display=reporter.progress)
        except Exception as err:  # recorded in error.json by the runner; keep going
            reporter.failed(job, f"{type(err).__name__}: {err}")
            return FAILED
        reporter.finished(job, result)
        return DONE


def core_shares(cores: list[int], workers: int) -> list[list[int]]:
    """`cores` dealt into `workers` contiguous shares as even as can be (the first get one more)."""
    size, extra = divmod(len(cores), workers)
    bounds = [i * size + min(i, extra) for i in range(workers + 1)]
    return [cores[a:b] for a, b in zip(bounds, bounds[1:])]


def pin_process(cores: list[int]) -> None:
    """Pin every thread of this process to `cores`: a worker reuses its process (and torch's OpenMP
    threads) from job to job, and sched_setaffinity(0) would move the calling thread only."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except (ProcessLookupError, FileNotFoundError):  # a thread that has just exited
            pass


def _run_job(results: str, key: str, roots: dict[str, str], cores: list[int]) -> dict:
    pin_process(cores)  # the job's torch threads follow (harness.jobs._setup_torch)
    return JobRunner(results, key, roots)()


class ParallelRun:
    """The local executor with up to `workers` jobs at once: a job starts when its dependencies are
    done, on a share of the cores free at that moment (the free cores dealt evenly among the jobs
    starting together), pinned there until it ends: two ready jobs on a 2-core machine get a core
    each, a job that starts alone gets both. Each job's live progress
    is read from its progress.json for the status line. A failure blocks its dependents and nothing
    else. Among the ready jobs, those that others wait on start first (pretrainings: each unlocks its
    transfers), then the longest by the estimate from the jobs finished so far (the longest-first rule
    leaves short jobs to fill the cores at the end), then plan order."""

    POLL_S = 2.0  # how often the status line reads the running jobs' progress.json

    def __init__(self, plan: Plan, store: Store, reporter: Reporter, roots: dict[str, str], workers: int):
        """workers: LocalExecutor.at_once (no more than the cores; a job never starts without one)."""
        self.plan, self.store, self.reporter, self.roots = plan, store, reporter, roots
        self.cores = sorted(os.sched_getaffinity(0))
        self.workers = workers

    def run(self) -> Outcome:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        outcome, waiting = Outcome(), list(self.plan.jobs.values())
        for job in waiting:
            self.store.register(job)
        free = set(self.cores)
        # spawn, not fork: a forked child of a process whose OpenMP threads already ran can hang
        context = multiprocessing.get_context("spawn")
        running: dict[Any, tuple[Job, list[int]]] = {}
        with ProcessPoolExecutor(self.workers, mp_context=context) as pool:
            try:
                while waiting or running:
                    startable = self._settle(waiting, outcome)
                    if not startable and not running:
                        if waiting:
                            raise RuntimeError(f"no job can start: {waiting[0].name} waits on jobs outside the plan")
                        break
                    startable = self._first(startable, waiting)
                    n = min(len(startable), self.workers - len(running), len(free))
                    for job, share in zip(startable, core_shares(sorted(free), n) if n else []):
                        waiting.remove(job)
                        free -= set(share)
                        outcome.ran += 1
                        self.reporter.start(job)
                        future = pool.submit(_run_job, str(self.store.root), job.key, self.roots, share)
                        running[future] = job, share
                    finished, _ = wait(running, timeout=self.POLL_S, return_when=FIRST_COMPLETED)
                    for future in finished:
                        job, share = running.pop(future)
                        free |= set(share)
                        try:
                            result = future.result()
                        except Exception as err:  # recorded in error.json by the runner (unless the worker died)
                            self.reporter.failed(job, f"{type(err).__name__}: {err}")
                            outcome.states[job.key] = FAILED
                        else:
                            self.reporter.finished(job, result)
                            outcome.states[job.key] = DONE
                    if not finished:
                        self.reporter.running([(job, self.store.progress(job)) for job, _ in running.values()])
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        return outcome

    def _first(self, ready: list[Job], waiting: list[Job]) -> list[Job]:
        """`ready` in the order to start them: jobs that waiting jobs depend on, then the longest (reporter's
        estimate; none before a job finished), then plan order (sorted() is stable)."""
        needed = {d for job in waiting for d in job.deps}
        return sorted(ready, key=lambda j: (j.key not in needed, -(self.reporter.estimate(j) or 0.0)))

    def _settle(self, waiting: list[Job], outcome: Outcome) -> list[Job]:
        """Record the ready jobs that need no run (cached, or blocked by a failure), until none is
        left (a cached job can make more ready); return the ready jobs to run, in plan order."""
        while True:
            ready = [j for j in waiting if all(d in outcome.states for d in j.deps)]
            settled = False
            for job in ready:
                if self.store.is_done(job):
                    outcome.states[job.key], outcome.cached = DONE, outcome.cached + 1
                    self.reporter.cached(job)
                elif (dep := blocked_by(job, outcome.states)) is not None:
                    outcome.states[job.key] = BLOCKED
                    self.store.write_blocked(job, self.plan.jobs[dep])
                    self.reporter.blocked(job, self.plan.jobs[dep])
                else:
                    continue
                waiting.remove(job)
                settled = True
            if not settled:
                return ready


# ----------------------------------------------------------------------------- SLURM


def load_cluster_profile(name: str) -> dict[str, Any]:
    path = CLUSTER_PROFILES / f"{name}.yaml"
    if not path.exists():
        raise unknown("cluster profile", name, [p.stem for p in CLUSTER_PROFILES.glob("*.yaml")])
    return yaml.safe_load(path.read_text()) or {}


def slurm_parameters(profile: dict[str, Any], kind: str) -> dict[str, Any]:
    """submitit parameters for one job kind: the profile's top level, then its per-kind section."""
    merged = {k: v for k, v in profile.items() if k not in ("pretrain", "transfer", "datastats")}
    merged.update(profile.get(kind, {}) or {})
    params: dict[str, Any] = {
        "slurm_partition": merged.get("partition"),
        "gpus_per_node": merged.get("gpus_per_node", 0),
        "cpus_per_task": merged.get("cpus_per_task", 1),
        "mem_gb": merged.get("mem_gb", 4),
        "timeout_min": merged.get("timeout_min", 60),
        "slurm_signal_delay_s": merged.get("signal_delay_s", 60),
        "slurm_array_parallelism": merged.get("array_parallelism", 16),
        "slurm_setup": list(merged.get("setup", []) or []),
        "slurm_additional_parameters": dict(merged.get("additional_parameters", {}) or {}),
    }
    return {k: v for k, v in params.items() if v is not None}


class SlurmExecutor:
    """Submits the plan to SLURM: pretraining jobs first, then, per pretraining job, its transfer
    jobs as one job array that waits on it (afterok; a failed parent cancels them). Jobs that a
    previous or concurrent `run` left queued or running are followed, not submitted again."""

    POLL_S = 2.0

    def __init__(self, cluster: str = "local", roots: dict[str, str] | None = None):
        self.profile = load_cluster_profile(cluster)
        self.cluster = cluster
        self.roots = roots or {}
        _check_slurm()

    def run(self, plan: Plan, store: Store, reporter: Reporter) -> Outcome:
        outcome, handles = self.submit(plan, store, reporter)
        self._wait(plan, handles, store, reporter, outcome)
        return outcome

    def submit(
        self, plan: Plan, store: Store, reporter: Reporter
    ) -> tuple[Outcome, dict[str, Any]]:
        """Submit every job not done (or attach to it if already queued); returns their handles."""
        import submitit

        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"  # two `run`s in one second
        executor = submitit.AutoExecutor(
            folder=store.root / "slurm" / stamp / "%j", cluster="slurm"
        )
        outcome = Outcome()
        with store.submission_lock():
            live = queued_job_ids()  # first: a job that ends after this reads as done below
            todo: list[Job] = []
            for job in plan.jobs.values():
                store.register(job)
                if store.is_done(job):
                    outcome.states[job.key], outcome.cached = DONE, outcome.cached + 1
                    reporter.cached(job)
                else:
                    todo.append(job)
            handles = self._attach(todo, live, store, reporter)
            handles.update(self._submit(executor, todo, handles, store, reporter))
        outcome.ran = len(handles)
        return outcome, handles

    def _attach(
        self, todo: list[Job], live: set[str], store: Store, reporter: Reporter
    ) -> dict[str, Any]:
        """Handles on the jobs whose recorded SLURM job (slurm.json) is still queued or running."""
        import submitit

        handles = {}
        for job in todo:
            info = store.slurm(job)
            if info and info["job_id"] in live:
                handles[job.key] = submitit.SlurmJob(folder=info["folder"], job_id=info["job_id"])
                reporter.attached(job, info["job_id"])
        return handles

    def _submit(
        self, executor, todo: list[Job], attached: dict[str, Any], store: Store, reporter: Reporter
    ) -> dict[str, Any]:
        """Submit in dependency order, grouping jobs with the same kind and parent into one array
        (several past MAX_ARRAY jobs)."""
        submitted: dict[str, Any] = dict(attached)
        groups: dict[tuple, list[Job]] = defaultdict(list)
        for job in todo:
            if job.key not in attached:
                groups[(job.kind, job.deps)].append(job)
        for (kind, deps), group in groups.items():  # insertion order = topological order
            for start in range(0, len(group), MAX_ARRAY):
                jobs = group[start : start + MAX_ARRAY]
                handles = self._submit_array(executor, kind, deps, jobs, submitted, store)
                for job, handle in zip(jobs, handles):
                    submitted[job.key] = handle
                    reporter.submitted(job, handle.job_id)
        return {key: submitted[key] for key in submitted.keys() - attached.keys()}

    def _submit_array(
        self, executor, kind: str, deps: tuple, jobs: list[Job], submitted: dict, store: Store
    ) -> list[Any]:
        """One sbatch: the jobs as one array, after their parents (afterok), recorded in slurm.json."""
        params = slurm_parameters(self.profile, kind)
        pending = [submitted[d].job_id for d in deps if d in submitted]
        if pending:
            extra = dict(params["slurm_additional_parameters"])
            extra.update(dependency="afterok:" + ":".join(pending), kill_on_invalid_dep="yes")
            params["slurm_additional_parameters"] = extra
        executor.update_parameters(slurm_job_name=f"{kind}", **params)
        with executor.batch():
            handles = [
                executor.submit(JobRunner(str(store.root), job.key, self.roots)) for job in jobs
            ]
        for job, handle in zip(jobs, handles):
            store.write_slurm(job, {"job_id": handle.job_id, "folder": str(handle.paths.folder),
                                    "submitted": time.time(), "cluster": self.cluster})  # fmt: skip
        return handles

    def _wait(
        self, plan: Plan, submitted: dict, store: Store, reporter: Reporter, outcome: Outcome
    ):
        remaining = dict(submitted)
        while remaining:
            for key, handle in list(remaining.items()):
                job = plan.jobs[key]
                if not handle.done():
                    reporter.slurm_state(job, handle.state, store.progress(job))
                    continue
                del remaining[key]
                if store.is_done(job):
                    outcome.states[key] = DONE
                    reporter.finished(job, store.result(job))
                elif (dep := _undone_dep(job, plan, store)) is not None:
                    # its parent failed: kill_on_invalid_dep cancelled it before it ran
                    outcome.states[key] = BLOCKED
                    store.write_blocked(job, dep, slurm_reason(handle.job_id))
                    reporter.blocked(job, dep)
                else:
                    outcome.states[key] = FAILED
                    reporter.failed(job, _failure_reason(store, job, handle))
            if remaining:
                time.sleep(self.POLL_S)


def _undone_dep(job: Job, plan: Plan, store: Store) -> Job | None:
    """The dependency that is not done, read from the store (not from poll order: a cancelled
    child can be seen finished in the same poll that first sees its parent fail)."""
    return next((plan.jobs[d] for d in job.deps if not store.is_done(plan.jobs[d])), None)


def queued_job_ids() -> set[str]:
    """Ids of this user's jobs SLURM still holds (pending, running, requeued...), array tasks one
    per line (`123_4`). squeue asks the controller: a job submitted a moment ago is listed, where
    sacct may not know it yet."""
    cmd = ["squeue", "--me", "-h", "-r", "-o", "%i"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as err:
        raise HarnessError(
            f"squeue failed ({err}): cannot tell which recorded jobs are still queued, so nothing "
            "was submitted. Check the cluster (`sinfo`), then run the same command again."
        ) from err
    return set(out.stdout.split())


def slurm_reason(job_id: str) -> str:
    """SLURM's final state and reason from accounting, e.g. 'CANCELLED (Dependency)'. A pending
    array cancelled as a whole has one record, `123_[0-9%2]`: asked by its base id, it answers."""
    cmd = ["sacct", "-n", "-P", "-X", "-o", "JobID,State,Reason", "-j", job_id.split("_")[0]]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return ""
    records = [line.split("|") for line in out.stdout.splitlines() if line.count("|") == 2]
    mine = [r for r in records if r[0] == job_id] or [r for r in records if "[" in r[0]]
    if not mine:
        return ""
    _, state, reason = mine[0]
    return f"{state} ({reason})" if reason not in ("", "None") else state


def _failure_reason(store: Store, job: Job, handle) -> str:
    error = store.error(job)
    if error:
        return error["error"]
    try:
        tail = Path(handle.paths.stderr).read_text().strip().splitlines()[-3:]
    except OSError:
        tail = []
    return f"SLURM state {handle.state}; " + " | ".join(tail)


def _check_slurm() -> None:
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise HarnessError(
            f"SLURM is not reachable ({err}). Start the local cluster with "
            "`bash slurm/start_cluster.sh`, or use --executor local."
        ) from err
    if out.returncode != 0:
        raise HarnessError(
            f"sinfo failed: {out.stderr.strip()}. Start the local cluster with "
            "`bash slurm/start_cluster.sh`, or use --executor local."
        )


EXECUTORS = ("local", "slurm")


JOB_MEMORY_GB = 2.0  # what `--jobs auto` allows a local job: the tiny profile's largest (Table S1's 8x) ~1.6 GB


def auto_jobs(memory_gb: float | None = None) -> int:
    """`--jobs auto`: a job per core this process may use, at most one per JOB_MEMORY_GB of available
    memory. On a CPU one job on every core is slower than a job per core: a tiny pretraining runs 1.7x
    faster on 2 cores than on one, not 2x (README, "Measured on this machine"). With an NVIDIA GPU
    in sight, one job at a time: the jobs would share it."""
    if Path("/dev/nvidiactl").exists():
        return 1
    if memory_gb is None:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        memory_gb = int(meminfo["MemAvailable"].split()[0]) / 2**20
    return max(1, min(len(os.sched_getaffinity(0)), int(memory_gb // JOB_MEMORY_GB)))


def make_executor(name: str, cluster: str, roots: dict[str, str], jobs: int | str = 1) -> Executor:
    if name == "local":
        return LocalExecutor(roots, auto_jobs() if jobs == "auto" else int(jobs))
    if name == "slurm":
        if jobs not in (1, "auto"):
            raise HarnessError(f"--jobs {jobs} is for the local executor: SLURM runs a table's transfer jobs as "
                               "an array (array_parallelism in the cluster profile, slurm/profiles/)")  # fmt: skip
        return SlurmExecutor(cluster, roots)
    raise unknown("executor", name, EXECUTORS)
