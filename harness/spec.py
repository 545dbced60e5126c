"""Table specs, profiles and the resolution of one job's full spec.

A table spec (``tables/<name>.yaml``) says what the paper runs; a profile (``harness/profiles``) says at
which size. A job's resolved spec is built in layers, later layers winning:

    method / task defaults  <-  table section  <-  row or column  <-  profile sizes  <-  key=value overrides

Profiles only touch sizes; a profile value ``{scale: f}`` multiplies the spec's value, so 200- and
800-epoch specs stay distinct at every profile.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.claims import check_claims, references
from harness.errors import HarnessError, closest, unknown

REPO = Path(__file__).resolve().parent.parent
TABLES_DIR = REPO / "tables"
PROFILES_DIR = Path(__file__).resolve().parent / "profiles"

# Keys that change how a job runs, never what it computes: excluded from job keys.
EXECUTION_KEYS = frozenset({"device", "num_workers", "threads", "memory_format"})


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    source: str
    kind: str  # "grid" (pretrain rows x transfer columns), "datasets" (Table 1) or "cropstats" (Figure 1)
    rows: dict[str, dict]
    columns: list[str]
    column_specs: dict[str, dict]
    pretrain: dict = field(default_factory=dict)
    transfer: dict = field(default_factory=dict)
    baseline: str | None = None
    paper: dict[str, list] = field(default_factory=dict)
    higher_is_better: bool | list[bool] = True
    path: Path | None = None
    # row -> the only columns it is evaluated on (paper Table 3: BDD100K on Cityscapes only); others are "n/a"
    row_columns: dict[str, list[str]] = field(default_factory=dict)
    # a figure drawn from the table's jobs (harness/figures.py): {type: lines, x: {row: value}, xlabel} plots
    # each column against x; {type: loss_curves} plots each row's pretraining loss per epoch
    figure: dict[str, Any] = field(default_factory=dict)
    # pretraining epochs (the paper's units, scaled like `epochs`) at which every column is also evaluated,
    # from backbones the row's one pretraining job keeps (Figure 5: transfer vs training time)
    checkpoints: list[int] = field(default_factory=list)

    # the paper's findings as checks over the table's cells (harness/claims.py), each {verb: args, source, text}
    claims: list[dict] = field(default_factory=list)
    seeds: int = 1  # pretraining runs per row: cells show mean ± std over them
    # row -> dotted ``pretrain.``/``transfer.`` overrides of that row only (a command-line sweep's point)
    row_overrides: dict[str, dict] = field(default_factory=dict)

    def select(self, rows: list[str] | None = None, columns: list[str] | None = None) -> TableSpec:
        """The same table restricted to some rows and columns (in the spec's order); unknown names fail."""
        for name, pick, valid in (("row", rows, self.rows), ("column", columns, self.columns)):
            for item in pick or []:
                if item not in valid:
                    raise unknown(f"{name} of {self.name}", item, valid)
        keep_r = [r for r in self.rows if not rows or r in rows]
        keep_c = [c for c in self.columns if not columns or c in columns]
        idx = [self.columns.index(c) for c in keep_c]
        hib = self.higher_is_better
        return dataclasses.replace(
            self,
            rows={r: self.rows[r] for r in keep_r},
            columns=keep_c,
            column_specs={c: self.column_specs[c] for c in keep_c},
            baseline=self.baseline if self.baseline in keep_r else None,
            paper={r: [v[i] for i in idx] for r, v in self.paper.items() if r in keep_r},
            higher_is_better=[hib[i] for i in idx] if isinstance(hib, list) else hib,
            row_columns={
                r: [c for c in cs if c in keep_c]
                for r, cs in self.row_columns.items()
                if r in keep_r
            },
            row_overrides={r: o for r, o in self.row_overrides.items() if r in keep_r},
            claims=[c for c in self.claims if references(c) <= {*keep_r, *keep_c}],
        )

    def evaluated(self, row: str, column: str) -> bool:
        return row not in self.row_columns or column in self.row_columns[row]

    def paper_value(self, row: str, column: str) -> Any:
        values = self.paper.get(row)
        return None if values is None else values[self.columns.index(column)]


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    data_source: str
    pretrain: dict[str, Any]
    transfer: dict[str, Any]  # every transfer job
    # per task, after `transfer`; a task's `targets: {<target>: {...}}` then sizes one of its target datasets
    tasks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    path: Path | None = None


def list_tables() -> list[str]:
    return sorted(p.stem for p in TABLES_DIR.glob("*.yaml"))


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_table(name: str) -> TableSpec:
    path = Path(name) if name.endswith((".yaml", ".yml")) else TABLES_DIR / f"{name}.yaml"
    if not path.exists():
        raise unknown("table", name, list_tables())
    raw = _load_yaml(path)
    allowed = {
        "name", "title", "source", "kind", "rows", "columns", "pretrain", "transfer",
        "baseline", "paper", "higher_is_better", "row_columns", "figure", "claims", "sweep", "seeds", "checkpoints",
    }  # fmt: skip
    _check_keys(raw, allowed, f"table spec {path}")
    rows = {**(raw.get("rows") or {}), **_sweep_rows(raw.get("sweep") or [], path)}
    if not rows:
        raise HarnessError(f"{path}: a table needs rows (a `rows:` mapping or `sweep:` grids)")
    columns = raw.get("columns", {})
    column_specs = columns if isinstance(columns, dict) else {c: {} for c in columns}
    table = TableSpec(
        name=raw.get("name", path.stem),
        title=raw.get("title", path.stem),
        source=raw.get("source", ""),
        kind=raw.get("kind", "grid"),
        rows=rows,
        columns=list(column_specs),
        column_specs=column_specs,
        pretrain=raw.get("pretrain", {}),
        transfer=raw.get("transfer", {}),
        baseline=raw.get("baseline"),
        paper=raw.get("paper", {}),
        higher_is_better=raw.get("higher_is_better", True),
        row_columns=raw.get("row_columns", {}) or {},
        figure=raw.get("figure", {}) or {},
        claims=raw.get("claims") or [],
        seeds=_positive_int(raw.get("seeds", 1), f"{path}: seeds"),
        checkpoints=raw.get("checkpoints", []) or [],
        path=path,
    )
    _check_table(table)
    return table


KINDS = ("grid", "datasets", "cropstats")
FIGURE_TYPES = ("lines", "loss_curves", "epoch_curves", "cam_grid")


def _check_table(table: TableSpec) -> None:
    if table.kind not in KINDS:
        raise unknown(f"kind of table {table.name}", table.kind, KINDS)
    if table.figure:
        if table.figure.get("type") not in FIGURE_TYPES:
            raise unknown(
                f"figure type of {table.name}", str(table.figure.get("type")), FIGURE_TYPES
            )
        missing = [
            r
            for r in table.rows
            if table.figure["type"] == "lines" and r not in table.figure.get("x", {})
        ]
        if missing:
            raise HarnessError(
                f"{table.path}: figure.x needs a value for every row; missing {missing}"
            )
    for row, cols in table.row_columns.items():
        if row not in table.rows:
            raise unknown(f"row in row_columns of {table.name}", row, table.rows)
        for col in cols:
            if col not in table.columns:
                raise unknown(f"column in row_columns.{row} of {table.name}", col, table.columns)
    if table.baseline is not None and table.baseline not in table.rows:
        raise unknown(f"baseline row of {table.name}", table.baseline, table.rows)
    _check_checkpoints(table)
    for row, values in table.paper.items():
        if row not in table.rows:
            raise unknown(f"row in the paper numbers of {table.name}", row, table.rows)
        if len(values) != len(table.columns):
            raise HarnessError(
                f"{table.path}: paper row '{row}' has {len(values)} values "
                f"for {len(table.columns)} columns {table.columns}"
            )
    check_claims(table)


def _check_checkpoints(table: TableSpec) -> None:
    """Checkpoints are whole epochs before the final one, which every table evaluates anyway."""
    if not table.checkpoints:
        return
    epochs = table.pretrain.get("epochs")
    if not isinstance(epochs, int):
        raise HarnessError(
            f"{table.path}: checkpoints need pretrain.epochs (the paper's epochs) in the table"
        )
    bad = [e for e in table.checkpoints if not isinstance(e, int) or not 0 < e < epochs]
    if bad:
        raise HarnessError(
            f"{table.path}: checkpoints {bad} must be whole epochs in [1, {epochs - 1}] (pretrain.epochs is "
            f"{epochs}; the final epoch is always evaluated)"
        )


def load_profile(name: str) -> Profile:
    path = Path(name) if name.endswith((".yaml", ".yml")) else PROFILES_DIR / f"{name}.yaml"
    if not path.exists():
        raise unknown("profile", name, list_profiles())
    raw = _load_yaml(path)
    _check_keys(
        raw, {"name", "description", "data_source", "pretrain", "transfer", "tasks"}, str(path)
    )
    tasks = raw.get("tasks", {}) or {}
    from transfer.tasks import TASKS

    for task, sizes in tasks.items():
        if task not in TASKS:
            raise unknown(f"transfer task in profile {path}", task, TASKS)
        for target in (sizes or {}).get("targets", {}) or {}:
            if target not in TASKS[task].targets:
                raise unknown(f"target of task '{task}' in profile {path}", target, TASKS[task].targets)
    return Profile(
        name=raw["name"],
        description=raw.get("description", ""),
        data_source=raw["data_source"],
        pretrain=raw.get("pretrain", {}),
        transfer=raw.get("transfer", {}),
        tasks=tasks,
        path=path,
    )


# ----------------------------------------------------------------------------- sweeps and seeds


def with_seeds(table: TableSpec, seeds: int | None) -> TableSpec:
    """The table with `seeds` runs per row (None: the spec's own `seeds:`)."""
    return (
        table
        if seeds is None
        else dataclasses.replace(table, seeds=_positive_int(seeds, "--seeds"))
    )


class Sweep(tuple):
    """The values of a swept override (``key=a,b,c`` on the command line)."""


def split_sweeps(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list]]:
    """Separate plain overrides from swept ones."""
    plain = {k: v for k, v in overrides.items() if not isinstance(v, Sweep)}
    return plain, {k: list(v) for k, v in overrides.items() if isinstance(v, Sweep)}


