"""Long-tailed class sizes: the one sampler behind IN-118K-LT and its bias-world twin.

The paper (A.1, Figure S1) builds IN-118K-LT by giving the ImageNet classes sizes that follow a
Pareto distribution with power alpha = 6, the strategy of Liu et al. 2019 (ImageNet-LT). Both the
real manifest builder and the bias world call :func:`pareto_class_sizes`, so a seed yields the
same class-size profile in both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pareto_class_sizes(
    num_classes: int,
    total: int,
    alpha: float = 6.0,
    seed: int = 0,
    max_per_class: Sequence[int] | None = None,
    min_per_class: int = 1,
) -> np.ndarray:
    """Integer class sizes (num_classes,) summing to `total`, shaped like Pareto(alpha) draws.

    Draws num_classes values from a Pareto(alpha) (numpy's Lomax + 1), sorts them descending and
    scales them to `total`; the class that gets each rank is a seeded permutation, so the head
    classes differ between seeds. Sizes are clipped to [min_per_class, max_per_class[c]] and the
    rounding remainder is spread over the classes with room left, largest first.
    """
    if num_classes <= 0 or total < num_classes * min_per_class:
        raise ValueError(
            f"pareto_class_sizes: need total >= num_classes * min_per_class, "
            f"got total={total}, num_classes={num_classes}, min_per_class={min_per_class}"
        )
    rng = np.random.default_rng(seed)
    weights = np.sort(rng.pareto(alpha, num_classes) + 1.0)[::-1]  # descending, >= 1
    weights = weights - weights.min() + 1e-3  # the tail goes to the floor, as in Figure S1
    order = rng.permutation(num_classes)  # class order[r] gets rank r
    cap = np.full(num_classes, np.iinfo(np.int64).max, dtype=np.int64)
    if max_per_class is not None:
        cap = np.asarray(max_per_class, dtype=np.int64)[order]
        if cap.sum() < total:
            raise ValueError(f"pareto_class_sizes: only {cap.sum()} images available, {total} asked")
    free = total - num_classes * min_per_class
    sizes = np.minimum(min_per_class + np.floor(weights / weights.sum() * free), cap).astype(np.int64)
    sizes = _fill_remainder(sizes, cap, total)
    out = np.empty(num_classes, dtype=np.int64)
    out[order] = sizes
    return out


def _fill_remainder(sizes: np.ndarray, cap: np.ndarray, total: int) -> np.ndarray:
    """Add the images lost to rounding and clipping, one per class, head classes first."""
    sizes = sizes.copy()
    while (missing := total - int(sizes.sum())) > 0:
        room = np.flatnonzero(sizes < cap)
        take = room[:missing]
        sizes[take] += 1
    return sizes
