"""Render a collated table as markdown, LaTeX (booktabs) or CSV, in the paper's layout.

Each cell is the measured value with its delta against the baseline row in parentheses, as in the
paper; the published values follow in a second table, labelled as such. Missing and failed cells are
marked, never left blank.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness.collate import MISSING, NOT_EVALUATED, Collated
from harness.store import DONE

FORMATS = ("md", "tex", "csv")
MARKS = {MISSING: "—", NOT_EVALUATED: "-", "failed": "failed", "running": "running", "blocked": "blocked"}


def cell(value, delta, decimals: int, status: str = DONE, is_baseline: bool = False) -> str:
    if status != DONE:
        return MARKS.get(status, status)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MARKS[MISSING]
    if not isinstance(value, (int, float)):
        return str(value)
    text = f"{value:.{decimals}f}" if isinstance(value, float) else str(value)
    if delta is not None and not is_baseline and not math.isnan(delta):
        text += f" ({delta:+.{decimals}f})"
    return text


def grid(c: Collated, which: str) -> pd.DataFrame:
    """The table as strings: which = 'measured' or 'paper'."""
    frame = c.measured if which == "measured" else c.paper
    delta = c.delta if which == "measured" else c.paper_delta
    baseline = c.plan.table.baseline
    out = pd.DataFrame("", index=frame.index, columns=frame.columns)
    for row in frame.index:
        for column in frame.columns:
            d = None if delta is None else delta.loc[row, column]
            status = c.status.loc[row, column]
            if which == "paper" and status != NOT_EVALUATED:
                status = DONE
            out.loc[row, column] = cell(
                frame.loc[row, column], d, c.decimals[column], status, row == baseline
            )
    return out


def header(c: Collated) -> tuple[str, str]:
    table, profile = c.plan.table, c.plan.profile
    title = f"{table.name}: {table.title}"
    note = f"profile {profile.name} ({profile.description})"
    if c.plan.overrides:
        note += "; overrides " + ", ".join(f"{k}={v}" for k, v in c.plan.overrides.items())
    return title, note


def to_markdown(c: Collated) -> str:
    title, note = header(c)
    label = "Pretrain Data"
    parts = [f"## {title}", "", f"Measured, {note}:", "", _md(grid(c, "measured"), label), ""]
    if c.plan.table.paper:
        parts += [f"Paper (published, {c.plan.table.source}):", "", _md(grid(c, "paper"), label), ""]
    return "\n".join(parts)


def _md(frame: pd.DataFrame, label: str) -> str:
    lines = ["| " + " | ".join([label, *frame.columns]) + " |"]
    lines.append("|" + "---|" * (len(frame.columns) + 1))
    for row, values in frame.iterrows():
        lines.append("| " + " | ".join([str(row), *values.tolist()]) + " |")
    return "\n".join(lines)


def to_latex(c: Collated) -> str:
    title, note = header(c)
    blocks = [f"% {title}\n% {note}", _tex(grid(c, "measured"), f"Measured ({c.plan.profile.name})")]
    if c.plan.table.paper:
        blocks.append(_tex(grid(c, "paper"), "Paper"))
    return "\n\n".join(blocks) + "\n"


def _tex(frame: pd.DataFrame, caption: str) -> str:
    cols = "l" + "c" * len(frame.columns)
    lines = [
        "\\begin{table}[t]", "\\centering", f"\\caption{{{_esc(caption)}}}",
        f"\\begin{{tabular}}{{{cols}}}", "\\toprule",
        " & ".join(["Pretrain Data", *map(_esc, frame.columns)]) + " \\\\", "\\midrule",
    ]  # fmt: skip
    for row, values in frame.iterrows():
        cells = [_tex_cell(v) for v in values]
        lines.append(" & ".join([_esc(str(row)), *cells]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines)


def _tex_cell(text: str) -> str:
    value, sep, delta = text.partition(" (")
    value = _esc(value).replace("—", "--")
    return f"{value} {{\\scriptsize ({_esc(delta)}}}" if sep else value


def _esc(text: str) -> str:
    for char in "\\&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text


def to_csv(c: Collated) -> str:
    """Long format: one line per cell, measured and paper side by side, with status and job key."""
    records = []
    delta, paper_delta = c.delta, c.paper_delta
    for row in c.measured.index:
        for column in c.measured.columns:
            key = c.plan.cells.get((row, column)) or c.plan.rows.get(row)
            records.append({
                "table": c.plan.table.name, "profile": c.plan.profile.name,
                "row": row, "column": column,
                "value": c.measured.loc[row, column],
                "delta": None if delta is None else delta.loc[row, column],
                "status": c.status.loc[row, column],
                "paper": c.paper.loc[row, column],
                "paper_delta": None if paper_delta is None else paper_delta.loc[row, column],
                "job": key,
            })  # fmt: skip
    return pd.DataFrame.from_records(records).to_csv(index=False)


RENDERERS = {"md": to_markdown, "tex": to_latex, "csv": to_csv}


def write_all(c: Collated, results: Path) -> list[Path]:
    paths = []
    for fmt, render in RENDERERS.items():
        path = Path(results) / f"{c.plan.table.name}.{fmt}"
        path.write_text(render(c))
        paths.append(path)
    return paths
