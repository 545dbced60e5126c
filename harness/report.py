"""The reproduction report: every table and figure, the paper's claims and their verdicts, from the store alone.

`python -m harness report` writes ``results/report.html`` (one self-contained page: CSS inline, figures
as base64 PNG) and its twin ``results/report.md``. It runs no job: a cell nobody ran shows as missing.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

import pandas as pd

from harness.claims import FAILS, HOLDS, judge
from harness.collate import Collated
from harness.figures import write_figures
from harness.provenance import git_state
from harness.render import grid, header, to_markdown, write_all
from harness.store import DONE, Store, read_json

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}.paper{color:#777;font-size:85%;display:block}
.failed,.blocked{background:#fdd}.missing{background:#f4f4f4}.holds{color:#070}.fails{color:#b00}
.unknown{color:#777}img{max-width:100%;border:1px solid #eee}details{margin:.5em 0 1.5em}code{font-size:85%}
"""


def render_all(collated: list[Collated], store: Store) -> list[Path]:
    """Each table's md/tex/csv and figure, beside the store (the report embeds the figures)."""
    return [path for c in collated for path in write_all(c, store.root) + write_figures(c, store)]


def write_report(store: Store, collated: list[Collated]) -> list[Path]:
    """report.html and report.md from collated tables whose figures `render_all` has written."""
    html_path, md_path = store.root / "report.html", store.root / "report.md"
    html_path.write_text(to_html(collated, store))
    md_path.write_text(to_md(collated, store))
    return [html_path, md_path]


# ----------------------------------------------------------------------------- summary


def cell_counts(c: Collated) -> dict[str, int]:
    return c.status.stack().value_counts().to_dict()


def _intro(collated: list[Collated], store: Store) -> tuple[str, list[str]]:
    profile = collated[0].plan.profile
    git = git_state()
    lines = [
        f"profile {profile.name} ({profile.description})",
        f"store {store.root}; generated {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"code {git.get('git_sha')}{' (dirty)' if git.get('git_dirty') else ''}",
    ]
    return "Reproduction report: Revisiting Contrastive Methods (Van Gansbeke et al. 2021)", lines


def _claim_rows(collated: list[Collated]) -> list[dict]:
    rows = []
    for c in collated:
        for measured, paper in judge(c):
            rows.append({"table": c.plan.table.name, "claim": measured.claim.text, "source": measured.claim.source,
                         "measured": measured.verdict, "paper": paper.verdict, "evidence": measured.evidence})  # fmt: skip
    return rows


def _provenance(c: Collated, store: Store) -> list[dict]:
    """One line per job of the table: its cell, state, elapsed time, code version and host."""
    out = []
    for key, job in c.plan.jobs.items():
        prov = read_json(store.job_dir(key, job.kind) / "provenance.json") or {}
        started, ended = prov.get("started"), prov.get("ended")
        out.append({
            "job": job.short, "name": job.name, "state": store.local_state(job),
            "elapsed_s": round(ended - started, 1) if started and ended else None,
            "git": (prov.get("git_sha") or "")[:10] + ("+dirty" if prov.get("git_dirty") else ""),
            "host": prov.get("host"), "path": str(store.job_dir(key, job.kind).relative_to(store.root)),
        })  # fmt: skip
    return out


# ----------------------------------------------------------------------------- markdown


def to_md(collated: list[Collated], store: Store) -> str:
    title, intro = _intro(collated, store)
    parts = [f"# {title}", "", *[f"- {line}" for line in intro], "", "## Claims", ""]
    parts += ["| table | claim | source | measured | paper |", "|---|---|---|---|---|"]
    for r in _claim_rows(collated):
        parts.append(
            f"| {r['table']} | {r['claim']} | {r['source']} | {r['measured']} | {r['paper']} |"
        )
    parts += [
        "",
        "## Cells",
        "",
        "| table | " + " | ".join(_STATES) + " |",
        "|---|" + "---|" * len(_STATES),
    ]
    for c in collated:
        counts = cell_counts(c)
        parts.append(
            f"| {c.plan.table.name} | " + " | ".join(str(counts.get(s, 0)) for s in _STATES) + " |"
        )
    for c in collated:
        parts += ["", to_markdown(c)]
        figure = store.root / f"{c.plan.table.name}.png"
        if figure.exists():
            parts += [f"![{c.plan.table.name}]({figure.name})", ""]
        for measured, _ in judge(c):
            parts += [f"- **{measured.verdict}**: {measured.claim.text} ({measured.claim.source})"]
            parts += [f"  - {line}" for line in measured.evidence]
    return "\n".join(parts) + "\n"


