"""Expand a table spec under a profile into a content-addressed graph of jobs.

A job's key is the hash of its kind, its full resolved spec and the keys of the jobs it depends on,
so two tables that need the same pretraining share one job (table3 reuses table2's checkpoints),
and an override that changes any field lands in a new key instead of mixing with cached results.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError
from harness.spec import (
    Profile,
    TableSpec,
    apply_profile,
    apply_task_sizes,
    resolve,
    set_dotted,
    spec_hash,
    split_overrides,
)

# Bump when a job kind's code changes what it computes: old results then no longer match.
JOB_VERSIONS = {"pretrain": 1, "transfer": 1, "datastats": 1, "cropstats": 1}
CROPSTATS_DEFAULTS = {
    "crop_scale": [0.2, 1.0],
    "n_pairs": 100_000,
    "seed": 0,
    "height": 256,
    "width": 256,
}


@dataclass(frozen=True)
class Job:
    key: str
    kind: str  # pretrain | transfer | datastats
    name: str  # human-readable, e.g. "pretrain in118k" or "linear cifar10 <- in118k"
    spec: dict[str, Any]
    deps: tuple[str, ...] = ()

    @property
    def short(self) -> str:
        return self.key[:12]


@dataclass
class Plan:
    table: TableSpec
    profile: Profile
    overrides: dict[str, Any]
    jobs: dict[str, Job] = field(default_factory=dict)  # key -> job, in topological order
    cells: dict[tuple[str, str], str] = field(default_factory=dict)  # (row, column) -> job key
    # row -> its pretraining (or datastats) job key
    rows: dict[str, str] = field(default_factory=dict)
    # (row, column) -> the cell's job key for each seed, seed 0 first (cells holds seed 0's)
    replicates: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    # a merged plan's tables (`run all`), each collated alone
    parts: list[Plan] = field(default_factory=list)
    # (row, column, paper epoch) -> transfer job key for table.checkpoints and the final epoch (the cell's job)
    checkpoints: dict[tuple[str, str, int], str] = field(default_factory=dict)

    def add(self, job: Job) -> str:
        self.jobs.setdefault(job.key, job)
        return job.key

    def dependants(self, key: str) -> list[Job]:
        return [job for job in self.jobs.values() if key in job.deps]


def make_job(kind: str, name: str, spec: dict, deps: tuple[str, ...] = ()) -> Job:
    key = spec_hash({"kind": kind, "version": JOB_VERSIONS[kind], "spec": spec, "deps": list(deps)})
    return Job(key=key, kind=kind, name=name, spec=spec, deps=deps)


def plan(table: TableSpec, profile: Profile, overrides: dict[str, Any] | None = None) -> Plan:
    overrides = overrides or {}
    result = Plan(table=table, profile=profile, overrides=overrides)
    for seed in range(table.seeds if table.kind == "grid" else 1):
        for row, row_spec in table.rows.items():
            row_over = {**overrides, **table.row_overrides.get(row, {})}  # a CLI sweep's point
            _plan_row(result, row, row_spec, *split_overrides(row_over), seed)
    return result


def _plan_row(
    result: Plan, row: str, row_spec: dict, pretrain_over: dict, transfer_over: dict, seed: int
):
    """Add one row's jobs for one seed; seed 0 is the spec as written (its keys never change)."""
    table, profile = result.table, result.profile
    if table.kind == "cropstats":  # Figure 1: view pairs drawn by the training crop sampler
        spec = resolve(
            CROPSTATS_DEFAULTS, table.pretrain, row_spec, where=f"table spec {table.path}"
        )
        result.rows[row] = result.add(make_job("cropstats", f"cropstats {row}", spec))
        return
    spec = pretrain_spec(table, row_spec, profile, pretrain_over)
    if table.kind == "datasets":
        key = result.add(make_job("datastats", f"datastats {spec['data']['name']}", spec["data"]))
        result.rows[row] = key
        return
    if seed:  # another run of the same pretraining: the seed moves, the data stays
        spec["seed"] = spec["seed"] + seed
    at_epoch = {} if seed else checkpoint_epochs(table, row_spec, spec)
    if at_epoch:  # the one pretraining job keeps these backbones; the final one it keeps anyway
        spec["save_backbone_epochs"] = sorted(set(at_epoch.values()) - {spec["epochs"]})
    pre_key = result.add(
        make_job("pretrain", f"pretrain {row}" + (f" seed+{seed}" if seed else ""), spec)
    )
    result.rows.setdefault(row, pre_key)
    for column in table.columns:
        if not table.evaluated(row, column):
            continue
        tspec = transfer_spec(table, column, profile, transfer_over)
        name = f"{tspec['task']} {column} <- {row}" + (f" seed+{seed}" if seed else "")
        key = result.add(make_job("transfer", name, tspec, (pre_key,)))
        result.cells.setdefault((row, column), key)
        result.replicates.setdefault((row, column), []).append(key)
        for paper_epoch, epoch in at_epoch.items():  # the same transfer on an earlier backbone
            at = key  # the final epoch is the cell's own job
            if epoch != spec["epochs"]:
                ckpt = {**tspec, "checkpoint": epoch}
                at = result.add(make_job("transfer", f"{name} @ epoch {epoch}", ckpt, (pre_key,)))
            result.checkpoints[(row, column, paper_epoch)] = at


