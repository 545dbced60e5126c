"""The report: a user's own spec run by path with seeds, the HTML page in a real browser, LaTeX through pdflatex."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from harness.cli import main
from harness.collate import collate
from harness.planner import plan
from harness.render import to_latex
from harness.spec import list_tables, load_profile, load_table, with_seeds
from harness.store import Store

STUDY = """\
name: my_study
title: My study
rows:
  IN-118K: {data: {name: in118k}}
columns:
  CIFAR10: {task: linear, data: {name: cifar10}}
pretrain: {method: mocov2, epochs: 400}
"""


def test_own_spec_file_runs_by_path_with_seeds(tmp_path):
    spec = tmp_path / "my_study.yaml"
    spec.write_text(STUDY)
    results = tmp_path / "results"
    argv = ["run", str(spec), "--profile", "smoke", "--seeds", "2", "--results", str(results)]
    assert main(argv) == 0
    md = (results / "my_study.md").read_text()
    assert "mean ± std over 2 seeds" in md and " ± " in md.split("| IN-118K |")[1]
    csv = (results / "my_study.csv").read_text()
    assert ",2\n" in csv or ",2," in csv  # n = 2 finished seeds


def _fill(store: Store, seeds: int) -> None:
    """Hand-written results for table2 (every seed) and fig2: the report must show them, not run anything."""
    for name in ("table2", "fig2"):
        p = plan(with_seeds(load_table(name), seeds), load_profile("smoke"))
        for (row, column), keys in p.replicates.items():
            for seed, key in enumerate(keys):
                store.register(p.jobs[key])
                store.write_result(
                    p.jobs[key], {"value": 50.0 + len(row) + 0.3 * seed + len(column) / 10}
                )


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    _fill(Store(results), seeds=2)
    assert main(["report", "--profile", "smoke", "--seeds", "2", "--results", str(results)]) == 0
    return results


def test_report_has_every_table_claims_and_the_missing_cells(report):
    html = (report / "report.html").read_text()
    md = (report / "report.md").read_text()
    for name in list_tables():
        assert f"id='{name}'" in html and f"## {name}:" in md
    assert (
        "does not hold" in html and "not enough data" in html
    )  # COCO < IN-118K here; table3 never ran
    assert (
        "<td class='done'>57.9 ± 0.2<span class='paper'>paper 83.1</span>" in html
    )  # IN-118K, CIFAR10: mean of 57.7, 58.0
    assert "<td class='missing'>—" in html and "data:image/png;base64," in html
    assert "| table2 | 28 | 0 | 0 | 0 | 0 | 0 |" in md


@pytest.mark.skipif(shutil.which("chromium") is None, reason="setup.sh installs Debian's chromium")
def test_report_renders_its_tables_and_images_in_headless_chromium(report):
    url = (report / "report.html").as_uri()
    flags = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    assert dom.count('<table class="results">') == sum(
        bool(load_table(n).columns) for n in list_tables()
    )
    assert dom.count("<img ") >= 1 and "<tbody>" in dom  # parsed by the browser, not echoed
    shot = report / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,1600", url],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10 and (pixels < 100).mean() > 0.002  # text and rules drawn on white


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="setup.sh installs Debian's texlive")
def test_latex_table_compiles_with_booktabs(tmp_path):
    store = Store(tmp_path)
    _fill(store, seeds=2)
    tex = to_latex(collate(plan(with_seeds(load_table("table2"), 2), load_profile("smoke")), store))
    assert "$\\pm$" in tex and "{\\scriptsize (-3.0)" in tex
    doc = tmp_path / "t.tex"
    doc.write_text(
        "\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n"
        + tex
        + "\\end{document}\n"
    )
    out = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:]
    assert (tmp_path / "t.pdf").stat().st_size > 1000