def sweep_table(table: TableSpec, grid: dict[str, list]) -> TableSpec:
    """Every row times every point of the grid, each point applied as that row's overrides.

    Rows are named by the swept values (``knn_k=5``), after the row's name when the table has several;
    the paper's numbers, baseline and claims do not apply to the new rows.
    """
    rows, row_overrides, row_columns = {}, {}, {}
    for row, row_spec in table.rows.items():
        for label, point in expand_grid(grid):
            name = label if len(table.rows) == 1 else f"{row}, {label}"
            rows[name], row_overrides[name] = row_spec, point
            if row in table.row_columns:
                row_columns[name] = table.row_columns[row]
    return dataclasses.replace(
        table, rows=rows, row_overrides=row_overrides, row_columns=row_columns,
        paper={}, baseline=None, claims=[],
    )  # fmt: skip


def expand_grid(
    grid: dict[str, list], template: str | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """The cartesian product of `grid` (dotted key -> values) as (name, {key: value}) in order.

    A point is named by `template` (``"k={knn_k}"``: fields are the keys' last parts) or, by default,
    ``knn_k=5, knn_lambda=0.4`` (Hydra's multirun convention).
    """
    keys = list(grid)
    points = []
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values))
        short = {k.rsplit(".", 1)[-1]: v for k, v in point.items()}
        name = (
            template.format(**short)
            if template
            else ", ".join(f"{k}={v}" for k, v in short.items())
        )
        points.append((name, point))
    return points