def checkpoint_epochs(table: TableSpec, row_spec: dict, spec: dict) -> dict[int, int]:
    """Paper epoch -> the epoch trained at this profile, for table.checkpoints and the final epoch:
    each keeps its fraction of the run, whether the profile scales `epochs` or sets it (smoke: several
    may share one epoch). Empty for Rand. init., the same backbone at every epoch."""
    if not table.checkpoints or spec["method"] == "random":
        return {}
    paper = {**table.pretrain, **row_spec}["epochs"]
    return {e: max(1, round(e * spec["epochs"] / paper)) for e in [*table.checkpoints, paper]}


def merge(plans: list[Plan]) -> Plan:
    """One plan holding every job of `plans` once (jobs shared between tables run once), in topological order."""
    first = plans[0]
    everything = dataclasses.replace(
        first.table, name="all", title="every table and figure", rows={}
    )
    merged = Plan(
        table=everything, profile=first.profile, overrides=first.overrides, parts=list(plans)
    )
    for one in plans:
        for job in one.jobs.values():
            merged.add(job)
    return merged


def pretrain_spec(table: TableSpec, row_spec: dict, profile: Profile, overrides: dict) -> dict:
    from pretrain.data import data_defaults
    from pretrain.methods import method_defaults, own_fields

    merged = {**table.pretrain, **row_spec}
    overrides = dict(overrides)
    method = merged.get("method", "mocov2")
    chosen = overrides.pop("method", None)  # `method=swav`: every trained row, Rand. init. stays
    method = chosen if chosen is not None and method != "random" else method
    data_name = merged.get("data", {}).get("name")
    if data_name is None:
        raise HarnessError(f"{table.path}: every row needs data.name (the pretraining dataset)")
    defaults = {"method": method, "data": data_defaults(data_name), **method_defaults(method)}
    if defaults["data"]["source"] == "biasworld":  # a user's image folder is real at every profile
        defaults["data"]["source"] = profile.data_source
    # layers written for another method lose its sections (pretrain/methods.py: own_fields)
    layers = [
        own_fields(method, {k: v for k, v in layer.items() if k != "method"})
        for layer in (table.pretrain, row_spec)
    ]
    spec = resolve(defaults, *layers, where=f"table spec {table.path}")
    spec = apply_profile(spec, own_fields(method, profile.pretrain), f"profile {profile.path}")
    return _apply_overrides(spec, overrides, "pretrain")


def transfer_spec(table: TableSpec, column: str, profile: Profile, overrides: dict) -> dict:
    from transfer.data import target_defaults
    from transfer.tasks import task_defaults, task_spec_defaults

    column_spec = {k: v for k, v in table.column_specs[column].items() if k != "value"}
    merged = {**table.transfer, **column_spec}
    task = merged.get("task", "linear")
    data_name = merged.get("data", {}).get("name")
    if data_name is None:
        raise HarnessError(f"{table.path}: column '{column}' needs data.name (the target dataset)")
    defaults = {
        "task": task,
        "data": target_defaults(data_name),
        "protocol": task_defaults(task, data_name),
        "device": "auto",
        **task_spec_defaults(task),  # e.g. the linear task's evaluation image_size and batch_size
    }
    defaults["data"]["source"] = profile.data_source
    spec = resolve(defaults, table.transfer, column_spec, where=f"table spec {table.path}")
    spec = apply_profile(spec, profile.transfer, f"profile {profile.path}")
    spec = apply_task_sizes(spec, profile, task, data_name)
    return _apply_overrides(spec, overrides, "transfer")


def _apply_overrides(spec: dict, overrides: dict, section: str) -> dict:
    for key, value in overrides.items():
        set_dotted(spec, key, value, f"the {section} spec", prefix=f"{section}.")
    return spec
