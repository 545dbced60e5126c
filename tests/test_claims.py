"""The paper's claims: written against the published numbers, validated at load time, judged with Welch intervals."""

from __future__ import annotations

import pytest
from scipy import stats

from harness.claims import FAILS, HOLDS, UNKNOWN, Claim, evaluate, judge, parse_claims
from harness.collate import collate, welch_interval
from harness.errors import HarnessError
from harness.planner import plan
from harness.spec import list_tables, load_profile, load_table
from harness.store import Store


def test_every_claim_holds_on_the_papers_own_numbers(tmp_path):
    """A claim mis-typed against the paper (wrong row, column or direction) would fail here. A table
    with no published numbers (baselines) cannot be judged on the paper's side."""
    judged = 0
    for name in list_tables():
        c = collate(plan(load_table(name), load_profile("smoke")), Store(tmp_path))
        published = bool(load_table(name).paper)
        for measured, paper in judge(c):
            assert paper.verdict == (HOLDS if published else UNKNOWN), (name, paper.claim.text, paper.evidence)
            assert measured.verdict == UNKNOWN  # nothing ran: the measured side cannot decide
            judged += 1
    assert judged >= 5 + 3 + 3 + 1 + 1 + 2 + 2 + 1 + 2  # table2, 3, 4, 5, 6, 7, 8, 9, S1


def _claim(verb: str, **args) -> Claim:
    return Claim(verb, args, "test", f"{verb} {args}")


def test_verdicts_follow_the_columns_direction_and_missing_cells():
    cells = {
        ("A", "acc"): [70.0],
        ("B", "acc"): [68.0],
        ("A", "rmse"): [0.60],
        ("B", "rmse"): [0.62],
    }
    get = lambda row, col: cells.get((row, col), [])  # noqa: E731
    hib, dec = {"acc": True, "rmse": False}, {"acc": 1, "rmse": 3}
    beats = evaluate(_claim("beats", row="A", baseline="B", columns=["acc", "rmse"]), get, hib, dec)
    assert beats.verdict == HOLDS and "acc: A 70.0 vs B 68.0 (+2.0)" in beats.evidence[0]
    assert (
        evaluate(_claim("loses", row="A", baseline="B", columns=["rmse"]), get, hib, dec).verdict
        == FAILS
    )
    within = _claim("within", row="A", baseline="B", tol=1.0, columns=["acc"])
    assert evaluate(within, get, hib, dec).verdict == FAILS
    mono = _claim("monotone", rows=["B", "A", "C"], columns=["acc"])
    undecided = evaluate(mono, get, hib, dec)
    assert undecided.verdict == UNKNOWN and "C has no value" in undecided.evidence[0]


def test_welch_interval_excludes_zero_exactly_when_welchs_t_test_rejects():
    a, b, c = [71.0, 71.4, 70.8], [69.9, 70.2, 70.0, 70.4], [70.2, 71.9, 69.0]
    for x, y in ((a, b), (c, b)):
        lo, hi = welch_interval(x, y)
        p = stats.ttest_ind(x, y, equal_var=False).pvalue
        assert (lo > 0 or hi < 0) == (p < 0.05)
    assert welch_interval([1.0], b) is None
    line = evaluate(_claim("beats", row="a", baseline="b", columns=["x"]),
                    lambda r, col: {"a": a, "b": b}[r], {"x": True}, {"x": 1}).evidence[0]  # fmt: skip
    assert "95% Welch interval" in line and "excludes 0 (n=3,4)" in line


def _write_spec(tmp_path, claims: str):
    path = tmp_path / "study.yaml"
    path.write_text(
        "name: study\nrows:\n  IN-118K: {data: {name: in118k}}\n  COCO: {data: {name: coco}}\n"
        "baseline: IN-118K\ncolumns:\n  CIFAR10: {data: {name: cifar10}}\n" + claims
    )
    return str(path)


def test_claim_typos_fail_at_load_naming_the_closest(tmp_path):
    with pytest.raises(HarnessError, match="COCO"):
        load_table(_write_spec(tmp_path, "claims:\n  - beats: {row: COCCO}\n"))
    with pytest.raises(HarnessError, match="beats"):
        load_table(_write_spec(tmp_path, "claims:\n  - beat: {row: COCO}\n"))
    with pytest.raises(HarnessError, match="CIFAR10"):
        load_table(_write_spec(tmp_path, "claims:\n  - loses: {row: COCO, columns: [CIFAR-10]}\n"))
    with pytest.raises(HarnessError, match="needs tol"):
        load_table(_write_spec(tmp_path, "claims:\n  - within: {row: COCO}\n"))
    table = load_table(
        _write_spec(tmp_path, "claims:\n  - loses: {row: COCO}\n    source: Sec. 3.1\n")
    )
    assert parse_claims(table)[0].args == {
        "row": "COCO",
        "baseline": "IN-118K",
        "columns": ["CIFAR10"],
    }
