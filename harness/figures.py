"""The paper's figures, drawn from the store alone (matplotlib, PNG), with the data behind each as CSV.

A table spec whose kind has a figure gets `<name>.png` and `<name>_data.csv` beside its tables.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.collate import Collated
from harness.store import Store


def write_figures(c: Collated, store: Store) -> list[Path]:
    if c.plan.table.kind == "cropstats":
        return _crop_iou(c, store)
    kind = c.plan.table.figure.get("type")
    if kind == "lines":
        return _lines(c, store)
    if kind == "loss_curves":
        return _loss_curves(c, store)
    return []


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(c: Collated, store: Store, fig, records: list[dict]) -> list[Path]:
    name = c.plan.table.name
    png, csv = store.root / f"{name}.png", store.root / f"{name}_data.csv"
    fig.tight_layout()
    fig.savefig(png)
    _pyplot().close(fig)
    pd.DataFrame.from_records(records).to_csv(csv, index=False)
    return [png, csv]


def _lines(c: Collated, store: Store) -> list[Path]:
    """Each column's measured value against the rows' x (Figure 2: transfer vs the IoU threshold)."""
    spec = c.plan.table.figure
    columns = list(c.measured.columns)
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 3), dpi=150, squeeze=False)
    records = []
    for ax, column in zip(axes[0], columns):
        points = sorted((spec["x"][row], c.measured.loc[row, column]) for row in c.measured.index)
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o")
        ax.set_xlabel(spec.get("xlabel", "x"))
        ax.set_title(column, fontsize=9)
        for row in c.measured.index:
            records.append({"row": row, "x": spec["x"][row], "column": column,
                            "value": c.measured.loc[row, column], "status": c.status.loc[row, column]})  # fmt: skip
    return _save(c, store, fig, records)


def _loss_curves(c: Collated, store: Store) -> list[Path]:
    """Each row's pretraining loss per epoch (Figure 3: training curves per IoU threshold)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=150)
    records = []
    for row, key in c.plan.rows.items():
        result = store.result(c.plan.jobs[key])
        curve = (result or {}).get("loss_curve") or []
        if curve:
            ax.plot(range(1, len(curve) + 1), curve, marker="o", ms=3, label=row)
        records += [{"row": row, "epoch": e + 1, "loss": v} for e, v in enumerate(curve)]
    if not records:
        plt.close(fig)
        return []
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    return _save(c, store, fig, records)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(c: Collated, store: Store, fig, records: list[dict]) -> list[Path]:
    name = c.plan.table.name
    png, csv = store.root / f"{name}.png", store.root / f"{name}_data.csv"
    fig.tight_layout()
    fig.savefig(png)
    _pyplot().close(fig)
    pd.DataFrame.from_records(records).to_csv(csv, index=False)
    return [png, csv]


def _lines(c: Collated, store: Store) -> list[Path]:
    """Each column's measured value against the rows' x (Figure 2: transfer vs the IoU threshold)."""
    spec = c.plan.table.figure
    columns = list(c.measured.columns)
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 3), dpi=150, squeeze=False)
    records = []
    for ax, column in zip(axes[0], columns):
        points = sorted((spec["x"][row], c.measured.loc[row, column]) for row in c.measured.index)
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o")
        ax.set_xlabel(spec.get("xlabel", "x"))
        ax.set_title(column, fontsize=9)
        for row in c.measured.index:
            records.append({"row": row, "x": spec["x"][row], "column": column,
                            "value": c.measured.loc[row, column], "status": c.status.loc[row, column]})  # fmt: skip
    return _save(c, store, fig, records)


def _loss_curves(c: Collated, store: Store) -> list[Path]:
    """Each row's pretraining loss per epoch (Figure 3: training curves per IoU threshold)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=150)
    records = []
    for row, key in c.plan.rows.items():
        result = store.result(c.plan.jobs[key])
        curve = (result or {}).get("loss_curve") or []
        if curve:
            ax.plot(range(1, len(curve) + 1), curve, marker="o", ms=3, label=row)
        records += [{"row": row, "epoch": e + 1, "loss": v} for e, v in enumerate(curve)]
    if not records:
        plt.close(fig)
        return []
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    return _save(c, store, fig, records)


def _crop_iou(c: Collated, store: Store) -> list[Path]:
    """Figure 1: histograms of the IoU between the two views, one per crop scale (row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records, fig = [], None
    results = {row: store.result(c.plan.jobs[key]) for row, key in c.plan.rows.items()}
    results = {row: r for row, r in results.items() if r is not None}
    if not results:
        return []
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=150)
    for row, r in results.items():
        edges, counts = r["edges"], r["histogram"]
        total = sum(counts)
        share = [100 * n / total for n in counts]
        centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        no_overlap = r["cells"]["No overlap (%)"]
        ax.plot(centres, share, marker="o", ms=3, label=f"{row} ({no_overlap:.1f}% no overlap)")
        for lo, hi, n, s in zip(edges[:-1], edges[1:], counts, share):
            records.append({"row": row, "iou_lo": lo, "iou_hi": hi, "count": n, "percent": s})
    ax.set_xlabel("IoU between the two views")
    ax.set_ylabel("pairs (%)")
    ax.set_title(c.plan.table.title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    name = c.plan.table.name
    png, csv = store.root / f"{name}.png", store.root / f"{name}_data.csv"
    fig.savefig(png)
    plt.close(fig)
    pd.DataFrame.from_records(records).to_csv(csv, index=False)
    return [png, csv]


def _crop_iou(c: Collated, store: Store) -> list[Path]:
    """Figure 1: histograms of the IoU between the two views, one per crop scale (row)."""
    results = {row: store.result(c.plan.jobs[key]) for row, key in c.plan.rows.items()}
    results = {row: r for row, r in results.items() if r is not None}
    if not results:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=150)
    records = []
    for row, r in results.items():
        edges, counts = r["edges"], r["histogram"]
        total = sum(counts)
        share = [100 * n / total for n in counts]
        centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        no_overlap = r["cells"]["No overlap (%)"]
        ax.plot(centres, share, marker="o", ms=3, label=f"{row} ({no_overlap:.1f}% no overlap)")
        for lo, hi, n, s in zip(edges[:-1], edges[1:], counts, share):
            records.append({"row": row, "iou_lo": lo, "iou_hi": hi, "count": n, "percent": s})
    ax.set_xlabel("IoU between the two views")
    ax.set_ylabel("pairs (%)")
    ax.set_title(c.plan.table.title, fontsize=9)
    ax.legend(fontsize=8)
    return _save(c, store, fig, records)
