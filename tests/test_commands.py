"""status, retry, cancel, clean and verify on a real (smoke) store: one pretraining and one transfer job."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.spec import REPO
from tests.test_real_transfer_data import make_cifar10

PART = ["--profile", "smoke", "--rows", "IN-118K", "--columns", "CIFAR10"]
REAL = "transfer.data.source=real"  # the transfer reads CIFAR-10 from --data-root


def harness(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def job_dirs(results: Path, kind: str) -> list[Path]:
    return sorted((results / "jobs").glob(f"{kind}-*"))


@pytest.fixture(scope="module")
def failed_store(tmp_path_factory) -> Path:
    """table2's IN-118K x CIFAR10 where the pretraining succeeded and the transfer failed (bad root)."""
    results = tmp_path_factory.mktemp("store")
    code = main(
        ["run", "table2", *PART, REAL, "--data-root", "cifar10=/nowhere", "--results", str(results)]
    )
    assert code == 1
    return results


def copy_of(store: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(store, tmp_path / "results"))


def test_status_shows_state_progress_elapsed_and_log_of_failures(capsys, failed_store) -> None:
    code, out, _ = harness(capsys, "status", "table2", *PART, REAL, "--results", str(failed_store))
    assert code == 0
    lines = out.splitlines()
    pre = next(line for line in lines if "pretrain IN-118K" in line)
    assert " done " in pre and " s " in pre  # state and elapsed seconds
    fail = next(i for i, line in enumerate(lines) if "linear CIFAR10 <- IN-118K" in line)
    assert " failed " in lines[fail]
    detail = "\n".join(lines[fail + 1 : fail + 8])
    assert "error:" in detail and "/nowhere" in detail and "| " in detail  # error and log tail
    assert lines[-1] == "2 jobs: 1 done, 1 failed"


def test_status_estimates_the_job_time_left_from_the_finished_jobs(capsys, failed_store) -> None:
    """table2's IN-118K row on the bias world: its pretraining is done, its 7 linear jobs are still to
    run; with no linear job finished, each is estimated at the mean finished job (the pretraining)."""
    from harness.progress import time_left_line

    code, out, _ = harness(capsys, "status", "table2", "--profile", "smoke", "--rows", "IN-118K",
                           "--results", str(failed_store))  # fmt: skip
    assert code == 0
    [pre] = job_dirs(failed_store, "pretrain")
    prov = json.loads((pre / "provenance.json").read_text())
    expected = time_left_line(7 * (prov["ended"] - prov["started"]))
    assert out.splitlines()[-1] == f"8 jobs: 1 done, 7 pending · {expected} (from the 1 done)"


def test_status_shows_epoch_progress_and_slurm_id(capsys, tmp_path, failed_store) -> None:
    results = copy_of(failed_store, tmp_path)
    transfer = job_dirs(results, "transfer")[0]
    (transfer / "error.json").unlink()
    (transfer / "progress.json").write_text(
        json.dumps({"epoch": 3, "epochs": 5, "step": 4, "steps": 9})  # 1-based, as jobs report
    )
    (transfer / "slurm.json").write_text(json.dumps({"job_id": "987654", "folder": str(tmp_path)}))
    code, out, _ = harness(capsys, "status", "--results", str(results))
    assert code == 0 and "987654" in out and "epoch 3/5 step 4/9" in out


def test_retry_reruns_failed_jobs_only(capsys, tmp_path, failed_store) -> None:
    results = copy_of(failed_store, tmp_path)
    make_cifar10(tmp_path / "cifar")
    pretrain_result = (job_dirs(results, "pretrain")[0] / "result.json").read_text()
    code, _, err = harness(capsys, "retry", "table2", *PART, REAL, "--data-root",
                           f"cifar10={tmp_path / 'cifar'}", "--results", str(results))  # fmt: skip
    assert "retry: cleared 1 failed or blocked job(s): linear CIFAR10 <- IN-118K" in err
    assert code == 0, err
    assert "1 cached, 1 run, 0 failed" in err  # the finished pretraining was not run again
    assert (job_dirs(results, "pretrain")[0] / "result.json").read_text() == pretrain_result
    transfer = job_dirs(results, "transfer")[0]
    assert (transfer / "result.json").exists() and not (transfer / "error.json").exists()


def test_verify_finds_edited_specs_and_missing_backbones(capsys, tmp_path, failed_store) -> None:
    results = copy_of(failed_store, tmp_path)
    code, _, err = harness(capsys, "verify", "--results", str(results))
    assert code == 0 and "verified 1 finished job(s): 0 problem(s)" in err
    pretrain = job_dirs(results, "pretrain")[0]
    job = json.loads((pretrain / "job.json").read_text())
    job["spec"]["lr"] = 0.5
    (pretrain / "job.json").write_text(json.dumps(job))
    next((pretrain / "work").glob("backbone*.pt")).unlink()
    code, out, _ = harness(capsys, "verify", "table2", *PART, REAL, "--results", str(results))
    assert code == 1
    assert "differs from the stored key" in out and "does not exist" in out and pretrain.name in out
    (pretrain / "result.json").write_text("{not json")
    code, out, _ = harness(capsys, "verify", "--results", str(results))
    assert code == 1 and "result.json is not valid JSON" in out


