"""Faults on the real one-node SLURM cluster, through the harness's SlurmExecutor: a sweep of 1,000
transfer jobs submitted as a few throttled arrays, a failed pretraining job whose dependants read as
blocked, a pretraining job preempted or timed out mid-run that requeues and ends with the weights of
an uninterrupted run, two `run`s started together, and an orchestrator killed and started again.

Each test has its own results directory (tmp_path) and a pytest timeout, so a hang fails CI."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness import executors
from harness.executors import SlurmExecutor, queued_job_ids
from harness.planner import Job, Plan, make_job
from harness.progress import Reporter
from harness.store import BLOCKED, DONE, FAILED, Store
from tests.test_faults import REPO, only_pretrain, smoke_plan
from tests.test_slurm_cluster import _wait_done

pytestmark = pytest.mark.slurm
EPOCHS = "pretrain.epochs=12"  # long enough (~10 s of training) to be interrupted mid-run
RUN = ["run", "table2", "--profile", "smoke", "--rows", "IN-118K", "--columns", "CIFAR10"]


def quiet(n: int) -> Reporter:
    return Reporter(n, stream=io.StringIO())


def submit(the_plan: Plan, results: Path, **profile: object) -> tuple[Store, dict]:
    """SlurmExecutor.submit with the local profile changed by `profile` (e.g. a 1 min time limit)."""
    executor = SlurmExecutor("local")
    executor.profile.update(profile)
    store = Store(results)
    return store, executor.submit(the_plan, store, quiet(len(the_plan.jobs)))[1]


def backbone(store: Store, job: Job) -> dict[str, torch.Tensor]:
    path = store.job_dir(job.key, job.kind) / "work" / store.result(job)["backbone"]
    return torch.load(path, weights_only=True)["state_dict"]


def restarts(store: Store, job: Job) -> int:
    prov = json.loads((store.job_dir(job.key, job.kind) / "provenance.json").read_text())
    return int(prov["slurm"].get("SLURM_RESTART_COUNT", 0))


def sbatched(results: Path) -> int:
    """How many jobs were submitted into this store: submitit keeps one *_submitted.pkl per job."""
    return len(list(results.glob("slurm/*/*/*_submitted.pkl")))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, Job, object]:
    """The same pretraining job, submitted once and never interrupted (it runs beside the tests)."""
    the_plan = only_pretrain(smoke_plan(EPOCHS))
    store, handles = submit(the_plan, tmp_path_factory.mktemp("uninterrupted"))
    (job,) = the_plan.jobs.values()
    return store, job, handles[job.key]


def assert_same_weights(store: Store, job: Job, uninterrupted: tuple) -> None:
    ref_store, ref_job, ref_handle = uninterrupted
    assert _wait_done(ref_handle, 240) == "COMPLETED" and ref_job.key == job.key
    expected, got = backbone(ref_store, ref_job), backbone(store, job)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)  # bit for bit


@pytest.mark.timeout(120)
def test_a_thousand_transfer_jobs_plan_and_submit_as_a_few_throttled_arrays(
    slurm_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(executors, "MAX_ARRAY", 200)  # so that a group of 250 is split in two
    started = time.perf_counter()
    base = smoke_plan()
    pre, transfer = base.jobs.values()
    sweep = Plan(base.table, base.profile, {})
    for seed in range(4):  # 4 pretraining jobs x 250 transfer jobs each
        parent = make_job("pretrain", f"pretrain seed {seed}", {**pre.spec, "seed": seed})
        sweep.add(parent)
        for cell in range(250):
            spec = {**transfer.spec, "sweep_cell": cell}
            sweep.add(make_job("transfer", f"cell {cell} <- seed {seed}", spec, (parent.key,)))
    planned = time.perf_counter() - started
    # held: nothing runs, every job is cancelled below
    store, handles = submit(sweep, tmp_path, additional_parameters={"hold": True})
    took = time.perf_counter() - started
    arrays = {handle.job_id.split("_")[0] for handle in handles.values()}
    try:
        assert len(handles) == 1004 and len(arrays) == 9  # per (kind, parent): 200 + 50 tasks
        assert {handle.job_id for handle in handles.values()} <= queued_job_ids()
        children = sweep.dependants(parent.key)
        for child, tasks in ((children[0], "0-199%2"), (children[-1], "0-49%2")):
            array = handles[child.key].job_id.split("_")[0]
            text = next(tmp_path.glob(f"slurm/*/{array}/{array}_submission.sh")).read_text()
            assert f"#SBATCH --array={tasks}" in text  # throttled by the profile's parallelism
            assert f"#SBATCH --dependency=afterok:{handles[parent.key].job_id}" in text
        assert all(
            store.slurm(job)["job_id"] == handles[job.key].job_id for job in sweep.jobs.values()
        )
    finally:
        subprocess.run(["scancel", *arrays], check=False, timeout=60)
    print(f"\n1,004 jobs: planned in {planned:.2f} s, planned + submitted in {took:.1f} s")
    assert took < 60


@pytest.mark.timeout(150)
def test_failed_pretraining_cancels_its_dependants_which_read_as_blocked(
    slurm_cluster: str, tmp_path: Path
) -> None:
    the_plan = smoke_plan("pretrain.lr=1.0e+30", columns=("CIFAR10", "Pets"))  # NaN at once
    store = Store(tmp_path)
    outcome = SlurmExecutor("local").run(the_plan, store, quiet(len(the_plan.jobs)))
    pre, *transfers = the_plan.jobs.values()
    assert outcome.states == {pre.key: FAILED, **{t.key: BLOCKED for t in transfers}}
    assert "loss is nan at epoch 1/1, step" in store.error(pre)["error"]
    for job in transfers:
        blocked = store.blocked(job)
        assert store.local_state(job) == BLOCKED and blocked["by"] == pre.name
        # kill_on_invalid_dep; sacct gives the reason 'Dependency' or none, depending on timing
        assert blocked["reason"] in ("CANCELLED", "CANCELLED (Dependency)"), blocked
        assert not (store.job_dir(job.key, job.kind) / "log.txt").exists()  # it never ran


def _interrupt_after_first_checkpoint(store: Store, job: Job, handle) -> None:
    checkpoint = store.resume_dir(job) / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        assert time.monotonic() < deadline and not store.is_done(job), handle.state
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", handle.job_id], check=True, timeout=30)


@pytest.mark.timeout(240)
def test_preempted_pretraining_requeues_and_ends_with_uninterrupted_weights(
    slurm_cluster: str, tmp_path: Path, uninterrupted: tuple
) -> None:
    the_plan = only_pretrain(smoke_plan(EPOCHS))
    store, handles = submit(the_plan, tmp_path)
    (job,) = the_plan.jobs.values()
    _interrupt_after_first_checkpoint(store, job, handles[job.key])  # what preemption sends
    assert _wait_done(handles[job.key], 180) == "COMPLETED"
    assert store.local_state(job) == DONE and restarts(store, job) == 1
    assert "resuming from" in (store.job_dir(job.key, job.kind) / "log.txt").read_text()
    assert_same_weights(store, job, uninterrupted)


@pytest.mark.timeout(240)
def test_pretraining_at_its_time_limit_checkpoints_requeues_and_resumes(
    slurm_cluster: str, tmp_path: Path
) -> None:
    """A real 1-minute limit. SLURM checks limits every 30 s, so USR2 (signal_delay_s=20) lands
    10-40 s into a run: the job is made too long to finish first, and cancelled once it resumed.
    That the resumed run ends with uninterrupted weights is the preemption test's (same path)."""
    the_plan = only_pretrain(smoke_plan("pretrain.epochs=200"))
    store, handles = submit(the_plan, tmp_path, timeout_min=1, signal_delay_s=20)
    (job,) = the_plan.jobs.values()
    log, deadline = store.job_dir(job.key, job.kind) / "log.txt", time.monotonic() + 200
    while "resuming from" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and not store.is_done(job), handles[job.key].state
        time.sleep(0.5)
    subprocess.run(["scancel", handles[job.key].job_id], check=True, timeout=30)
    text = log.read_text()
    assert text.count(f"start {job.name}") == 2  # the first run, then the requeued one
    assert "Job has timed out" in text  # submitit caught SLURM's USR2 and requeued the job
    # a signal landing between a save's two renames resumes from checkpoint.prev.pt, which then holds
    # the newest whole epoch (seen once in CI-like runs: "checkpoint.prev.pt (after epoch 47)")
    epoch = int(re.search(r"checkpoint(?:\.prev)?\.pt \(after epoch (\d+)\)", text).group(1))
    assert epoch >= 1 and not store.is_done(job)  # resumed mid-run from a checkpoint


