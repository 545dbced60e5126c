"""Pretraining methods by name, each with its published defaults (a config dataclass)."""

from __future__ import annotations

from typing import Any

from pretrain.config import PretrainConfig
from pretrain.registry import lookup

METHODS: dict[str, type] = {"mocov2": PretrainConfig}


def method_defaults(name: str) -> dict[str, Any]:
    """The method's full config at the paper's values, as nested dicts."""
    return lookup(METHODS, name, "method")().to_dict()
