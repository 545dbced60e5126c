"""Sweeps (`key=a,b,c`), seeds and `run all`: which jobs they plan, and that existing job keys never move."""

from __future__ import annotations

import pytest

from harness.cli import main, make_plan
from harness.cli import parser as cli_parser
from harness.errors import HarnessError
from harness.planner import plan
from harness.spec import Sweep, load_profile, load_table, parse_overrides, with_seeds


def _plan(*argv: str):
    args, extra = cli_parser().parse_known_args(["run", *argv, "--profile", "smoke"])
    args.overrides = [*args.overrides, *extra]
    return make_plan(args)


def test_commas_sweep_but_brackets_keep_a_list():
    parsed = parse_overrides(
        ["pretrain.moco.knn_k=1,5,10", "pretrain.aug.crop_scale=[0.2,1.0]", "a.b='x,y'"]
    )
    assert parsed["pretrain.moco.knn_k"] == Sweep([1, 5, 10])
    assert parsed["pretrain.aug.crop_scale"] == [0.2, 1.0] and parsed["a.b"] == "x,y"


def test_command_line_sweep_is_one_plan_whose_points_equal_plain_overrides():
    swept = _plan(
        "table8", "--rows", "k=20", "pretrain.moco.knn_k=1,5", "pretrain.moco.knn_lambda=0.1,0.2"
    )
    assert list(swept.table.rows) == [
        "knn_k=1, knn_lambda=0.1", "knn_k=1, knn_lambda=0.2", "knn_k=5, knn_lambda=0.1", "knn_k=5, knn_lambda=0.2"
    ]  # fmt: skip
    single = _plan(
        "table8", "--rows", "k=20", "pretrain.moco.knn_k=5", "pretrain.moco.knn_lambda=0.2"
    )
    assert swept.rows["knn_k=5, knn_lambda=0.2"] == single.rows["k=20"]
    assert len(swept.jobs) == 8 and swept.table.paper == {} and swept.table.claims == []
    with pytest.raises(HarnessError, match="moco.knn_k"):
        _plan("table8", "--rows", "k=20", "pretrain.moco.knn_kk=1,5")


def test_table8_sweep_rows_are_the_listed_rows(tmp_path):
    """Declaring the grid as `sweep:` gives the very jobs the listed rows gave (caches stay valid)."""
    listed = "\n".join(
        [f"  k={k}: {{moco: {{knn_k: {k}}}}}" for k in (1, 5, 10, 20, 50)]
        + [f"  lambda={v}: {{moco: {{knn_lambda: {v}}}}}" for v in (0.0, 0.1, 0.2, 0.4, 0.8)]
    )
    text = load_table("table8").path.read_text()
    head = text[: text.index("sweep:")]
    tail = text[text.index("baseline:") :]
    path = tmp_path / "table8.yaml"
    path.write_text(head + "rows:\n" + listed + "\n" + tail)
    profile = load_profile("smoke")
    ours, theirs = plan(load_table("table8"), profile), plan(load_table(str(path)), profile)
    assert ours.rows == theirs.rows and ours.cells == theirs.cells and len(ours.rows) == 10


def test_seed_zero_keeps_the_keys_and_more_seeds_add_distinct_runs():
    profile = load_profile("smoke")
    table = load_table("table2").select(["IN-118K", "COCO"], ["CIFAR10"])
    one, three = plan(table, profile), plan(with_seeds(table, 3), profile)
    assert three.cells == one.cells and three.rows == one.rows
    pretrains = [j for j in three.jobs.values() if j.kind == "pretrain"]
    assert len(pretrains) == 6 and sorted(j.spec["seed"] for j in pretrains) == [0, 0, 1, 1, 2, 2]
    assert all(len(set(keys)) == 3 for keys in three.replicates.values())
    with pytest.raises(HarnessError, match="seeds"):
        with_seeds(table, 0)


def test_run_all_shares_jobs_between_tables(capsys, tmp_path):
    merged = _plan("all")
    names = [p.table.name for p in merged.parts]
    assert {"table1", "table2", "table3", "table8", "tableS1", "fig1", "fig2", "fig3"} <= set(names)
    assert len(merged.jobs) < sum(
        len(p.jobs) for p in merged.parts
    )  # table3 reuses table2's pretraining
    for part in merged.parts:
        assert set(part.jobs) <= set(merged.jobs)
        for job in part.jobs.values():  # topological: a job comes after the jobs it needs
            order = list(merged.jobs)
            assert all(order.index(dep) < order.index(job.key) for dep in job.deps)
    assert main(["run", "all", "--profile", "smoke", "--dry-run", "--results", str(tmp_path)]) == 0
    assert "summed over tables" in capsys.readouterr().err
