"""The paper's findings as checks over a table's cells, each with a verdict and the numbers behind it.

A table spec lists its claims in a small vocabulary (every verb takes ``columns``, default all; a
column's direction comes from the table's ``higher_is_better``):

    within:   {row, baseline, tol}   |row - baseline| <= tol on every column      (Sec. 3.2: IN-118K-LT)
    beats:    {row, baseline}        row better than baseline on every column    (Sec. 3.1: COCO on Places)
    loses:    {row, baseline}        row worse than baseline on every column
    monotone: {rows}                 each row better than the one before it      (Sec. 4: Table 4's additions)

``baseline`` defaults to the table's. Each claim also carries ``source`` (where the paper says it) and
``text`` (the sentence). The same check runs on the paper's numbers, so a claim mis-typed against the
paper shows up as "does not hold" in the paper column.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from harness.errors import HarnessError, unknown

HOLDS, FAILS, UNKNOWN = "holds", "does not hold", "not enough data"
VERBS = {
    "within": {"row", "baseline", "tol", "columns"},
    "beats": {"row", "baseline", "columns"},
    "loses": {"row", "baseline", "columns"},
    "monotone": {"rows", "columns"},
}
REQUIRED = {"within": {"row", "tol"}, "beats": {"row"}, "loses": {"row"}, "monotone": {"rows"}}

# (row, column) -> the values of that cell (one per seed; empty when missing)
Cells = Callable[[str, str], list[float]]


@dataclass(frozen=True)
class Claim:
    verb: str
    args: dict
    source: str
    text: str


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    verdict: str  # holds | does not hold | not enough data
    evidence: list[str]  # one line per compared pair of cells, e.g. "Places: 47.3 vs 45.0 (+2.3)"


def parse_claims(table) -> list[Claim]:
    """The table's `claims:` entries, validated against its rows and columns (unknown names fail early)."""
    return [_parse(entry, table, i) for i, entry in enumerate(table.claims)]


def check_claims(table) -> None:
    parse_claims(table)


def references(entry: dict) -> set[str]:
    """The row and column names a raw claim names (a table restricted to fewer keeps only its claims)."""
    names: set[str] = set()
    for args in (
        v for k, v in entry.items() if k not in ("source", "text") and isinstance(v, dict)
    ):
        names |= {args[k] for k in ("row", "baseline") if k in args}
        names |= set(args.get("rows", [])) | set(args.get("columns", []))
    return names


def _parse(entry: dict, table, index: int) -> Claim:
    where = f"claim {index + 1} of {table.name}"
    if not isinstance(entry, dict):
        raise HarnessError(
            f"{where}: a claim is a mapping such as {{beats: {{row: COCO}}, source: Sec. 3.1}}"
        )
    verbs = [k for k in entry if k not in ("source", "text")]
    if len(verbs) != 1:
        raise HarnessError(f"{where}: name exactly one check ({', '.join(VERBS)}), not {verbs}")
    verb = verbs[0]
    if verb not in VERBS:
        raise unknown(f"check in {where}", verb, VERBS)
    args = dict(entry[verb] or {})
    for key in args:
        if key not in VERBS[verb]:
            raise unknown(f"argument of {verb} in {where}", key, VERBS[verb])
    missing = REQUIRED[verb] - set(args)
    if missing:
        raise HarnessError(f"{where}: {verb} needs {', '.join(sorted(missing))}")
    if verb != "monotone":
        args.setdefault("baseline", table.baseline)
        if args["baseline"] is None:
            raise HarnessError(f"{where}: {verb} needs a baseline (the table has none)")
    for row in args.get("rows", []) + [args[k] for k in ("row", "baseline") if k in args]:
        if row not in table.rows:
            raise unknown(f"row in {where}", row, table.rows)
    args["columns"] = list(args.get("columns") or table.columns)
    for column in args["columns"]:
        if column not in table.columns:
            raise unknown(f"column in {where}", column, table.columns)
    if "tol" in args and not isinstance(args["tol"], (int, float)):
        raise HarnessError(
            f"{where}: tol must be a number (in the column's units), not {args['tol']!r}"
        )
    return Claim(
        verb, args, str(entry.get("source", "")), str(entry.get("text", "")) or describe(verb, args)
    )