def _harness(results: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "harness", *RUN, *extra, "--executor", "slurm"]
    return subprocess.Popen([*cmd, "--results", str(results)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def assert_table_done(results: Path) -> None:
    assert set(pd.read_csv(results / "table2.csv")["status"]) == {"done"}


@pytest.mark.timeout(200)
def test_two_runs_started_together_submit_each_job_once(slurm_cluster: str, tmp_path: Path) -> None:
    runs = [_harness(tmp_path) for _ in range(2)]
    outputs = [run.communicate(timeout=180) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert sbatched(tmp_path) == 2  # the pretraining job and its transfer job, once each
    stderr = "".join(err for _, err in outputs)
    assert stderr.count("submitted as SLURM job") == 2
    assert stderr.count("already queued") + stderr.count("(cached)") == 2  # the other run followed
    assert_table_done(tmp_path)


@pytest.mark.timeout(200)
def test_a_restarted_orchestrator_follows_its_queued_jobs(
    slurm_cluster: str, tmp_path: Path
) -> None:
    first = _harness(tmp_path, "pretrain.epochs=3")
    store, deadline = Store(tmp_path), time.monotonic() + 120
    while len(list(tmp_path.glob("jobs/*/slurm.json"))) < 2:  # both jobs submitted
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)  # the orchestrator dies; its SLURM jobs live on
    first.communicate(timeout=30)
    ids = {json.loads(p.read_text())["job_id"] for p in tmp_path.glob("jobs/*/slurm.json")}
    second = _harness(tmp_path, "pretrain.epochs=3")
    out, err = second.communicate(timeout=180)
    assert second.returncode == 0, err
    assert "submitted as" not in err and "already queued" in err, err
    assert sbatched(tmp_path) == 2
    assert ids == {store.slurm(job)["job_id"] for job in store.jobs()}  # followed, not replaced
    assert_table_done(tmp_path)
