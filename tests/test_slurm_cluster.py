"""The one-node SLURM cluster of slurm/start_cluster.sh, driven through submitit as the harness drives it,
and the cluster profiles of slurm/profiles/ (which need no cluster).

Each test uses a fresh submitit folder (tmp_path): job ids restart at 1 when the cluster state is wiped,
and a reused folder would then return the stale result of an older job with the same id.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

submitit = pytest.importorskip("submitit")
cloudpickle = pytest.importorskip("cloudpickle")

# The job's python cannot import this test module: pickle its functions by value, not by name.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

REPO = Path(__file__).resolve().parents[1]
START = REPO / "slurm" / "start_cluster.sh"
PROFILES = sorted((REPO / "slurm" / "profiles").glob("*.yaml"))
PROFILE_FIELDS = {"partition", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min", "signal_delay_s",
                  "array_parallelism", "setup", "additional_parameters"}  # fmt: skip
WAIT_S = 60.0  # any job here ends within seconds (sched_interval=2); a hang must fail, not block CI


def _executor(folder: Path, **slurm: object) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(
        timeout_min=5, mem_gb=1, cpus_per_task=1, slurm_partition="debug", **slurm
    )
    return executor


# submitit's "not finished" states; UNKNOWN also while sacct does not know a fresh job yet
UNFINISHED = {"READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING", "PREEMPTED"}


def _wait_done(job: submitit.Job, timeout_s: float = WAIT_S) -> str:
    """Polls sacct until the job reaches a final state; returns job.state (COMPLETED, FAILED, CANCELLED...).

    Not job.done(): it is True as soon as the result pickle exists, before sacct says the job ended.
    """
    deadline = time.monotonic() + timeout_s
    while job.get_info(mode="force").get("State", "UNKNOWN").split()[0] in UNFINISHED:
        if time.monotonic() > deadline:
            pytest.fail(f"job {job.job_id} still {job.state} after {timeout_s:.0f} s")
        time.sleep(0.5)
    return job.state


def _result(job: submitit.Job) -> object:
    """job.result() with a deadline (submitit's own result() waits forever)."""
    _wait_done(job)
    return job.result()


def _sleep_then_time(seconds: float) -> float:
    time.sleep(seconds)
    return time.time()


def _now() -> float:
    return time.time()


def _fail() -> None:
    raise RuntimeError("parent fails on purpose")


class _Resumable(submitit.helpers.Checkpointable):
    """Blocks in its first run; after a requeue returns SLURM_RESTART_COUNT (Checkpointable re-submits
    the same callable and arguments)."""

    def __call__(self, started: str) -> int:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if restarts == 0:
            Path(started).touch()
            time.sleep(WAIT_S)
        return restarts


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_profile_gives_parameters_submitit_accepts(path: Path, tmp_path: Path) -> None:
    from harness.executors import slurm_parameters

    profile = yaml.safe_load(path.read_text())
    assert PROFILE_FIELDS <= set(profile), f"{path.name} lacks {PROFILE_FIELDS - set(profile)}"
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    for kind in ("pretrain", "transfer", "datastats"):
        executor.update_parameters(**slurm_parameters(profile, kind))  # raises on an unknown name


def test_paper_profile_pretrains_on_two_gpus() -> None:
    from harness.executors import load_cluster_profile, slurm_parameters

    params = slurm_parameters(load_cluster_profile("paper"), "pretrain")
    # paper appendix A: 2 x V100 per pretraining job
    assert params["gpus_per_node"] == 2 and params["cpus_per_task"] == 10


@pytest.mark.slurm
def test_config_enables_requeue_and_fast_scheduling(slurm_cluster: str) -> None:
    config = subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True, check=True
    )
    settings = dict(
        tuple(part.strip() for part in line.split("=", 1))
        for line in config.stdout.splitlines()
        if " = " in line
    )
    assert settings["JobRequeue"] == "1"  # submitit's Checkpointable requeues jobs
    assert settings["AccountingStorageType"] == "accounting_storage/slurmdbd"  # sacct -> job.state
    assert "cred_expire=10" in settings["AuthInfo"]
    assert settings["SchedulerParameters"] == "sched_interval=2,bf_interval=2"


@pytest.mark.slurm
def test_submit_returns_result(slurm_cluster: str, tmp_path: Path) -> None:
    job = _executor(tmp_path).submit(divmod, 17, 5)
    assert _result(job) == (3, 2)
    assert _wait_done(job) == "COMPLETED"  # read back through sacct (accounting)


@pytest.mark.slurm
def test_dependent_job_runs_after_its_parent(slurm_cluster: str, tmp_path: Path) -> None:
    parent = _executor(tmp_path).submit(_sleep_then_time, 3.0)
    dep = {"dependency": f"afterok:{parent.job_id}", "kill_on_invalid_dep": "yes"}
    child = _executor(tmp_path, slurm_additional_parameters=dep).submit(_now)
    sbatch = Path(child.paths.submission_file).read_text()
    assert f"#SBATCH --dependency=afterok:{parent.job_id}" in sbatch
    assert "#SBATCH --kill-on-invalid-dep=yes" in sbatch
    parent_end = _result(parent)
    assert _result(child) >= parent_end
    assert _wait_done(child) == "COMPLETED"


@pytest.mark.slurm
def test_failing_parent_cancels_its_child(slurm_cluster: str, tmp_path: Path) -> None:
    parent = _executor(tmp_path).submit(_fail)
    dep = {"dependency": f"afterok:{parent.job_id}", "kill_on_invalid_dep": "yes"}
    child = _executor(tmp_path, slurm_additional_parameters=dep).submit(_now)
    assert _wait_done(parent) == "FAILED"
    assert "parent fails on purpose" in str(parent.exception())
    assert _wait_done(child).startswith("CANCELLED")  # kill_on_invalid_dep; a readable final state
    # it never ran. (child.result() would raise UncompletedJobError, but only after submitit's 15 s
    # wait for a result pickle, Job._results_timeout_s.)
    assert not child.paths.result_pickle.exists() and not child.paths.stdout.exists()


@pytest.mark.slurm
def test_checkpointable_job_is_requeued_and_resumes(slurm_cluster: str, tmp_path: Path) -> None:
    started = tmp_path / "started"
    job = _executor(tmp_path / "jobs").submit(_Resumable(), str(started))
    deadline = time.monotonic() + WAIT_S
    while not started.exists():
        assert time.monotonic() < deadline, f"job {job.job_id} never started ({job.state})"
        time.sleep(0.2)
    job._interrupt(timeout=True)  # USR2 alone, as at a time limit: checkpoint, then requeue
    assert _result(job) == 1  # ran a second time, after one requeue
    assert job.state == "COMPLETED"
