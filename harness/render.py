"""Render a collated table as markdown, LaTeX (booktabs) or CSV, in the paper's layout.

Each cell is the measured value with its delta against the baseline row in parentheses, as in the
paper; the published values follow in a second table, labelled as such. Missing and failed cells are
marked, never left blank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.collate import MISSING, NOT_EVALUATED, Collated
from harness.store import DONE

FORMATS = ("md", "tex", "csv")
MARKS = {
    MISSING: "—",
    NOT_EVALUATED: "-",
    "failed": "failed",
    "running": "running",
    "blocked": "blocked",
}


def cell(
    value,
    delta,
    decimals: int,
    status: str = DONE,
    is_baseline: bool = False,
    spread: Spread | None = None,
) -> str:
    """``77.4 (-5.7)``; over seeds ``77.4 ± 0.3 (-5.7)*`` (* the delta's interval excludes zero)."""
    if status != DONE:
        return MARKS.get(status, status)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MARKS[MISSING]
    if not isinstance(value, (int, float)):
        return str(value)
    text = f"{value:.{decimals}f}" if isinstance(value, float) else str(value)
    if spread is not None and spread.n > 1:
        text += f" ± {spread.std:.{decimals}f}"
    if delta is not None and not is_baseline and not math.isnan(delta):
        text += f" ({delta:+.{decimals}f})" + (
            "*" if spread is not None and spread.significant else ""
        )
    if spread is not None and spread.n < spread.seeds:
        text += f" [n={spread.n}]"
    return text


@dataclass(frozen=True)
class Spread:
    """A cell's spread over seeds: std, how many finished of how many asked, whether its delta is significant."""

    std: float
    n: int
    seeds: int
    significant: bool | None


def seeds_note(c: Collated) -> str:
    if c.seeds == 1:
        return ""
    return (f"; mean ± std over {c.seeds} seeds ([n=k]: only k finished); * the delta's 95% Welch "
            "t-interval against the baseline excludes zero")  # fmt: skip


def grid(c: Collated, which: str) -> pd.DataFrame:
    """The table as strings: which = 'measured' or 'paper'."""
    frame = c.measured if which == "measured" else c.paper
    delta = c.delta if which == "measured" else c.paper_delta
    baseline = c.plan.table.baseline
    spread = _spreads(c) if which == "measured" and c.seeds > 1 else None
    values, deltas, states = columns(frame), columns(delta), columns(c.status)
    out = [[""] * len(frame.columns) for _ in frame.index]
    for i, row in enumerate(frame.index):
        for j, column in enumerate(frame.columns):
            status = states[j][i]
            if which == "paper" and status != NOT_EVALUATED:
                status = DONE
            out[i][j] = cell(
                values[j][i], None if deltas is None else deltas[j][i], c.decimals[column], status,
                row == baseline, None if spread is None else spread[(row, column)],
            )  # fmt: skip
    return pd.DataFrame(out, index=frame.index, columns=frame.columns, dtype=object)


def columns(frame: pd.DataFrame | None) -> list | None:
    """The frame's columns as arrays, [column][row]: each element as `.at` gives it (numpy scalars in numeric
    columns), without .at's ~20 us a cell."""
    return None if frame is None else [frame.iloc[:, j].to_numpy() for j in range(frame.shape[1])]


def _spreads(c: Collated) -> dict[tuple[str, str], Spread]:
    std, n, sig = columns(c.std), columns(c.n), columns(c.significant)
    return {
        (row, column): Spread(std[j][i], int(n[j][i]), c.seeds, None if sig is None else sig[j][i])
        for i, row in enumerate(c.measured.index)
        for j, column in enumerate(c.measured.columns)
    }


def header(c: Collated) -> tuple[str, str]:
    table, profile = c.plan.table, c.plan.profile
    title = f"{table.name}: {table.title}"
    note = f"profile {profile.name} ({profile.description})" + seeds_note(c)
    if c.plan.overrides:
        note += "; overrides " + ", ".join(f"{k}={v}" for k, v in c.plan.overrides.items())
    return title, note


def to_markdown(c: Collated) -> str:
    title, note = header(c)
    label = "Pretrain Data"
    measured = grid(c, "measured")
    if not len(measured.columns):  # a figure of pretraining curves (Figure 3): no transfer cells
        return "\n".join([f"## {title}", "", f"Measured, {note}: no transfer cells; the figure draws each row's "
                          f"pretraining ({', '.join(measured.index)}).", ""])  # fmt: skip
    parts = [f"## {title}", "", f"Measured, {note}:", "", _md(measured, label), ""]
    if c.plan.table.paper:
        parts += [
            f"Paper (published, {c.plan.table.source}):",
            "",
            _md(grid(c, "paper"), label),
            "",
        ]
    return "\n".join(parts)


def _md(frame: pd.DataFrame, label: str) -> str:
    lines = ["| " + " | ".join([label, *frame.columns]) + " |"]
    lines.append("|" + "---|" * (len(frame.columns) + 1))
    for row, values in frame.iterrows():
        lines.append("| " + " | ".join([str(row), *values.tolist()]) + " |")
    return "\n".join(lines)


def to_latex(c: Collated) -> str:
    title, note = header(c)
    blocks = [
        f"% {title}\n% {note}",
        _tex(grid(c, "measured"), f"Measured ({c.plan.profile.name})"),
    ]
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
    """The paper's notation: the delta in small type after the value; ± as $\\pm$."""
    value, sep, delta = text.partition(" (")
    value = _esc(value).replace("—", "--").replace("±", "$\\pm$")
    return f"{value} {{\\scriptsize ({_esc(delta)}}}" if sep else value


def _esc(text: str) -> str:
    for char in "\\&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text


def to_csv(c: Collated) -> str:
    """Long format: one line per cell, measured and paper side by side, with status and job key."""
    records = []
    value, delta, status, paper, paper_delta = map(columns, (c.measured, c.delta, c.status, c.paper, c.paper_delta))
    std, n = (columns(c.std), columns(c.n)) if c.samples else (None, None)  # once: each is a whole frame
    for i, row in enumerate(c.measured.index):
        for j, column in enumerate(c.measured.columns):
            key = c.plan.cells.get((row, column)) or c.plan.rows.get(row)
            records.append({
                "table": c.plan.table.name, "profile": c.plan.profile.name,
                "row": row, "column": column,
                "value": value[j][i],
                "delta": None if delta is None else delta[j][i],
                "status": status[j][i],
                "std": None if std is None else std[j][i],
                "n": None if n is None else int(n[j][i]),
                "paper": paper[j][i],
                "paper_delta": None if paper_delta is None else paper_delta[j][i],
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