def test_clean_removes_failed_keeps_finished_unless_confirmed(
    capsys, tmp_path, failed_store
) -> None:
    results = copy_of(failed_store, tmp_path)
    (results / "jobs" / "pretrain-0123456789abcdef").mkdir()  # a partial dir without job.json
    code, out, _ = harness(capsys, "clean", "--all", "--results", str(results))
    assert code == 0 and "removed 2 job dir(s); kept 1 finished" in out
    assert [p.name.split("-")[0] for p in (results / "jobs").iterdir()] == ["pretrain"]
    assert "freed 0.00 GB of finished jobs' resume state (0 file(s))" in out  # run left none behind


def test_clean_frees_a_finished_jobs_leftover_resume_state_and_keeps_its_backbone(
    capsys, tmp_path, failed_store
) -> None:
    """What a worker killed between result.json and the deletion leaves (resume/), and what stores written
    before resume/ existed kept in work/ (checkpoint.pt and its digests, finetuning runs' run<r>.pt)."""
    results = copy_of(failed_store, tmp_path)
    pretrain = job_dirs(results, "pretrain")[0]
    backbone = next((pretrain / "work").glob("backbone*.pt"))
    (pretrain / "resume").mkdir()
    (pretrain / "resume" / "checkpoint.pt").write_bytes(b"x" * 3_000_000)
    for name in ("checkpoint.pt", "checkpoint.prev.pt", "checkpoint.sha256", "run0.pt", "checkpoint.pt.tmp"):
        (pretrain / "work" / name).write_bytes(b"x" * 1_000_000)
    code, out, _ = harness(capsys, "clean", "--all", "--results", str(results))
    assert code == 0 and "freed 0.01 GB of finished jobs' resume state (6 file(s))" in out
    assert sorted(p.name for p in (pretrain / "work").iterdir()) == [backbone.name]
    assert not (pretrain / "resume").exists()
    code, _, err = harness(capsys, "verify", "--results", str(results))
    assert code == 0 and "0 problem(s)" in err  # still whole


def test_clean_finished_needs_yes(capsys, tmp_path, failed_store) -> None:
    results = copy_of(failed_store, tmp_path)
    code, _, err = harness(
        capsys, "clean", "table2", *PART, REAL, "--finished", "--results", str(results)
    )
    assert code == 2 and "add --yes" in err and len(job_dirs(results, "pretrain")) == 1
    code, out, _ = harness(capsys, "clean", "table2", *PART, REAL, "--finished", "--yes",
                           "--results", str(results))  # fmt: skip
    assert code == 0 and "removed 2 job dir(s)" in out and not list((results / "jobs").iterdir())


def test_cancel_terminates_a_local_run(capsys, tmp_path, failed_store) -> None:
    """A job claimed by a live local process (one holding the store's claim, asleep) is sent SIGTERM."""
    results = copy_of(failed_store, tmp_path)
    transfer = job_dirs(results, "transfer")[0]
    (transfer / "error.json").unlink()
    key = transfer.name.split("-")[1]
    holder = (f"import time; from harness.store import Store; s = Store({str(results)!r}); "
              f"job = s.load_job({key!r})\nwith s.claim(job): print('claimed', flush=True); time.sleep(60)")  # fmt: skip
    sleeper = subprocess.Popen(
        [sys.executable, "-c", holder], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert sleeper.stdout.readline().strip() == "claimed"
    code, out, _ = harness(capsys, "cancel", "table2", *PART, REAL, "--results", str(results))
    assert code == 0 and f"sent SIGTERM to pid {sleeper.pid}" in out
    assert sleeper.wait(timeout=10) == -15


@pytest.mark.slurm
def test_cancel_scancels_queued_and_running_slurm_jobs(
    capsys, tmp_path, failed_store, slurm_cluster
) -> None:
    results = copy_of(failed_store, tmp_path)
    transfer = job_dirs(results, "transfer")[0]
    (transfer / "error.json").unlink()
    out = subprocess.run(["sbatch", "--parsable", "--wrap", "sleep 300", "-o", str(tmp_path / "%j.out")],
                         capture_output=True, text=True, check=True)  # fmt: skip
    job_id = out.stdout.strip().split(";")[0]
    (transfer / "slurm.json").write_text(json.dumps({"job_id": job_id, "folder": str(tmp_path)}))
    for _ in range(30):  # sacct knows the job once the controller has recorded it
        code, status, _ = harness(capsys, "status", "--results", str(results))
        if "slurm:" in status:
            break
        time.sleep(1)
    assert "slurm:" in status, status
    code, out, _ = harness(capsys, "cancel", "table2", *PART, REAL, "--results", str(results))
    assert code == 0 and f"cancelled 1 SLURM job(s) {job_id}" in out
    for _ in range(30):
        queue = subprocess.run(
            ["squeue", "-h", "-j", job_id], capture_output=True, text=True
        ).stdout
        if job_id not in queue:
            break
        time.sleep(1)
    assert job_id not in queue
