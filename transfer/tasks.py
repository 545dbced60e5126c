"""Transfer tasks by name: each a protocol dataclass (the paper's values as defaults) and a runner.

A transfer job's spec is ``{"task", "data", "protocol", "device", **task.spec_defaults}``; the harness
resolves it (defaults <- table <- profile <- overrides) and calls ``run_task(spec, ctx)``, which returns
``{"value": float, "metric": str, ...}``: `value` is the number the table shows. Runners never import
`harness`; everything they need from the job comes through `TaskContext`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretrain.registry import lookup


@dataclass(frozen=True)
class TaskContext:
    """What a transfer runner gets from its job."""

    backbone_path: Path  # the pretraining job's saved backbone (pretrain.backbones.load_backbone)
    source_key: str  # the pretraining job's key: names per-checkpoint caches (features)
    cache_dir: Path  # the store's shared cache: cache_dir / "biasworld", cache_dir / "features", ...
    workdir: Path  # this job's own directory: the files its result names (a CAM grid, ...)
    roots: dict[str, str] = field(default_factory=dict)  # real dataset roots, by dataset name
    device: str = "cpu"
    progress: Callable[[dict], None] = lambda info: None  # {"stage": ..., "epoch": ..., ...}
    resume_dir: Path | None = None  # finetuning runs' checkpoints; None: workdir. The harness deletes it once
    #                                 the job's result is stored: nothing there outlives the job.

    def checkpoint(self, name: str) -> Path:
        """Where the resume state `name` (a finetuning run's checkpoint) is written and read back."""
        return Path(self.resume_dir or self.workdir) / name


@dataclass(frozen=True)
class Task:
    name: str
    protocol: type  # dataclass; its field defaults are the paper's values
    run: Callable[[dict[str, Any], TaskContext], dict[str, Any]]
    targets: tuple[str, ...]  # target datasets (keys of transfer.data.TARGETS) it accepts
    spec_defaults: dict[str, Any] = field(default_factory=dict)  # extra top-level spec fields
    description: str = ""
    # target -> protocol fields that differ per dataset (e.g. the FCN head's dilation: 6 VOC, 1 Cityscapes)
    per_target: dict[str, dict[str, Any]] = field(default_factory=dict)


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"transfer task '{task.name}' registered twice")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    return lookup(TASKS, name, "transfer task")


def task_defaults(task: str, target: str) -> dict[str, Any]:
    """The protocol section of a transfer spec on `target`, with the metric the paper reports there."""
    from transfer.data import get_target

    t = get_task(task)
    info = get_target(target)
    if target not in t.targets:
        from pretrain.registry import unknown_name

        raise ValueError(unknown_name(f"target dataset of task '{task}'", target, t.targets))
    protocol = dataclasses.asdict(t.protocol())  # builds (so checks) the defaults
    # fields a protocol `version` fills (declared None) stay None, so a spec's version still chooses them
    protocol.update({f.name: None for f in dataclasses.fields(t.protocol) if f.default is None})
    protocol.update(t.per_target.get(target, {}))
    protocol.update(metric=info.metric, multilabel=info.multilabel)
    return protocol


def task_spec_defaults(task: str) -> dict[str, Any]:
    return dict(get_task(task).spec_defaults)


# Fields several tasks share, checked by name wherever they appear in a transfer spec (top level,
# data, protocol), so a bad value fails at plan time naming its dotted field; each protocol's
# __post_init__ then checks the rest (its choices, and ranges only it has).
AT_LEAST_ONE = frozenset({
    "epochs", "iterations", "batch_size", "eval_batch_size", "n_runs", "max_iter", "n_wd",
    "n_clusters", "kmeans_iters", "image_size", "crop_size", "test_size", "max_size", "n_train",
    "n_test", "n_videos", "frames",
})  # fmt: skip
POSITIVE = frozenset({"lr", "tol", "cost"})
AREA_FRACTIONS = frozenset({"crop_scale"})  # (lo, hi) fractions of the image area


def check_spec(spec: dict[str, Any]) -> None:
    """A resolved transfer spec's names and values, before anything runs: ValueError naming a field."""
    task = get_task(spec["task"])
    task_defaults(spec["task"], spec["data"]["name"])  # an unknown or unsupported target fails here
    for section, fields in (("", spec), ("data.", spec["data"]), ("protocol.", spec["protocol"])):
        for name, value in fields.items():
            _check_range(section + name, name, value)
    try:
        task.protocol(**spec["protocol"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"protocol of task '{task.name}': {err}") from err


def _check_range(field: str, name: str, value: Any) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if name in AT_LEAST_ONE and number and value < 1:
        raise ValueError(f"{field}={value}: must be >= 1")
    if name in POSITIVE and number and value <= 0:
        raise ValueError(f"{field}={value}: must be > 0")
    if name in AREA_FRACTIONS and not (
        isinstance(value, (list, tuple)) and len(value) == 2 and 0 < value[0] <= value[1] <= 1
    ):
        raise ValueError(f"{field}={value}: must be (lo, hi) with 0 < lo <= hi <= 1")


def run_task(spec: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    out = get_task(spec["task"]).run(spec, ctx)
    if "value" not in out or "metric" not in out:
        raise RuntimeError(f"task '{spec['task']}' returned no value/metric: {sorted(out)}")
    return out


# The built-in tasks register themselves on import; add a module here to add a task.
import transfer.linear  # noqa: E402,F401
import transfer.dense  # noqa: E402,F401  (segmentation, depth)
import transfer.detection  # noqa: E402,F401
import transfer.video  # noqa: E402,F401  (DAVIS label propagation)
import transfer.retrieval  # noqa: E402,F401  (semantic segment retrieval)
import transfer.svm  # noqa: E402,F401  (VOC07 SVM)
import transfer.lincls  # noqa: E402,F401  (MoCo main_lincls)
import transfer.cam  # noqa: E402,F401  (class activation maps of main_lincls's classifier)