def _sweep_rows(sweeps: list[dict], path: Path) -> dict[str, dict]:
    """A spec's ``sweep:`` entries, each ``{name: "k={knn_k}", grid: {moco.knn_k: [1, 5]}}``, as rows."""
    rows: dict[str, dict] = {}
    for entry in sweeps:
        _check_keys(entry, {"name", "grid"}, f"a sweep of {path}")
        if not isinstance(entry.get("grid"), dict) or not entry["grid"]:
            raise HarnessError(f"{path}: each sweep needs a grid (dotted key -> list of values)")
        try:
            points = expand_grid(entry["grid"], entry.get("name"))
        except KeyError as err:
            raise HarnessError(
                f"{path}: sweep name {entry.get('name')!r} uses {err}, not a swept key"
            ) from err
        for name, point in points:
            row: dict = {}
            for key, value in point.items():
                *parents, last = key.split(".")
                node = row
                for part in parents:
                    node = node.setdefault(part, {})
                node[last] = value
            rows[name] = row
    return rows


def _positive_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise HarnessError(f"{where} must be a whole number >= 1, not {value!r}")
    return value


# ----------------------------------------------------------------------------- resolution


def resolve(defaults: dict, *layers: dict, where: str = "spec") -> dict:
    """Deep-merge `layers` onto a copy of `defaults`; an unknown key is an error naming `where`."""
    out = copy.deepcopy(defaults)
    for layer in layers:
        _merge_into(out, layer, prefix="", where=where)
    return out


