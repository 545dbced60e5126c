"""Multi-process pretraining started the way a cluster starts it: one SLURM job, two tasks (submitit's
task environment), DistributedDataParallel over gloo. tests/test_pretrain_variants.py proves two processes
compute what one does on the same global batch; this proves the harness's launch path on real SLURM."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit")
cloudpickle = pytest.importorskip("cloudpickle")
cloudpickle.register_pickle_by_value(sys.modules[__name__])

from tests.test_slurm_cluster import _executor, _wait_done  # noqa: E402


def _pretrain_in_task(workdir: str) -> dict:
    """One SLURM task: pretrain() starts the process group itself from SLURM_NTASKS (submitit's env)."""
    import torch
    import torch.distributed as dist

    from pretrain.config import PretrainConfig
    from pretrain.train import pretrain

    cfg = PretrainConfig.from_dict(
        {"moco": {"arch": "resnet18", "queue_size": 32}, "aug": {"size": 16},
         "epochs": 2, "batch_size": 8, "lr": 0.05, "threads": 1}
    )  # fmt: skip
    data = torch.randint(0, 256, (32, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    summary = pretrain(cfg, data, Path(workdir))
    return {"rank": dist.get_rank(), "size": dist.get_world_size(), "loss": summary["loss_history"]}


@pytest.mark.slurm
def test_two_slurm_tasks_train_one_model_with_ddp(slurm_cluster: str, tmp_path: Path) -> None:
    executor = _executor(tmp_path / "jobs", tasks_per_node=2)
    job = executor.submit(_pretrain_in_task, str(tmp_path / "work"))
    assert _wait_done(job, timeout_s=240) == "COMPLETED", job.stderr()
    results = job.results()
    assert sorted((r["rank"], r["size"]) for r in results) == [(0, 2), (1, 2)]
    # the loss is all-reduced every step: both ranks report the same per-epoch curve, and it is finite
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], abs=1e-6)
    assert len(results[0]["loss"]) == 2 and all(v == v for v in results[0]["loss"])
    assert (tmp_path / "work" / "backbone.pt").exists()  # rank 0 writes it
