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
    if kind == "epoch_curves":
        return _epoch_curves(c, store)
    if kind == "cam_grid":
        return _cam_grid(c, store)
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
    fig, axes = plt.subplots(
        1, len(columns), figsize=(3.2 * len(columns), 3), dpi=150, squeeze=False
    )
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


def _epoch_curves(c: Collated, store: Store) -> list[Path]:
    """Each column against the training time of the backbone it was given, one line per row (Figure 5:
    transfer vs training time, from the table's checkpoints). A point's time, the CSV's pretrain_s_est, is its
    row's pretraining wall time pro rata by epoch (epochs cost alike within a run); with a row not yet
    timed, the x axis is the epoch."""
    records = [
        _checkpoint_record(c, store, *point, key) for point, key in c.plan.checkpoints.items()
    ]
    if not records:
        return []
    data = pd.DataFrame.from_records(records)
    columns = list(c.measured.columns)
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(columns), figsize=(3.4 * len(columns), 3), dpi=150, squeeze=False
    )
    # x: training time, as the paper's (a multi-crop epoch costs more than a two-crop one), when every
    # row's pretraining recorded its wall time; the epoch otherwise
    timed = data["pretrain_s_est"].notna().all()
    scale, unit = (3600, "h") if timed and data["pretrain_s_est"].max() >= 7200 else (60, "min")
    for ax, column in zip(axes[0], columns):
        for row in c.measured.index:
            line = data[(data["row"] == row) & (data["column"] == column)].drop_duplicates("epoch")
            x = line["pretrain_s_est"] / scale if timed else line["epoch"]
            ax.plot(x, line["value"], marker="o", ms=3, label=row)
        if timed:
            ax.set_xlabel(f"pretraining time ({unit}, this machine)")
        else:
            ax.set_xlabel("pretraining epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(column, fontsize=9)
        ax.legend(fontsize=7)
    return _save(c, store, fig, records)


def _checkpoint_record(
    c: Collated, store: Store, row: str, column: str, paper_epoch: int, key: str
) -> dict:
    """One point: the value of a transfer job and the epoch its backbone was kept at."""
    job, pretraining = c.plan.jobs[key], c.plan.jobs[c.plan.rows[row]]
    epochs = pretraining.spec["epochs"]
    epoch = job.spec.get("checkpoint", epochs)  # the final epoch's job is the table's cell
    result, trained = store.result(job), store.result(pretraining)
    field = c.plan.table.column_specs[column].get("value", "value")
    return {"row": row, "column": column, "paper_epoch": paper_epoch, "epoch": epoch, "epochs": epochs,
            "pretrain_s_est": trained["wall_s"] * epoch / epochs if trained else None,
            "value": result[field] if result else None, "status": store.local_state(job)}  # fmt: skip


def _cam_grid(c: Collated, store: Store) -> list[Path]:
    """Each row's CAM grid (its `cam` job's work/<grid> PNG) stacked, labelled by row (Figure 6, S2);
    the data CSV has one line per drawn image: its class, the CAM's class, the CAM's peak and area.
    """
    grids, records = {}, []
    for row in c.measured.index:
        job = next((c.plan.jobs[k] for (r, _), k in c.plan.cells.items() if r == row
                    and c.plan.jobs[k].spec["task"] == "cam"), None)  # fmt: skip
        result = store.result(job) if job else None
        if result is None:
            continue
        grids[row] = store.work_dir(job) / result["grid"]
        records += [{"row": row, "top1": result["value"], **image} for image in result["images"]]
    if not grids:
        return []
    plt = _pyplot()
    images = {row: plt.imread(path) for row, path in grids.items()}
    width = max(im.shape[1] for im in images.values()) / 100
    heights = [im.shape[0] for im in images.values()]
    fig, axes = plt.subplots(len(images), 1, figsize=(width + 1, sum(heights) / 100 + 0.3), dpi=100,
                             squeeze=False, gridspec_kw={"height_ratios": heights})  # fmt: skip
    for ax, (row, im) in zip(axes[:, 0], images.items()):
        ax.imshow(im)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(row, fontsize=8)
    fig.suptitle(f"{c.plan.table.title} (per row: images; CAM of the predicted class)", fontsize=8)
    return _save(c, store, fig, records)


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