def check_job_spec(kind: str, spec: dict, name: str) -> None:
    """A resolved job spec's names and values, at plan time: a bad one fails naming its dotted field
    (``pretrain.epochs=-1: must be >= 0``) before any job runs, not inside a job on a cluster."""
    from pretrain.data import SOURCES, data_defaults
    from pretrain.methods import method_config
    from transfer.tasks import check_spec as check_transfer

    if kind not in ("pretrain", "transfer"):
        return
    if spec["data"]["source"] not in SOURCES:
        error = unknown(f"{kind}.data.source", spec["data"]["source"], SOURCES)
        raise HarnessError(f"{error} (job '{name}')")
    try:
        if kind == "pretrain":
            data_defaults(spec["data"]["name"])
            fields = {k: v for k, v in spec.items() if k not in ("method", "data")}
            method_config(spec["method"], fields)
        else:
            check_transfer(spec)
    except ValueError as err:  # unknown names list the valid ones; values name their field
        text = str(err)
        text = text if text.startswith("unknown") else f"{kind}.{text}"
        raise HarnessError(f"{text} (job '{name}')") from err
    except TypeError as err:  # a value of the wrong type (a list for a number, a string for a float)
        raise HarnessError(f"{kind}: a value has the wrong type ({err}) (job '{name}')") from err


def apply_profile(spec: dict, sizes: dict[str, Any], where: str) -> dict:
    """Set or scale the dotted keys of a profile section (``{scale: f}`` multiplies the spec's value)."""
    out = copy.deepcopy(spec)
    for key, value in sizes.items():
        current = get_dotted(out, key, where)
        if isinstance(value, dict) and set(value) == {"scale"}:
            if current is None:  # "all of it" (a user's image folder) stays all at every profile
                continue
            value = (
                max(1, round(current * value["scale"]))
                if isinstance(current, int)
                else current * value["scale"]
            )
        set_dotted(out, key, value, where)
    return out


