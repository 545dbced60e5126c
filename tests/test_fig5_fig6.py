"""Figures 5 and 6: transfer from intermediate checkpoints (a table's `checkpoints`) and CAM grids."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from harness.errors import HarnessError
from harness.planner import make_job, plan, pretrain_spec, transfer_spec
from harness.spec import load_profile, load_table
from tests.test_table2_e2e import cli

ROWS = {"MoCo", "MoCo + MC"}


def test_fig5_plan_one_pretraining_per_row_and_a_transfer_per_checkpoint():
    # tiny: 200 epochs x 0.025 = 5, so the checkpoints 40, 80, 120, 160 are epochs 1, 2, 3, 4
    p = plan(load_table("fig5"), load_profile("tiny"))
    pretrain = [job for job in p.jobs.values() if job.kind == "pretrain"]
    assert [job.name for job in pretrain] == ["pretrain MoCo", "pretrain MoCo + MC"]
    assert all(
        job.spec["epochs"] == 5 and job.spec["save_backbone_epochs"] == [1, 2, 3, 4]
        for job in pretrain
    )
    transfers = [job for job in p.jobs.values() if job.kind == "transfer"]
    assert len(transfers) == 2 * 2 * 5  # rows x columns x (4 checkpoints + the final epoch)
    for (row, column, paper_epoch), key in p.checkpoints.items():
        job = p.jobs[key]
        assert job.deps == (p.rows[row],)  # every checkpoint reads its row's one pretraining job
        if paper_epoch == 200:
            assert key == p.cells[(row, column)] and "checkpoint" not in job.spec
        else:
            assert job.spec["checkpoint"] == paper_epoch // 40
    assert len(set(p.checkpoints.values())) == len(transfers)


def test_final_epoch_jobs_keep_their_keys():
    """A table without checkpoints plans as before; with them, the final-epoch transfer spec is
    unchanged and only its pretraining dependency (which now keeps backbones) differs."""
    table, tiny = load_table("fig5"), load_profile("tiny")
    plain = dataclasses.replace(table, checkpoints=[])
    with_ckpt, without = plan(table, tiny), plan(plain, tiny)
    assert not without.checkpoints and len(without.jobs) == 2 + 2 * 2
    for row, row_spec in table.rows.items():
        pre = make_job("pretrain", "", pretrain_spec(plain, row_spec, tiny, {}))
        assert without.rows[row] == pre.key  # save_backbone_epochs stays the method default: []
        assert pre.spec["save_backbone_epochs"] == []
        for column in table.columns:
            cell = make_job("transfer", "", transfer_spec(plain, column, tiny, {}), (pre.key,))
            assert without.cells[(row, column)] == cell.key
            assert with_ckpt.jobs[with_ckpt.cells[(row, column)]].spec == cell.spec
    # table5's rows are fig5's: without checkpoints they are the very same pretraining jobs
    table5 = plan(load_table("table5"), tiny)
    assert table5.rows == without.rows
    assert set(with_ckpt.rows.values()).isdisjoint(table5.rows.values())  # these keep backbones


@pytest.mark.parametrize("checkpoints", [[0, 40], [200], [40.5]])
def test_checkpoints_outside_the_run_fail_clearly(tmp_path, checkpoints):
    text = (load_table("fig5").path.read_text()).replace(
        "checkpoints: [40, 80, 120, 160]", f"checkpoints: {checkpoints}"
    )
    path = tmp_path / "fig5.yaml"
    path.write_text(text)
    with pytest.raises(HarnessError, match=r"checkpoints .* must be whole epochs in \[1, 199\]"):
        load_table(str(path))


def test_a_checkpoint_the_pretraining_did_not_keep_fails_naming_it(tmp_path):
    from harness.jobs import JobContext, run_transfer
    from harness.store import Store

    p = plan(load_table("fig5"), load_profile("smoke"), {"pretrain.epochs": 2})
    store = Store(tmp_path)
    pretraining = p.jobs[p.rows["MoCo"]]
    store.register(pretraining)
    store.write_result(pretraining, {"backbone": "backbone.pt", "backbones": {}})  # kept none
    job = p.jobs[p.checkpoints[("MoCo", "VOC SVM", 40)]]
    with pytest.raises(RuntimeError, match="kept no backbone at epoch 1; it kept \\[\\]"):
        run_transfer(JobContext(store, job, {}))


def test_cam_is_normalised_and_peaks_where_its_class_scores_highest():
    from pretrain.backbones import build_backbone
    from transfer.cam import class_activation_maps

    torch.manual_seed(0)
    backbone = build_backbone("resnet18").eval()
    images = torch.randint(
        0, 256, (3, 3, 96, 160), dtype=torch.uint8
    ).float()  # 3 x 5 cells of 32 px
    weight = torch.randn(4, backbone.out_dim)
    cams, pred = class_activation_maps(backbone, weight, images)
    raw, _ = class_activation_maps(backbone, weight, images, raw=True)
    assert cams.shape == (3, 96, 160) and raw.shape == (3, 3, 5)
    assert (cams >= 0).all() and (cams <= 1).all()
    assert torch.allclose(cams.amin((1, 2)), torch.zeros(3))  # scaled to [0, 1] per image
    assert torch.allclose(cams.amax((1, 2)), torch.ones(3))
    # the upsampled peak lies inside the image, in the 32 x 32 cell whose class score is highest
    for cam, cells in zip(cams, raw):
        i, j = divmod(int(cells.argmax()), cells.shape[1])
        y, x = divmod(int(cam.argmax()), cam.shape[1])
        assert (y // 32, x // 32) == (i, j)


def test_first_of_each_class():
    from transfer.cam import first_of_each_class

    assert first_of_each_class(np.array([3, 1, 1, 0, 3, 2]), 3).tolist() == [3, 1, 5]


# smoke pretrains 1 epoch; 2 give Figure 5 one checkpoint (epoch 1). Figure 6 keeps the same backbone
# (save_backbone_epochs) so that its pretraining jobs are Figure 5's.
SHARED = ("--profile", "smoke", "pretrain.epochs=2")


@pytest.fixture(scope="module")
def fig5_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    return results, cli("run", "fig5", *SHARED, "--results", results, "--columns", "VOC SVM")


def test_fig5_smoke_run_draws_transfer_against_epochs(fig5_run):
    tmp_path, out = fig5_run
    # 2 pretrainings, each with a transfer at epoch 1 and one at the final epoch 2
    assert "6 jobs (0 cached, 6 to run)" in out.stderr
    data = pd.read_csv(tmp_path / "fig5_data.csv")
    assert set(data["row"]) == ROWS and set(data["column"]) == {"VOC SVM"}
    assert sorted(data["paper_epoch"].unique()) == [40, 80, 120, 160, 200]
    assert (data["status"] == "done").all() and data["value"].between(0, 100).all()
    assert data.groupby("row")["epoch"].apply(set).tolist() == [{1, 2}, {1, 2}]
    # the x axis, training time: each row's pretraining wall time pro rata by epoch
    for row, points in data.groupby("row"):
        walls = points["pretrain_s_est"] / points["epoch"] * points["epochs"]
        assert (points["pretrain_s_est"] > 0).all() and np.allclose(walls, walls.iloc[0]), (row, points)
    final = data[data["paper_epoch"] == 200].set_index("row")["value"]
    table = pd.read_csv(tmp_path / "fig5.csv").pivot(index="row", columns="column", values="value")
    assert np.allclose(final.sort_index(), table["VOC SVM"].sort_index())  # the table's cells
    assert (data.groupby("row")["value"].nunique() == 2).all()  # epoch 1's backbone is another one
    with Image.open(tmp_path / "fig5.png") as png:
        assert png.size[0] >= 400 and png.size[1] >= 400


def test_fig6_smoke_run_stacks_the_cam_grids(fig5_run):
    from transfer.cam import CELL

    tmp_path, _ = fig5_run
    out = cli("run", "fig6", *SHARED, "pretrain.save_backbone_epochs=[1]", "--results", tmp_path)
    assert "4 jobs (2 cached, 2 to run)" in out.stderr  # Figure 5's pretrainings; a cam job per row
    data = pd.read_csv(tmp_path / "fig6_data.csv")
    assert set(data["row"]) == ROWS and (data.groupby("row").size() == 4).all()  # smoke: n_images 4
    peaks = data[["peak_y", "peak_x"]]
    assert ((peaks >= 0) & (peaks < 96)).all().all()  # inside the 96 px images (smoke cam_size)
    assert data["area"].between(0, 100).all() and (data["area"] > 0).all()
    assert data.groupby("row")["label"].nunique().eq(4).all()  # one image per class
    grids = sorted(tmp_path.glob("jobs/transfer-*/work/cam.png"))
    assert len(grids) == 2
    for grid in grids:
        with Image.open(grid) as im:
            assert im.size == (4 * CELL, 2 * CELL)
    with Image.open(tmp_path / "fig6.png") as png:
        assert png.size[1] >= 2 * 2 * CELL  # both rows' grids, stacked
    table = pd.read_csv(tmp_path / "fig6.csv").pivot(index="row", columns="column", values="value")
    assert table["ImageNet"].between(0, 100).all() and table["CAM area (%)"].between(0, 100).all()
