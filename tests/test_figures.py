"""Figure 1 end to end: view pairs from the training crop sampler, histogram PNG + data CSV + table."""

from __future__ import annotations

import pandas as pd
from PIL import Image

from tests.test_table2_e2e import cli


def test_fig1_from_the_training_crop_sampler(tmp_path):
    out = cli("run", "fig1", "--results", tmp_path)
    assert "2 jobs (0 cached, 2 to run)" in out.stderr
    with Image.open(tmp_path / "fig1.png") as png:
        assert png.size[0] >= 600 and png.size[1] >= 400
    data = pd.read_csv(tmp_path / "fig1_data.csv")
    assert set(data["row"]) == {"MoCo (0.2-1)", "SimCLR (0.08-1)"}
    assert (data.groupby("row")["percent"].sum() - 100).abs().max() < 1e-6
    assert (data.groupby("row")["count"].sum() == 100_000).all()
    cells = pd.read_csv(tmp_path / "fig1.csv").pivot(index="row", columns="column", values="value")
    # SimCLR's smaller minimum scale gives more disjoint and low-overlap pairs (the paper's point)
    simclr, moco = cells.loc["SimCLR (0.08-1)"], cells.loc["MoCo (0.2-1)"]
    assert simclr["No overlap (%)"] > moco["No overlap (%)"]
    assert simclr["Mean IoU"] < moco["Mean IoU"]
    again = cli("table", "fig1", "--results", tmp_path)
    assert "MoCo (0.2-1)" in again.stdout


def test_fig3_loss_curves_and_fig2_lines_share_pretraining(tmp_path):
    rows = "none,IoU < 0.5"
    smoke = ("--profile", "smoke", "--results", tmp_path, "--rows", rows)
    cli("run", "fig3", *smoke)
    curves = pd.read_csv(tmp_path / "fig3_data.csv")
    assert set(curves["row"]) == {"none", "IoU < 0.5"}
    assert curves["loss"].notna().all() and (curves["loss"] > 0).all()
    assert (tmp_path / "fig3.png").stat().st_size > 10_000
    md = (tmp_path / "fig3.md").read_text()  # no transfer cells: a line, not an empty table
    assert "no transfer cells" in md and "none, IoU < 0.5" in md and "|" not in md
    out = cli("run", "fig2", *smoke, "--columns", "VOC SVM")
    assert "4 jobs (2 cached, 2 to run)" in out.stderr  # fig2's pretraining jobs are fig3's
    lines = pd.read_csv(tmp_path / "fig2_data.csv")
    assert sorted(lines["x"]) == [0.5, 1.0] and lines["value"].between(0, 100).all()
    assert (tmp_path / "fig2.png").stat().st_size > 10_000
