"""Loaders of the real transfer datasets, called by transfer.data's dispatchers for `source: real`.

A dataset's root comes from roots[spec["name"]]: the harness passes the same roots as for the
pretraining datasets (datasets.yaml or --data-config FILE, and --data-root NAME=PATH). Layouts and the
provenance of every split are in the docstrings of `classification`, `dense` and `video`. A missing
root, folder or split file raises DatasetLayoutError (naming the path and the expected layout); an
undecodable image raises CorruptImageError with its path when it is read (never skipped).
"""

from __future__ import annotations

from typing import Any

from transfer.data import DenseSet, Video
from transfer.real.classification import CLASSIFICATION, load_classification
from transfer.real.common import CorruptImageError, DatasetLayoutError, dataset_root
from transfer.real.dense import DENSE
from transfer.real.video import VIDEO

__all__ = [
    "load_classification",
    "load_dense",
    "load_videos",
    "CorruptImageError",
    "DatasetLayoutError",
    "CLASSIFICATION",
    "DENSE",
    "VIDEO",
]


def _builder(registry: dict, spec: dict[str, Any], kind: str):
    if spec["name"] not in registry:
        raise ValueError(
            f"no real {kind} loader for '{spec['name']}'; have: {', '.join(sorted(registry))}"
        )
    return registry[spec["name"]]


def load_dense(spec: dict[str, Any], split: str, roots: dict[str, str]) -> DenseSet:
    build, layout = _builder(DENSE, spec, "dense")
    return build(dataset_root(spec, roots, layout), split, roots)


def load_videos(spec: dict[str, Any], split: str, roots: dict[str, str]) -> list[Video]:
    """A lazy sequence of Video (decoded when indexed); see transfer.real.video."""
    build, layout = _builder(VIDEO, spec, "video")
    return build(dataset_root(spec, roots, layout), split, roots)
