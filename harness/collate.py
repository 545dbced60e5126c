"""Collate a plan's results from the store into pandas tables, the paper's numbers beside them.

Reads only the store: a table regenerates on any machine that has the results directory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.planner import Plan
from harness.store import BLOCKED, DONE, FAILED, PENDING, Store

MISSING = "missing"
NOT_EVALUATED = "not-evaluated"  # the table does not evaluate this row on this column (row_columns)


@dataclass
class Collated:
    plan: Plan
    measured: pd.DataFrame  # rows x columns, floats (NaN where missing) or strings (Table 1)
    status: pd.DataFrame  # rows x columns: done | failed | missing
    paper: pd.DataFrame  # rows x columns, the published values (None where the paper has none)
    decimals: dict[str, int]  # per column, as many decimals as the paper prints

    @property
    def delta(self) -> pd.DataFrame | None:
        return _delta(self.measured, self.plan.table.baseline)

    @property
    def paper_delta(self) -> pd.DataFrame | None:
        return _delta(self.paper, self.plan.table.baseline)


def collate(plan: Plan, store: Store) -> Collated:
    table = plan.table
    rows, columns = list(table.rows), table.columns
    paper = pd.DataFrame([table.paper.get(r, [None] * len(columns)) for r in rows], rows, columns)
    if table.kind == "datasets":
        measured, status = _collate_datasets(plan, store, rows, columns)
    elif table.kind == "cropstats":
        measured, status = _collate_row_cells(plan, store, rows, columns)
    else:
        measured = pd.DataFrame(np.nan, index=rows, columns=columns)
        status = pd.DataFrame(MISSING, index=rows, columns=columns)
        for row in rows:
            for column in columns:
                if not table.evaluated(row, column):
                    status.loc[row, column] = NOT_EVALUATED
        for (row, column), key in plan.cells.items():
            job = plan.jobs[key]
            result = store.result(job)
            if result is not None:
                field = table.column_specs[column].get("value", "value")  # e.g. Table 5's j_mean / f_mean
                measured.loc[row, column] = result[field]
            status.loc[row, column] = _state(store, job, result)
    decimals = {c: _decimals(paper[c]) or _measured_decimals(measured[c]) for c in columns}
    return Collated(plan, measured, status, paper, decimals)


def _collate_datasets(plan: Plan, store: Store, rows: list[str], columns: list[str]):
    measured = pd.DataFrame(None, index=rows, columns=columns, dtype=object)
    status = pd.DataFrame(MISSING, index=rows, columns=columns)
    for row in rows:
        job = plan.jobs[plan.rows[row]]
        result = store.result(job)
        status.loc[row, :] = _state(store, job, result)
        if result is None:
            continue
        values = [
            result["images"],
            result["objects_per_image"],
            _yes_no(result["uniform"]),
            _yes_no(result["discriminative"]),
        ]
        measured.loc[row, :] = values[: len(columns)]
    return measured, status


def _collate_row_cells(plan: Plan, store: Store, rows: list[str], columns: list[str]):
    """One job per row whose result holds {"cells": {column: value}}."""
    measured = pd.DataFrame(np.nan, index=rows, columns=columns)
    status = pd.DataFrame(MISSING, index=rows, columns=columns)
    for row in rows:
        job = plan.jobs[plan.rows[row]]
        result = store.result(job)
        status.loc[row, :] = _state(store, job, result)
        for column in columns if result else []:
            measured.loc[row, column] = result["cells"].get(column, np.nan)
    return measured, status


def _state(store: Store, job, result: dict | None) -> str:
    """done, failed, running, blocked (a dependency failed) or missing."""
    if result is not None:
        return DONE
    state = store.local_state(job)
    if state == PENDING:
        failed = any(store.local_state(plan_job) == FAILED for plan_job in deps_of(store, job))
        return BLOCKED if failed else MISSING
    return state


def deps_of(store: Store, job) -> list:
    """The stored jobs `job` depends on (those never registered are skipped)."""
    out = []
    for key in job.deps:
        try:
            out.append(store.load_job(key))
        except FileNotFoundError:
            continue
    return out


def _yes_no(value: bool | None) -> str | None:
    return None if value is None else ("yes" if value else "no")


def _delta(frame: pd.DataFrame, baseline: str | None) -> pd.DataFrame | None:
    if baseline is None or baseline not in frame.index:
        return None
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    return numeric - numeric.loc[baseline]


def _decimals(values: pd.Series) -> int | None:
    """As many decimals as the paper prints in the column; None when it prints no number there."""
    digits = [len(f"{v}".split(".")[1]) if "." in f"{v}" else 0
              for v in values if isinstance(v, (int, float)) and v is not None and v == v]  # fmt: skip
    return (max(digits) or 1) if digits else None


def _measured_decimals(values: pd.Series) -> int:
    numeric = pd.to_numeric(values, errors="coerce").abs()
    return 3 if numeric.max() < 1 else 2 if numeric.max() < 10 else 1
