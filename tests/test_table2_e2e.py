"""Table 2 end to end through the CLI at the smoke profile: run, cache, re-render, status, failures."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str | Path, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "harness", *map(str, args)], cwd=REPO, env=env,
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
    # two steps: the first step's update explodes the weights, the second step's loss is not finite
    bad = cli("run", "table2", "--profile", "smoke", "--results", tmp_path, "pretrain.lr=1e30",
              "pretrain.data.size=64", check=False)  # fmt: skip
    assert bad.returncode == 1
    assert "4 failed, 28 blocked" in bad.stderr
    errors = list(tmp_path.glob("jobs/pretrain-*/error.json"))
    assert len(errors) == 4 and not list(tmp_path.glob("jobs/pretrain-*/result.json"))
    assert "| COCO | blocked |" in bad.stdout or "| COCO | failed |" in bad.stdout
    assert "at epoch 1/1, step 2/2" in errors[0].read_text()


def test_table3_shares_table2_pretraining_and_marks_cells_it_does_not_evaluate(first_run):
    """Table 3 (smoke, two rows and two columns) reuses Table 2's IN-118K checkpoint; BDD100K is evaluated on
    Cityscapes only, so its DAVIS cell is n/a, not missing."""
    results, _ = first_run
    out = cli("run", "table3", "--profile", "smoke", "--results", results,
              "--rows", "IN-118K,BDD100K", "--columns", "Seg. Cityscapes,DAVIS")  # fmt: skip
    assert "5 jobs (1 cached, 4 to run)" in out.stderr  # the IN-118K pretraining job is table2's
    cells = pd.read_csv(results / "table3.csv").set_index(["row", "column"])
    assert cells.loc[("BDD100K", "DAVIS"), "status"] == "not-evaluated"
    done = cells[cells.status == "done"]
    assert len(done) == 3
    assert done["value"].between(0, 100).all()
    assert cells.loc[("BDD100K", "Seg. Cityscapes"), "paper"] == 70.1
    bdd = [line for line in (results / "table3.md").read_text().splitlines() if line.startswith("| BDD100K |")]
    assert len(bdd) == 2 and all(line.endswith("| - |") for line in bdd)  # measured and paper: DAVIS n/a
    # finished jobs keep their outputs (backbones) but none of their resume state (finetuning checkpoints)
    jobs = results / "jobs"
    assert not list(jobs.glob("*/resume")) and list(jobs.glob("transfer-*/log.txt"))
    assert {p.name for p in jobs.glob("*/work/*.pt")} == {"backbone.pt"}


def test_random_init_row(first_run, tmp_path):
    """A `method: random` row saves the seeded, untrained backbone and is evaluated like any other."""
    spec = tmp_path / "rand.yaml"
    spec.write_text(
        "name: rand\ntitle: random init\nkind: grid\npretrain: {epochs: 400}\n"
        "rows:\n  Rand. init.: {method: random, data: {name: coco}}\n  COCO: {data: {name: coco}}\n"
        "columns:\n  CIFAR10: {data: {name: cifar10}}\n"
    )
    results, _ = first_run
    cli("run", spec, "--profile", "smoke", "--results", results)
    cells = pd.read_csv(results / "rand.csv").set_index("row")
    assert set(cells["status"]) == {"done"}
    import json

    import torch

    from pretrain.config import MoCoConfig
    from pretrain.moco import MoCo

    [pre] = [d for d in (results / "jobs").glob("pretrain-*")
             if json.loads((d / "job.json").read_text())["spec"]["method"] == "random"]  # fmt: skip
    result = json.loads((pre / "result.json").read_text())
    assert result["epochs"] == 0 and result["loss_history"] == []
    saved = torch.load(pre / "work" / result["backbone"], weights_only=True)["state_dict"]
    spec = json.loads((pre / "job.json").read_text())["spec"]
    torch.manual_seed(spec["seed"])
    fresh = MoCo(MoCoConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["moco"].items()}))
    assert all(torch.equal(saved[k], v) for k, v in fresh.backbone.state_dict().items())


def test_table4_ablation_every_variant_runs(tmp_path):
    """Table 4 at smoke: MC, CC, lower momentum, A+ and kNN rows train, and every transfer (segmentation, SVM,
    main_lincls) runs on them; Rand. init. is evaluated on the segmentation columns only."""
    cli("run", "table4", "--profile", "smoke", "--results", tmp_path)
    cells = pd.read_csv(tmp_path / "table4.csv", keep_default_na=False).set_index(["row", "column"])
    rand = cells.loc["Rand. init."]
    assert set(rand.loc[["VOC SVM", "ImageNet", "Places"], "status"]) == {"not-evaluated"}
    done = cells[cells.status == "done"]
    assert len(done) == 6 * 6 + 3
    assert pd.to_numeric(done["value"]).between(0, 100).all()
