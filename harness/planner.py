"""Expand a table spec under a profile into a content-addressed graph of jobs.

A job's key is the hash of its kind, its full resolved spec and the keys of the jobs it depends on,
so two tables that need the same pretraining share one job (table3 reuses table2's checkpoints),
and an override that changes any field lands in a new key instead of mixing with cached results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError
from harness.spec import (
    Profile,
    TableSpec,
    apply_profile,
    resolve,
    set_dotted,
    spec_hash,
    split_overrides,
)

# Bump when a job kind's code changes what it computes: old results then no longer match.
JOB_VERSIONS = {"pretrain": 1, "transfer": 1, "datastats": 1, "cropstats": 1}
CROPSTATS_DEFAULTS = {"crop_scale": [0.2, 1.0], "n_pairs": 100_000, "seed": 0, "height": 256, "width": 256}


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
    rows: dict[str, str] = field(default_factory=dict)  # row -> its pretraining (or datastats) job key

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
    pretrain_over, transfer_over = split_overrides(overrides)
    for row, row_spec in table.rows.items():
        if table.kind == "cropstats":  # Figure 1: view pairs drawn by the training crop sampler
            spec = resolve(CROPSTATS_DEFAULTS, table.pretrain, row_spec)
            result.rows[row] = result.add(make_job("cropstats", f"cropstats {row}", spec))
            continue
        spec = pretrain_spec(table, row_spec, profile, pretrain_over)
        if table.kind == "datasets":
            key = result.add(make_job("datastats", f"datastats {spec['data']['name']}", spec["data"]))
            result.rows[row] = key
            continue
        pre_key = result.add(make_job("pretrain", f"pretrain {row}", spec))
        result.rows[row] = pre_key
        for column in table.columns:
            if not table.evaluated(row, column):
                continue
            tspec = transfer_spec(table, column, profile, transfer_over)
            name = f"{tspec['task']} {column} <- {row}"
            result.cells[(row, column)] = result.add(make_job("transfer", name, tspec, (pre_key,)))
    return result


def pretrain_spec(table: TableSpec, row_spec: dict, profile: Profile, overrides: dict) -> dict:
    from pretrain.data import data_defaults
    from pretrain.methods import method_defaults

    merged = {**table.pretrain, **row_spec}
    method = merged.get("method", "mocov2")
    data_name = merged.get("data", {}).get("name")
    if data_name is None:
        raise HarnessError(f"{table.path}: every row needs data.name (the pretraining dataset)")
    defaults = {"method": method, "data": data_defaults(data_name), **method_defaults(method)}
    defaults["data"]["source"] = profile.data_source
    spec = resolve(defaults, table.pretrain, row_spec)
    spec = apply_profile(spec, profile.pretrain, f"profile {profile.name}")
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
    spec = resolve(defaults, table.transfer, column_spec)
    spec = apply_profile(spec, profile.transfer, f"profile {profile.name}")
    spec = apply_profile(spec, profile.tasks.get(task, {}), f"profile {profile.name}, tasks.{task}")
    return _apply_overrides(spec, overrides, "transfer")


def _apply_overrides(spec: dict, overrides: dict, section: str) -> dict:
    for key, value in overrides.items():
        set_dotted(spec, key, value, f"the {section} spec", prefix=f"{section}.")
    return spec
