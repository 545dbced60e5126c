"""Transfer tasks by name, each with its protocol dataclass (the paper's values as defaults)."""

from __future__ import annotations

from pretrain.registry import lookup
import dataclasses
from typing import Any

from transfer.data import get_target
from transfer.linear import LinearProtocol

TASKS: dict[str, type] = {"linear": LinearProtocol}


def task_defaults(task: str, target: str) -> dict[str, Any]:
    """The protocol section of a transfer spec, with the metric the paper reports on `target`."""
    info = get_target(target)
    protocol = dataclasses.asdict(lookup(TASKS, task, "transfer task")())
    protocol.update(metric=info.metric, multilabel=info.multilabel)
    return protocol