def apply_task_sizes(spec: dict, profile: Profile, task: str, target: str) -> dict:
    """A profile's `tasks.<task>` sizes, then that task's `targets.<target>` ones."""
    sizes = dict(profile.tasks.get(task, {}) or {})
    per_target = sizes.pop("targets", {}) or {}
    spec = apply_profile(spec, sizes, f"profile {profile.path}, tasks.{task}")
    where = f"profile {profile.path}, tasks.{task}.targets.{target}"
    return apply_profile(spec, per_target.get(target, {}), where)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["pretrain.epochs=5", "transfer.protocol.n_wd=9"]`` -> dotted keys to YAML-parsed values.

    A value with commas outside brackets is a sweep (``pretrain.moco.knn_k=1,5,10``): a `Sweep` of values.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HarnessError(
                f"override '{item}' is not key=value (for example pretrain.epochs=5)"
            )
        parts = [_scalar(v) if v.strip() else None for v in _top_level_split(value)]
        out[key.strip()] = Sweep(parts) if len(parts) > 1 else parts[0]
    return out


def _scalar(text: str) -> Any:
    """A YAML value, with ``1e30`` a float: YAML 1.1 reads exponent floats without a dot as strings."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _top_level_split(text: str) -> list[str]:
    """Split on commas outside [], {} and quotes: ``1,5`` is two values, ``[0.2,1.0]`` one."""
    parts, depth, quote, start = [], 0, None, 0
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def split_overrides(overrides: dict[str, Any]) -> tuple[dict, dict]:
    """Separate ``pretrain.*`` and ``transfer.*`` overrides; any other prefix is an error."""
    sections: dict[str, dict] = {"pretrain": {}, "transfer": {}}
    for key, value in overrides.items():
        if key == "method":  # `method=swav`: the pretraining method of every trained row
            key = "pretrain.method"
        head, _, rest = key.partition(".")
        if head not in sections or not rest:
            hint = closest(head, sections)
            raise HarnessError(
                f"override '{key}': keys start with 'pretrain.' or 'transfer.'"
                + (f" (did you mean '{hint}.{rest}'?)" if hint and rest else "")
            )
        sections[head][rest] = value
    return sections["pretrain"], sections["transfer"]


def get_dotted(spec: dict, key: str, where: str, prefix: str = "") -> Any:
    """spec["a"]["b"] for key "a.b"; an unknown key names the closest valid one (with `prefix`)."""
    node: Any = spec
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise _unknown_key({prefix.rstrip("."): spec} if prefix else spec, prefix + key, where)
        node = node[part]
    return node


def set_dotted(spec: dict, key: str, value: Any, where: str, prefix: str = "") -> None:
    get_dotted(spec, key, where, prefix)  # the key must exist: typos fail loudly
    *parents, last = key.split(".")
    node = spec
    for part in parents:
        node = node[part]
    node[last] = value


def spec_hash(payload: dict) -> str:
    """sha256 of the canonical JSON of `payload`, execution-only keys removed."""
    text = json.dumps(_strip_execution(payload), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def dotted_keys(spec: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in spec.items():
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, dict):
            keys.extend(dotted_keys(value, full + "."))
    return keys


def _merge_into(out: dict, layer: dict, prefix: str, where: str) -> None:
    for key, value in layer.items():
        if key not in out:
            raise _unknown_key(out, prefix + key, where, root_prefix=prefix)
        if isinstance(value, dict) and isinstance(out[key], dict):
            _merge_into(out[key], value, prefix + key + ".", where)
        else:
            out[key] = copy.deepcopy(value)


def _unknown_key(spec: dict, key: str, where: str, root_prefix: str = "") -> HarnessError:
    valid = [root_prefix + k for k in dotted_keys(spec)] if root_prefix else dotted_keys(spec)
    hint = closest(key, valid)
    return HarnessError(
        f"unknown key '{key}' in {where}." + (f" Did you mean '{hint}'?" if hint else "")
    )


def _strip_execution(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_execution(v) for k, v in value.items() if k not in EXECUTION_KEYS}
    if isinstance(value, (list, tuple)):
        return [_strip_execution(v) for v in value]
    return value


def _check_keys(raw: dict, allowed: set[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            hint = closest(key, allowed)
            raise HarnessError(
                f"unknown key '{key}' in {where}." + (f" Did you mean '{hint}'?" if hint else "")
            )


def _load_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise HarnessError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise HarnessError(f"{path} must hold a mapping at the top level")
    return raw