_STATES = (DONE, "failed", "blocked", "running", "missing", "not-evaluated")


# ----------------------------------------------------------------------------- HTML


def to_html(collated: list[Collated], store: Store) -> str:
    title, intro = _intro(collated, store)
    body = [f"<h1>{_e(title)}</h1>", "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in intro) + "</ul>"]
    body += ["<h2>Claims</h2>", _claims_html(_claim_rows(collated))]
    body += ["<h2>Cells</h2>", _frame_html(pd.DataFrame(
        [[cell_counts(c).get(s, 0) for s in _STATES] for c in collated],
        index=[c.plan.table.name for c in collated], columns=list(_STATES)), "table")]  # fmt: skip
    for c in collated:
        body.append(_table_html(c, store))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")  # fmt: skip


def _table_html(c: Collated, store: Store) -> str:
    title, note = header(c)
    name = c.plan.table.name
    parts = [f"<h2 id='{_e(name)}'>{_e(title)}</h2>", f"<p>Measured, {_e(note)}; the paper's number below each "
             f"cell ({_e(c.plan.table.source)}).</p>"]  # fmt: skip
    measured, paper = grid(c, "measured"), grid(c, "paper")
    has_paper = bool(c.plan.table.paper)
    head = "".join(f"<th>{_e(col)}</th>" for col in measured.columns)
    rows = []
    for row in measured.index:
        cells = []
        for col in measured.columns:
            status = c.status.loc[row, col]
            below = (
                f"<span class='paper'>paper {_e(paper.loc[row, col])}</span>" if has_paper else ""
            )
            cells.append(f"<td class='{_e(status)}'>{_e(measured.loc[row, col])}{below}</td>")
        rows.append(f"<tr><td>{_e(row)}</td>{''.join(cells)}</tr>")
    if len(measured.columns):
        parts.append(
            f"<table class='results'><tr><th>Pretrain Data</th>{head}</tr>{''.join(rows)}</table>"
        )
    figure = store.root / f"{name}.png"
    if figure.exists():
        data = base64.b64encode(figure.read_bytes()).decode()
        parts.append(f"<img alt='{_e(name)}' src='data:image/png;base64,{data}'>")
    verdicts = judge(c)
    if verdicts:
        parts.append(_claims_html([{"table": name, "claim": m.claim.text, "source": m.claim.source,
                                    "measured": m.verdict, "paper": p.verdict, "evidence": m.evidence}
                                   for m, p in verdicts]))  # fmt: skip
    prov = pd.DataFrame.from_records(_provenance(c, store))
    parts.append(f"<details><summary>profile and provenance of each job ({len(prov)})</summary>"
                 f"<p>{_e(c.plan.profile.name)}: {_e(c.plan.profile.description)}</p>"
                 f"{_frame_html(prov.set_index('job'), 'job') if len(prov) else ''}</details>")  # fmt: skip
    return "".join(parts)


def _claims_html(rows: list[dict]) -> str:
    css = {HOLDS: "holds", FAILS: "fails"}
    out = ["<table class='claims'><tr><th>table</th><th>claim</th><th>source</th><th>measured</th>"
           "<th>paper</th><th>numbers</th></tr>"]  # fmt: skip
    for r in rows:
        evidence = "<br>".join(_e(x) for x in r["evidence"])
        out.append(f"<tr><td>{_e(r['table'])}</td><td>{_e(r['claim'])}</td><td>{_e(r['source'])}</td>"
                   f"<td class='{css.get(r['measured'], 'unknown')}'>{_e(r['measured'])}</td>"
                   f"<td class='{css.get(r['paper'], 'unknown')}'>{_e(r['paper'])}</td>"
                   f"<td><code>{evidence}</code></td></tr>")  # fmt: skip
    return "".join(out) + "</table>"


def _frame_html(frame: pd.DataFrame, label: str) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in frame.columns)
    rows = "".join(f"<tr><td>{_e(i)}</td>" + "".join(f"<td>{_e(v)}</td>" for v in r) + "</tr>"
                   for i, r in zip(frame.index, frame.itertuples(index=False)))  # fmt: skip
    return f"<table><tr><th>{_e(label)}</th>{head}</tr>{rows}</table>"


def _e(value) -> str:
    return html.escape("" if value is None else str(value))
