"""Cell formatting and the LaTeX/markdown layout, on a store filled by hand."""

from __future__ import annotations

import math

from harness.collate import collate
from harness.planner import plan
from harness.render import cell, to_csv, to_latex, to_markdown
from harness.spec import load_profile, load_table
from harness.store import Store


def test_cell_formats_value_delta_and_marks():
    assert cell(77.44, -5.66, 1) == "77.4 (-5.7)"
    assert cell(83.1, 0.0, 1, is_baseline=True) == "83.1"
    assert cell(0.6123, -0.0131, 3) == "0.612 (-0.013)"
    assert cell(math.nan, None, 1) == "—"
    assert cell(None, None, 1, status="failed") == "failed"
    assert cell("yes", None, 1) == "yes"


def test_store_results_render_with_paper_beside(tmp_path):
    p = plan(load_table("table2"), load_profile("smoke"))
    store = Store(tmp_path)
    for (row, column), key in p.cells.items():
        job = p.jobs[key]
        store.register(job)
        if row != "OI-118K":  # leave one row missing
            store.write_result(job, {"value": 50.0 + len(row) + len(column) / 10})
    c = collate(p, store)
    md = to_markdown(c)
    assert "| OI-118K | — | — |" in md
    # COCO (4 letters) vs IN-118K (7 letters): delta -3.0 on every column
    assert "| COCO | 54.7 (-3.0) |" in md  # CIFAR10: 50 + 4 + 0.7
    assert "| IN-118K | 57.7 |" in md  # the baseline row shows no delta
    tex = to_latex(c)
    assert "IN-118K-LT" in tex and "{\\scriptsize (-3.0)}" in tex and "\\toprule" in tex
    csv = to_csv(c)
    assert csv.count("missing") == 7 and csv.count(",done,") == 21
