"""Faults a long unattended run must survive, on this machine (no SLURM): a worker killed with
SIGKILL, a corrupt or truncated checkpoint, two `run`s at once, a NaN loss and the jobs it blocks.
The SLURM side of the same faults is tests/test_slurm_faults.py."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.executors import LocalExecutor
from harness.jobs import JobRunner
from harness.planner import Plan, plan
from harness.progress import Reporter
from harness.spec import load_profile, load_table, parse_overrides
from harness.store import BLOCKED, DONE, FAILED, PENDING, RUNNING, Store
from pretrain.train import _load_checkpoint, pretrain
from tests.test_pretrain_train import DATA, tiny, weights

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 120.0  # a smoke job ends in seconds; a hang must fail, not block CI


def smoke_plan(*overrides: str, columns: tuple[str, ...] = ("CIFAR10",)) -> Plan:
    """Table 2's IN-118K row at the smoke profile: one pretraining job and its transfer jobs."""
    table = load_table("table2").select(["IN-118K"], list(columns))
    return plan(table, load_profile("smoke"), parse_overrides(list(overrides)))


def only_pretrain(the_plan: Plan) -> Plan:
    the_plan.jobs = {k: job for k, job in the_plan.jobs.items() if job.kind == "pretrain"}
    return the_plan


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        assert proc.poll() is None, f"worker exited ({proc.returncode}) before {path.name} existed"
        assert time.monotonic() < deadline, f"{path} not written in {WAIT_S:.0f} s"
        time.sleep(0.05)


def test_sigkilled_worker_leaves_no_result_and_a_rerun_completes(tmp_path: Path) -> None:
    job = next(iter(only_pretrain(smoke_plan("pretrain.epochs=3")).jobs.values()))
    store = Store(tmp_path)
    store.register(job)
    work = store.job_dir(job.key, job.kind)
    runner = f"from harness.jobs import JobRunner; JobRunner({str(tmp_path)!r}, {job.key!r})()"
    worker = subprocess.Popen([sys.executable, "-c", runner], cwd=REPO)
    try:
        _wait_for(work / "resume" / "checkpoint.pt", worker)  # killed mid-training, after epoch 1
        assert store.local_state(job) == RUNNING  # its claim is held by a live process
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        worker.kill()
    assert not (work / "result.json").exists() and not store.is_done(job)
    assert (work / "claim.json").exists()  # left behind by the killed process...
    assert store.local_state(job) == PENDING  # ...and read as dead: its flock went with it
    result = JobRunner(str(tmp_path), job.key)()
    assert store.local_state(job) == DONE and len(result["loss_history"]) == 3
    assert "resuming from" in (work / "log.txt").read_text()
    assert not (work / "resume").exists()  # the resume state is dropped once the result is stored...
    assert (work / "work" / result["backbone"]).is_file()  # ...the output stays


def _run_tiny(workdir: Path, caplog: pytest.LogCaptureFixture) -> tuple[dict, str]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pretrain.train"):
        summary = pretrain(tiny(), DATA, workdir)
    return summary, caplog.text


def test_corrupt_or_truncated_checkpoint_falls_back_to_the_previous_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    summary, _ = _run_tiny(tmp_path, caplog)  # 2 epochs: checkpoint.pt = epoch 2, prev = epoch 1
    final = weights(summary["backbone"])
    checkpoint, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    assert torch.load(previous, weights_only=True)["epoch"] == 1

    raw = bytearray(checkpoint.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # a flipped byte inside a tensor: torch.load alone would accept it
    checkpoint.write_bytes(bytes(raw))
    summary, logged = _run_tiny(tmp_path, caplog)
    assert "checkpoint.pt is corrupt or truncated (sha256 differs): skipped" in logged
    assert "resuming from" in logged and "checkpoint.prev.pt (after epoch 1)" in logged  # resumed
    assert all(
        torch.equal(final[k], v) for k, v in weights(summary["backbone"]).items()
    )  # and exactly

    for path in (checkpoint, previous):  # now both are cut short, and their digests are lost:
        path.write_bytes(path.read_bytes()[:1000])  # the load check alone must catch them
    (tmp_path / "checkpoint.sha256").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pretrain.train"):
        assert _load_checkpoint(checkpoint) is None  # pretrain() then starts from epoch 0
    assert caplog.text.count("does not load") == 2
    assert "training starts over from epoch 0" in caplog.text


def test_nan_loss_fails_the_job_naming_epoch_and_step_and_blocks_its_dependants(
    tmp_path: Path,
) -> None:
    the_plan = smoke_plan("pretrain.lr=1.0e+30", columns=("CIFAR10", "Pets"))
    store = Store(tmp_path)
    outcome = LocalExecutor().run(the_plan, store, Reporter(len(the_plan.jobs)))
    pre, *transfers = the_plan.jobs.values()
    assert outcome.states == {pre.key: FAILED, **{t.key: BLOCKED for t in transfers}}
    error = store.error(pre)["error"]
    assert re.match(
        r"FloatingPointError: loss is (nan|inf) at epoch 1/1, step [12]/2$", error
    ), error
    for job in transfers:
        assert store.local_state(job) == BLOCKED
        assert store.blocked(job)["by"] == "pretrain IN-118K" == pre.name
        assert store.blocked(job)["by_key"] == pre.key


def test_two_runs_started_together_run_each_job_once(tmp_path: Path) -> None:
    args = ["run", "table2", "--profile", "smoke", "--rows", "IN-118K", "--columns", "CIFAR10"]
    cmd = [sys.executable, "-m", "harness", *args, "--results", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]  # fmt: skip
    outputs = [run.communicate(timeout=2 * WAIT_S) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    store = Store(tmp_path)
    for job in smoke_plan().jobs.values():
        log = (store.job_dir(job.key, job.kind) / "log.txt").read_text()
        assert log.count(f"start {job.name}") == 1, log  # one of the two ran it, the other waited
        assert store.local_state(job) == DONE
    assert outputs[0][0] == outputs[1][0] and "CIFAR10" in outputs[0][0]  # the same table
