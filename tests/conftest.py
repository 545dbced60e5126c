"""Shared test settings and the session fixture that starts the one-node SLURM cluster."""

import os
import subprocess
from pathlib import Path

import pytest
import torch

from pretrain.backbones import build_backbone, save_backbone

# Two cores: keep BLAS and torch from oversubscribing them in tests.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# Runs in tests one job at a time (the `--jobs` default is auto: a job per core) unless a test asks for more:
# a worker pool costs each short smoke run a few seconds. tests/test_parallel.py runs the default itself.
os.environ.setdefault("HARNESS_JOBS", "1")

START = Path(__file__).resolve().parents[1] / "slurm" / "start_cluster.sh"


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """Starts the cluster, or checks that it runs (idempotent: ~1 s when up). Returns the script output."""
    try:
        out = subprocess.run(
            ["bash", str(START)], capture_output=True, text=True, timeout=600, check=False
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{START} did not finish in 600 s:\n{err.stdout}\n{err.stderr}")
    if out.returncode != 0:
        pytest.fail(f"{START} failed (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out.stdout


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    """A seeded, untrained ResNet-18 saved as a pretraining job saves its backbone (one per test module)."""
    torch.manual_seed(0)
    return save_backbone(build_backbone("resnet18"), "resnet18", tmp_path_factory.mktemp("bb") / "backbone.pt")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A feature/data cache folder shared by one test module's tasks."""
    return tmp_path_factory.mktemp("cache")
