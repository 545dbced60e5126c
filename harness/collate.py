"""Collate a plan's results from the store into pandas tables, the paper's numbers beside them.

Reads only the store: a table regenerates on any machine that has the results directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    # (row, column) -> the value of each finished seed; `measured` is their mean
    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    @property
    def n(self) -> pd.DataFrame:
        """Finished seeds per cell."""
        return self._per_cell(len, 0)

    @property
    def std(self) -> pd.DataFrame:
        """Sample standard deviation over seeds (NaN below two)."""
        return self._per_cell(lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else np.nan, np.nan)

    @property
    def seeds(self) -> int:
        return self.plan.table.seeds

    @property
    def significant(self) -> pd.DataFrame | None:
        """Whether each row's delta against the baseline has a Welch interval excluding zero (None: too few seeds)."""
        baseline = self.plan.table.baseline
        if baseline is None or baseline not in self.measured.index:
            return None
        out = np.full(self.measured.shape, None, dtype=object)
        for i, row in enumerate(self.measured.index):
            for j, column in enumerate(self.measured.columns):
                a, b = self.samples.get((row, column), []), self.samples.get((baseline, column), [])
                interval = welch_interval(a, b) if row != baseline else None
                out[i, j] = None if interval is None else not interval[0] <= 0 <= interval[1]
        return pd.DataFrame(out, index=self.measured.index, columns=self.measured.columns, dtype=object)

    def _per_cell(self, fn, empty) -> pd.DataFrame:
        rows, columns = _positions(self.measured.index), _positions(self.measured.columns)
        out = np.full((len(rows), len(columns)), empty, dtype=float)
        for (row, column), values in self.samples.items():
            if row in rows and column in columns:
                out[rows[row], columns[column]] = fn(values)
        return pd.DataFrame(out, index=self.measured.index, columns=self.measured.columns)

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
    samples: dict = {}
    if table.kind == "datasets":
        measured, status = _collate_datasets(plan, store, rows, columns)
    elif table.kind == "cropstats":
        measured, status = _collate_row_cells(plan, store, rows, columns)
    else:  # filled as arrays: pandas' .at costs ~20 us a cell, seconds for a 10,000-result store
        shape = (len(rows), len(columns))
        values, states = np.full(shape, np.nan), np.full(shape, MISSING, dtype=object)
        for i, row in enumerate(rows):
            for j, column in enumerate(columns):
                if not table.evaluated(row, column):
                    states[i, j] = NOT_EVALUATED
        samples = _collate_seeds(plan, store, values, states, _positions(rows), _positions(columns))
        measured = pd.DataFrame(values, index=rows, columns=columns)
        status = pd.DataFrame(states, index=rows, columns=columns)
    decimals = {c: _decimals(paper[c]) or _measured_decimals(measured[c]) for c in columns}
    return Collated(plan, measured, status, paper, decimals, samples)


def _collate_seeds(
    plan: Plan, store: Store, measured: np.ndarray, status: np.ndarray, rows: dict, columns: dict
) -> dict:
    """Fill each cell with the mean over its finished seeds; its status is seed 0's unless some seed finished.
    measured and status: rows x columns arrays, indexed through the positions `rows` and `columns`."""
    samples = {}
    for (row, column), keys in plan.replicates.items():
        field_name = plan.table.column_specs[column].get("value", "value")  # Table 5: j_mean, f_mean
        results = [store.result(plan.jobs[key]) for key in keys]
        values = [float(r[field_name]) for r in results if r is not None]
        samples[(row, column)] = values
        at = rows[row], columns[column]
        if values:
            measured[at] = float(np.mean(values))
        status[at] = DONE if values else _state(store, plan.jobs[keys[0]], None)
    return samples


def _positions(labels) -> dict:
    """label -> its position (an index's rows or columns)."""
    return {label: i for i, label in enumerate(labels)}


def welch_interval(
    a: list[float], b: list[float], level: float = 0.95
) -> tuple[float, float] | None:
    """Welch's t-interval for mean(a) - mean(b) (unequal variances); None with fewer than 2 values a side."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    diff = float(np.mean(a) - np.mean(b))
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = float(np.sqrt(va + vb))
    if se == 0:
        return diff, diff
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return diff - half, diff + half


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
