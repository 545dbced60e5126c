"""Table 2 end to end through the CLI at the smoke profile: run, cache, re-render, status, failures."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "harness", *map(str, args)], cwd=REPO,
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    if check and out.returncode != 0:
        raise AssertionError(f"exit {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}")
    return out


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    return results, cli("run", "table2", "--profile", "smoke", "--results", results)


def test_run_writes_the_table_in_three_formats(first_run):
    results, out = first_run
    for ext in ("md", "tex", "csv"):
        assert (results / f"table2.{ext}").stat().st_size > 0
    cells = pd.read_csv(results / "table2.csv")
    assert len(cells) == 28 and set(cells["status"]) == {"done"}
    assert cells["value"].between(0, 100).all()
    assert set(cells["row"]) == {"IN-118K", "COCO", "OI-118K", "IN-118K-LT"}
    base = cells[cells.row == "IN-118K"].set_index("column")["value"]
    coco = cells[cells.row == "COCO"].set_index("column")
    assert (coco["delta"] - (coco["value"] - base)).abs().max() < 1e-9  # deltas against the baseline row
    assert cells.loc[(cells.row == "COCO") & (cells.column == "VOC"), "paper"].item() == 80.9
    md = (results / "table2.md").read_text()
    assert "| COCO |" in md and "Paper (published" in md and "80.9 (+5.1)" in md
    assert out.stdout.strip() == md.strip()  # what was printed is what was written


def test_second_run_is_fully_cached(first_run):
    results, out = first_run
    again = cli("run", "table2", "--profile", "smoke", "--results", results)
    assert "32 jobs (32 cached, 0 to run)" in again.stderr
    assert "32 cached, 0 run, 0 failed" in again.stderr
    assert again.stdout == out.stdout


def test_table_regenerates_from_the_store_alone(first_run):
    results, _ = first_run
    tex = cli("table", "table2", "--profile", "smoke", "--results", results, "--format", "tex").stdout
    assert "\\toprule" in tex and "\\bottomrule" in tex and "IN-118K-LT" in tex
    csv = cli("table", "table2", "--profile", "smoke", "--results", results, "--format", "csv").stdout
    assert len(pd.read_csv(io.StringIO(csv))) == 28
    other = cli("table", "table2", "--profile", "smoke", "--results", results, "pretrain.epochs=2").stdout
    assert "| COCO | — |" in other  # other settings: nothing cached, cells marked missing


def test_status_lists_every_job(first_run):
    results, _ = first_run
    out = cli("status", "table2", "--profile", "smoke", "--results", results).stdout
    assert out.count(" done ") == 32 and "log.txt" in out


def test_dry_run_runs_nothing(tmp_path):
    out = cli("run", "table2", "--profile", "smoke", "--results", tmp_path, "--dry-run")
    assert out.stdout.count("to run") == 32
    assert not list(tmp_path.glob("jobs/*/result.json"))


def test_a_failed_pretraining_is_recorded_and_blocks_its_transfers(tmp_path):
    out = cli("run", "table1", "--profile", "smoke", "--results", tmp_path)  # cheap warm-up of the world
    assert "ImageNet-118K" in out.stdout
    bad = cli("run", "table2", "--profile", "smoke", "--results", tmp_path, "pretrain.lr=1e30",
              "pretrain.data.size=32", check=False)  # fmt: skip
    assert bad.returncode == 1
    assert "4 failed, 28 blocked" in bad.stderr
    errors = list(tmp_path.glob("jobs/pretrain-*/error.json"))
    assert len(errors) == 4 and not list(tmp_path.glob("jobs/pretrain-*/result.json"))
    assert "| COCO | blocked |" in bad.stdout or "| COCO | failed |" in bad.stdout
