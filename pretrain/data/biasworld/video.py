"""Short clips for DAVIS-style label propagation: a scene's objects move at constant velocity and
occlude each other.

Clip i of (name, split, seed) is drawn by its own generator, as images are. Depths stay fixed, so
the painter's order, and therefore every object's instance id, is the same in all frames of a clip.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pretrain.data.biasworld import sample
from pretrain.data.biasworld.generate import SPLITS, _paint, stable_id
from pretrain.data.biasworld.variants import get_variant
from pretrain.data.biasworld.world import VOCABULARIES, scene_types

VIDEO_STREAM = 2


@dataclass
class BiasWorldVideo:
    name: str
    split: str
    size: int
    seed: int
    frames: np.ndarray  # (N, T, S, S, 3) uint8
    instance_masks: (
        np.ndarray
    )  # (N, T, S, S) int16, 0 = background, k = k-th object (same k in every frame)
    classes: (
        np.ndarray
    )  # (N, K) int64 class of instance k + 1 (-1 where the clip has fewer objects)
    class_names: tuple[str, ...]


def video(
    name: str = "scene_coco",
    split: str = "train",
    n: int = 8,
    frames: int = 8,
    size: int = 64,
    seed: int = 0,
    speed: float = 0.03,
) -> BiasWorldVideo:
    """n clips of `frames` frames of a scene variant; objects move <= `speed` widths a frame."""
    spec = get_variant(name)
    if spec.kind != "scene":
        raise ValueError(f"video needs a scene variant, got '{name}' ({spec.kind})")
    vocab, types = VOCABULARIES[spec.vocabulary](), scene_types(spec.scenes)
    out = np.empty((n, frames, size, size, 3), np.uint8)
    masks = np.empty((n, frames, size, size), np.int16)
    classes = np.full((n, spec.max_objects), -1, np.int64)
    for i in range(n):
        rng = np.random.default_rng([seed, stable_id(name), SPLITS[split], VIDEO_STREAM, i])
        st = types[int(rng.integers(len(types)))]
        image, _, objects = sample.scene(rng, spec, vocab, st, size, dense=False)
        objects = sorted(objects, key=lambda o: -o.z)
        velocity = (rng.random((len(objects), 2)) - 0.5) * np.array(
            [2 * speed, 0.6 * speed]
        )  # mostly sideways
        classes[i, : len(objects)] = [o.cls for o in objects]
        for t in range(frames):
            moved = [
                replace(o, cx=o.cx + t * vx, cy=o.cy + t * vy)
                for o, (vx, vy) in zip(objects, velocity)
            ]
            canvas, _ = _paint((image.copy(), None, moved), spec.noise, rng)
            out[i, t] = np.clip(canvas.image * 255 + 0.5, 0, 255).astype(np.uint8)
            masks[i, t] = canvas.instance
    return BiasWorldVideo(
        name, split, size, seed, out, masks, classes, tuple(c.name for c in vocab)
    )
