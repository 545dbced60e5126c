"""Table 2 at the smoke profile on the real one-node SLURM cluster, through submitit."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.test_table2_e2e import cli


@pytest.mark.slurm
def test_table2_runs_on_slurm_with_dependencies(slurm_cluster, tmp_path):
    out = cli("run", "table2", "--profile", "smoke", "--executor", "slurm", "--results", tmp_path)
    cells = pd.read_csv(tmp_path / "table2.csv")
    assert len(cells) == 28 and set(cells["status"]) == {"done"}
    assert "submitted as SLURM job" in out.stderr
    # every job ran under SLURM: its provenance names the SLURM job id recorded at submission
    for prov in tmp_path.glob("jobs/*/provenance.json"):
        slurm = json.loads((prov.parent / "slurm.json").read_text())
        env = json.loads(prov.read_text())["slurm"]
        ran_as = env["SLURM_JOB_ID"]
        if "SLURM_ARRAY_JOB_ID" in env:  # a task of a job array: <array id>_<task id>
            ran_as = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        assert ran_as == slurm["job_id"]
    # transfer jobs waited on their pretraining job (afterok)
    sbatch = list(tmp_path.glob("slurm/*/*/*_submission.sh")) + list(tmp_path.glob("slurm/*/*_submission.sh"))
    assert any("--dependency=afterok:" in p.read_text() for p in sbatch)
    status = cli("status", "table2", "--profile", "smoke", "--results", tmp_path).stdout
    assert status.count(" done ") == 32
    again = cli("run", "table2", "--profile", "smoke", "--executor", "slurm", "--results", tmp_path)
    assert "32 cached, 0 run" in again.stderr and "submitted" not in again.stderr
