"""The local executor with --jobs N: jobs at once in worker processes pinned to their own cores."""

from __future__ import annotations

import json
import os
import statistics

import pandas as pd
import pytest

from harness.executors import JOB_MEMORY_GB, auto_jobs, core_shares
from tests.test_table2_e2e import cli


def test_core_shares_deal_every_core_once_as_evenly_as_can_be():
    assert core_shares([0, 1], 2) == [[0], [1]]
    assert core_shares(list(range(8)), 3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert core_shares([4, 5, 6], 1) == [[4, 5, 6]]
    for n in range(1, 7):
        shares = core_shares(list(range(13)), n)
        assert sum(shares, []) == list(range(13)) and max(map(len, shares)) - min(map(len, shares)) <= 1


def _provenance(job_dir) -> dict:
    return json.loads((job_dir / "provenance.json").read_text())


def _interval(job_dir) -> tuple[float, float]:
    prov = _provenance(job_dir)
    return prov["started"], prov["ended"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two workers need two cores")
def test_two_jobs_at_once_share_nothing_but_the_store(tmp_path):
    rows = ("--rows", "IN-118K,COCO", "--columns", "CIFAR10,Pets")
    out = cli("run", "table2", "--profile", "smoke", "--results", tmp_path, *rows, "--jobs", "2")
    assert "6 jobs: 0 cached, 6 run, 0 failed, 0 blocked" in out.stderr
    # the two pretrainings depend on nothing: they ran at the same time, one per worker
    (a0, a1), (b0, b1) = (_interval(d) for d in sorted(tmp_path.glob("jobs/pretrain-*")))
    assert max(a0, b0) < min(a1, b1), ((a0, a1), (b0, b1))
    # every transfer started after its own pretraining ended
    for job_dir in tmp_path.glob("jobs/transfer-*"):
        dep = json.loads((job_dir / "job.json").read_text())["deps"][0]
        (parent,) = tmp_path.glob(f"jobs/pretrain-{dep[:16]}")
        assert _interval(job_dir)[0] >= _interval(parent)[1]
    cells = pd.read_csv(tmp_path / "table2.csv")
    assert (cells["status"] == "done").all() and cells["value"].between(0, 100).all()
    again = cli("run", "table2", "--profile", "smoke", "--results", tmp_path, *rows)
    assert "6 jobs: 6 cached, 0 run" in again.stderr


def test_a_failure_blocks_its_dependants_only_in_parallel(tmp_path):
    out = cli("run", "table2", "--profile", "smoke", "--results", tmp_path, "--rows", "IN-118K,COCO",
              "--columns", "CIFAR10", "--jobs", "2", "pretrain.lr=1e30", "pretrain.data.size=64",
              check=False)  # fmt: skip
    assert out.returncode == 1
    assert "2 failed, 2 blocked" in out.stderr and "blocked by failed 'pretrain" in out.stderr
    assert len(list(tmp_path.glob("jobs/pretrain-*/error.json"))) == 2
    assert len(list(tmp_path.glob("jobs/transfer-*/blocked.json"))) == 2


def test_jobs_is_a_local_flag(tmp_path):
    bad = cli("run", "table2", "--profile", "smoke", "--results", tmp_path, "--jobs", "0", check=False)
    assert bad.returncode != 0 and "--jobs 0: give at least 1" in bad.stderr
    slurm = cli("run", "table2", "--profile", "smoke", "--results", tmp_path, "--executor", "slurm",
                "--jobs", "2", check=False)  # fmt: skip
    assert slurm.returncode != 0 and "--jobs 2 is for the local executor" in slurm.stderr
    typo = cli("run", "table2", "--profile", "smoke", "--results", tmp_path, "--jobs", "two", check=False)
    assert typo.returncode != 0 and "--jobs 'two': give a number of jobs at once, or 'auto'" in typo.stderr
    assert not list(tmp_path.glob("jobs/*/result.json"))


def _cores(job_dir) -> tuple[list[int], int]:
    prov = _provenance(job_dir)
    return prov["cores"], prov["threads"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two workers need two cores")
def test_a_job_gets_the_cores_free_when_it_starts(tmp_path):
    """One pretraining starts alone and takes every core; its two transfers start together and split them.
    The same worker processes run both: pinning must move torch's threads that already exist."""
    cores = sorted(os.sched_getaffinity(0))
    out = cli("run", "table2", "--profile", "smoke", "--results", tmp_path, "--rows", "IN-118K",
              "--columns", "CIFAR10,Pets", "--jobs", "2")  # fmt: skip
    assert "3 jobs: 0 cached, 3 run, 0 failed" in out.stderr
    (pretrain,) = tmp_path.glob("jobs/pretrain-*")
    assert _cores(pretrain) == (cores, len(cores))
    shares = [_cores(d) for d in tmp_path.glob("jobs/transfer-*")]
    (a, na), (b, nb) = shares
    assert not set(a) & set(b) and sorted(a + b) == cores and (na, nb) == (len(a), len(b)), shares


def test_auto_jobs_is_a_job_per_core_within_memory():
    cores = len(os.sched_getaffinity(0))
    assert auto_jobs(memory_gb=1000 * JOB_MEMORY_GB) == cores or os.path.exists("/dev/nvidiactl")
    assert auto_jobs(memory_gb=JOB_MEMORY_GB * 1.5) == 1  # room for one job: one at a time
    assert auto_jobs(memory_gb=0.1) == 1  # never none


@pytest.mark.skipif(auto_jobs() < 2, reason="auto gives one job at a time here (one core, a GPU or little memory)")
def test_the_default_runs_a_job_per_core(tmp_path):
    """No --jobs and no $HARNESS_JOBS (which conftest sets for the other tests): auto, two pretrainings at once."""
    env = {k: v for k, v in os.environ.items() if k != "HARNESS_JOBS"}
    cli("run", "table2", "--profile", "smoke", "--results", tmp_path, "--rows", "IN-118K,COCO", "--columns", "CIFAR10",
        env=env)  # fmt: skip
    (a0, a1), (b0, b1) = (_interval(d) for d in sorted(tmp_path.glob("jobs/pretrain-*")))
    assert max(a0, b0) < min(a1, b1), ((a0, a1), (b0, b1))
    cores = len(os.sched_getaffinity(0))  # the two pretrainings started together: half the cores each
    assert sorted(len(_cores(d)[0]) for d in tmp_path.glob("jobs/pretrain-*")) == [cores // 2, cores - cores // 2]


def test_ready_jobs_start_pretrainings_first_then_the_longest():
    """Among ready jobs: those others wait on first (a pretraining unlocks its transfers), then the longest by
    the estimate from finished jobs (longest-first leaves short jobs to fill the cores at the end), then plan
    order. Measured: Table 3 cold at `--jobs 2` spent 1,793 s of job time in 926 s of wall time when the ready
    jobs started in plan order (the last pretraining began after 28 of 30 jobs, then ran on one core)."""
    import io

    from harness.executors import ParallelRun
    from harness.planner import make_job
    from harness.progress import Reporter

    def transfer(task: str, dep: str) -> object:
        return make_job("transfer", f"{task} <- {dep[:4]}", {"task": task, "data": {"name": task}}, (dep,))

    p1, p2 = (make_job("pretrain", f"pretrain {n}", {"method": "mocov2", "epochs": 1, "seed": n}) for n in (1, 2))
    det, seg, depth = transfer("detection", p1.key), transfer("segmentation", p1.key), transfer("depth", p1.key)
    later = transfer("detection", p2.key)  # waits on p2
    seg2, depth2 = transfer("segmentation", p2.key), transfer("depth", p2.key)
    reporter = Reporter(8, stream=io.StringIO(), pending=[p1, p2, det, seg, depth, later, seg2, depth2])
    run = ParallelRun.__new__(ParallelRun)  # _first reads the reporter only
    run.reporter = reporter
    waiting = [depth, seg, det, p2, later, seg2, depth2]
    assert run._first([depth, seg, det, p2], waiting) == [p2, depth, seg, det]  # no estimate yet: plan order
    for job, seconds in ((p1, 100.0), (seg, 70.0), (depth, 15.0)):
        reporter.finished(job, {"wall_s": seconds, "value": 1.0})
    # detection not seen yet: the mean finished job (61.7 s), between segmentation (70 s) and depth (15 s)
    assert reporter.estimate(det) == statistics.mean([100.0, 70.0, 15.0])
    assert run._first([depth2, det, seg2, p2], [depth2, det, seg2, p2, later]) == [p2, seg2, det, depth2]