def describe(verb: str, args: dict) -> str:
    columns = ", ".join(args["columns"])
    if verb == "within":
        return f"{args['row']} is within {args['tol']} of {args['baseline']} on {columns}"
    if verb == "monotone":
        return f"each of {' -> '.join(args['rows'])} improves on the previous on {columns}"
    return f"{args['row']} {verb} {args['baseline']} on {columns}"


def evaluate(
    claim: Claim, cells: Cells, higher_is_better: dict[str, bool], decimals: dict[str, int]
) -> Verdict:
    """Check `claim` on the means of `cells`; any cell without a value leaves it undecided."""
    pairs = _pairs(claim)
    evidence, outcomes, missing = [], [], []
    for column, row, base in pairs:
        a, b = cells(row, column), cells(base, column)
        if not a or not b:
            missing.append(f"{column}: {row if not a else base} has no value")
            continue
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        ok = _holds(claim, ma - mb, higher_is_better.get(column, True))
        outcomes.append(ok)
        evidence.append(_line(column, row, base, a, b, decimals.get(column, 1), ok))
    if missing:
        return Verdict(claim, UNKNOWN, missing + evidence)
    return Verdict(claim, HOLDS if all(outcomes) else FAILS, evidence)


def _pairs(claim: Claim) -> list[tuple[str, str, str]]:
    """(column, row, compared-to row) for every comparison the claim makes."""
    args = claim.args
    if claim.verb == "monotone":
        steps = list(zip(args["rows"][1:], args["rows"][:-1]))
        return [(c, row, prev) for c in args["columns"] for row, prev in steps]
    return [(c, args["row"], args["baseline"]) for c in args["columns"]]


def _holds(claim: Claim, delta: float, higher_is_better: bool) -> bool:
    better = delta if higher_is_better else -delta  # > 0: the row is better
    if claim.verb == "within":
        return abs(delta) <= claim.args["tol"] + 1e-9
    if claim.verb == "loses":
        return better < 0
    return better > 0  # beats, monotone


def _line(column: str, row: str, base: str, a: list, b: list, decimals: int, ok: bool) -> str:
    from harness.collate import welch_interval

    ma, mb = sum(a) / len(a), sum(b) / len(b)
    text = (
        f"{column}: {row} {ma:.{decimals}f} vs {base} {mb:.{decimals}f} ({ma - mb:+.{decimals}f})"
    )
    interval = welch_interval(a, b)
    if interval is not None:
        lo, hi = interval
        sign = "excludes" if lo > 0 or hi < 0 else "includes"
        text += f", 95% Welch interval [{lo:+.{decimals}f}, {hi:+.{decimals}f}] {sign} 0 (n={len(a)},{len(b)})"
    return text + ("" if ok else "  <- fails")


def judge(collated) -> list[tuple[Verdict, Verdict]]:
    """Each claim of the collated table judged on the measured cells and on the paper's numbers."""
    table = collated.plan.table
    hib = _directions(table)
    measured = lambda row, column: _finite(collated.samples.get((row, column), []))  # noqa: E731
    paper = lambda row, column: _finite(
        [table.paper_value(row, column)] if row in table.paper else []
    )  # noqa: E731
    return [
        (evaluate(c, measured, hib, collated.decimals), evaluate(c, paper, hib, collated.decimals))
        for c in parse_claims(table)
    ]


def _directions(table) -> dict[str, bool]:
    hib = table.higher_is_better
    return dict(zip(table.columns, hib if isinstance(hib, list) else [hib] * len(table.columns)))


def _finite(values: list) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
