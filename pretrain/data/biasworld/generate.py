"""generate(): a bias-world set as arrays, deterministic per image, optionally cached as one .npz.

Determinism: image i of (name, split, seed) is drawn by np.random.default_rng([seed,
stable_id(name), split_id, IMAGE_STREAM, i]) alone, so it is the same on every run and the first n
images do not change when n grows. The one exception is the class list of the
"class"/"scene"-labelled sets: it is a seeded function of n. With balance "uniform" it is a
concatenation of seeded permutations of all classes (one block of C images at a time), so it too is
prefix-stable and its counts differ by at most 1; with balance "pareto" the class sizes are
pareto_class_sizes(C, n, alpha, seed) (the real IN-118K-LT builder's sampler), shuffled, so the
whole list changes with n.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pretrain.data.biasworld import sample
from pretrain.data.biasworld.render import Canvas, Instance
from pretrain.data.biasworld.variants import VariantSpec, get_variant
from pretrain.data.biasworld.world import VOCABULARIES, scene_types
from pretrain.data.longtail import pareto_class_sizes

GENERATOR_VERSION = 1  # bump whenever rendering or sampling changes: it is part of every cache key
SPLITS = {"train": 0, "val": 1, "test": 2}
IMAGE_STREAM, CLASS_STREAM = 0, 1
OBJECT_FIELDS = ("image", "instance", "class", "box", "visible", "depth")


def stable_id(name: str) -> int:
    """A 32-bit id of a name that is the same on every machine (unlike Python's hash())."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


@dataclass
class BiasWorldSet:
    name: str
    split: str
    size: int
    seed: int
    images: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) int64 single-label; (N, C) uint8 multi-label
    num_classes: int
    class_names: tuple[str, ...]
    multilabel: bool
    objects: dict[
        str, np.ndarray
    ]  # per visible instance (M rows): image, instance, class, box (xyxy), visible, depth
    dense: (
        dict[str, np.ndarray] | None
    )  # class_mask (N,S,S) int16 (0 bg, class+1), instance_mask int16, depth f16
    scene: np.ndarray | None = None  # (N,) int64 scene type of scene-kind sets, else None
    object_class_names: tuple[
        str, ...
    ] = ()  # names of objects["class"] (the labels' names unless scene-labelled)

    def objects_per_image(self) -> float:
        """Mean number of visible instances per image (paper Table 1's #Obj/Img)."""
        return len(self.objects["image"]) / max(len(self.images), 1)


def generate(
    name: str,
    split: str = "train",
    n: int = 1000,
    size: int = 64,
    seed: int = 0,
    dense: bool = False,
    cache_dir: str | Path | None = None,
) -> BiasWorldSet:
    """Images 0..n-1 of variant `name` (a key of VARIANTS), size x size px; see the module doc."""
    spec = get_variant(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; valid: {', '.join(SPLITS)}")
    if n < 0 or size < 8:
        raise ValueError(f"need n >= 0 and size >= 8, got n={n}, size={size}")
    path = (
        cache_path(spec, split, n, size, seed, dense, cache_dir) if cache_dir is not None else None
    )
    if path is not None and path.exists():
        return load(path)
    world = _render_set(spec, split, n, size, seed, dense)
    if path is not None:
        save(world, path)
    return world


# ----------------------------------------------------------------------------- class lists


def class_list(spec: VariantSpec, split: str, n: int, num_classes: int, seed: int) -> np.ndarray:
    """(n,) int64 label of each image for "class"/"scene"-labelled sets (see the module doc)."""
    base = [seed, stable_id(spec.name), SPLITS[split], CLASS_STREAM]
    if spec.balance == "pareto":
        sizes = pareto_class_sizes(
            num_classes, n, alpha=spec.alpha, seed=seed, min_per_class=int(n >= num_classes)
        )
        return np.random.default_rng(base + [0]).permutation(
            np.repeat(np.arange(num_classes), sizes)
        )
    if spec.balance != "uniform":
        raise ValueError(f"unknown balance '{spec.balance}'; valid: uniform, pareto")
    blocks = [
        np.random.default_rng(base + [b]).permutation(num_classes)
        for b in range(-(-n // num_classes))
    ]
    return np.concatenate(blocks)[:n].astype(np.int64) if blocks else np.zeros(0, np.int64)


# ----------------------------------------------------------------------------- rendering


def _render_set(
    spec: VariantSpec, split: str, n: int, size: int, seed: int, dense: bool
) -> BiasWorldSet:
    vocab = VOCABULARIES[spec.vocabulary]()
    types = scene_types(spec.scenes) if spec.scenes else ()
    num = len(types) if spec.label == "scene" else len(vocab)
    fixed = class_list(spec, split, n, num, seed) if spec.label in ("class", "scene") else None
    type_freq = np.full(len(types), 1 / max(len(types), 1))
    images = np.empty((n, size, size, 3), np.uint8)
    masks = (
        (
            np.empty((n, size, size), np.int16),
            np.empty((n, size, size), np.int16),
            np.empty((n, size, size), np.float16),
        )
        if dense
        else None
    )
    rows, scenes = [], np.full(n, -1, np.int64)
    for i in range(n):
        rng = np.random.default_rng([seed, stable_id(spec.name), SPLITS[split], IMAGE_STREAM, i])
        if spec.kind == "object":
            content = sample.object_centric(rng, spec, vocab, int(fixed[i]), size, dense)
        elif spec.kind == "scene":
            scenes[i] = (
                int(fixed[i]) if spec.label == "scene" else int(rng.choice(len(types), p=type_freq))
            )
            content = sample.scene(rng, spec, vocab, types[scenes[i]], size, dense)
        else:
            content = sample.street(rng, spec, vocab, size, dense)
        canvas, objects = _paint(content, spec.noise, rng)
        images[i] = np.clip(canvas.image * 255 + 0.5, 0, 255).astype(np.uint8)
        rows.append(_object_rows(canvas, objects, i))
        if masks is not None:
            lut = np.asarray([0] + [o.cls + 1 for o in objects], np.int16)
            masks[0][i], masks[1][i], masks[2][i] = (
                lut[canvas.instance],
                canvas.instance,
                canvas.depth,
            )
    table = {k: np.concatenate([r[k] for r in rows]) if rows else _empty(k) for k in OBJECT_FIELDS}
    return BiasWorldSet(
        name=spec.name,
        split=split,
        size=size,
        seed=seed,
        images=images,
        labels=_labels(spec, fixed, table, n, num),
        num_classes=num,
        class_names=(
            tuple(t.name for t in types) if spec.label == "scene" else tuple(c.name for c in vocab)
        ),
        multilabel=spec.label == "multilabel",
        objects=table,
        dense=(
            dict(zip(("class_mask", "instance_mask", "depth"), masks))
            if masks is not None
            else None
        ),
        scene=scenes if spec.kind == "scene" else None,
        object_class_names=tuple(c.name for c in vocab),
    )


def _paint(
    content: sample.Content, noise: float, rng: np.random.Generator
) -> tuple[Canvas, list[Instance]]:
    """Painter's algorithm: farthest first (stable for equal depths); then uniform pixel noise."""
    image, depth, objects = content
    objects = sorted(objects, key=lambda o: -o.z)
    canvas = Canvas(image, depth)
    for o in objects:
        canvas.paint(o)
    if noise > 0:
        canvas.image += (rng.random(image.shape, dtype=np.float32) - np.float32(0.5)) * np.float32(
            2 * noise
        )
    return canvas, objects


def _object_rows(canvas: Canvas, objects: list[Instance], i: int) -> dict[str, np.ndarray]:
    """A row per instance with a visible pixel: tight xyxy box (max exclusive), visible fraction."""
    S = canvas.size
    flat = canvas.instance.ravel()
    counts = np.bincount(flat, minlength=len(objects) + 1)
    ids = np.flatnonzero(counts[1:]) + 1  # painted ids with a visible pixel
    order = np.argsort(flat, kind="stable")[counts[0] :]  # pixels of instances 1.., grouped by id
    starts = np.concatenate([[0], np.cumsum(counts[1:])[:-1]])[ids - 1]
    ys, xs = order // S, order % S
    box = (
        np.stack(
            [
                np.minimum.reduceat(xs, starts),
                np.minimum.reduceat(ys, starts),
                np.maximum.reduceat(xs, starts) + 1,
                np.maximum.reduceat(ys, starts) + 1,
            ],
            1,
        )
        if len(ids)
        else np.zeros((0, 4), np.int64)
    )
    full = np.asarray(canvas.full_area, np.float64)[ids - 1]
    return {
        "image": np.full(len(ids), i, np.int64),
        "instance": ids.astype(np.int16),
        "class": np.asarray([objects[k - 1].cls for k in ids], np.int64),
        "box": box.astype(np.int32),
        "visible": (counts[ids] / full).astype(np.float32),
        "depth": np.asarray([objects[k - 1].z for k in ids], np.float32),
    }


def _empty(field: str) -> np.ndarray:
    dtypes = {
        "image": np.int64,
        "instance": np.int16,
        "class": np.int64,
        "visible": np.float32,
        "depth": np.float32,
    }
    return np.zeros((0, 4), np.int32) if field == "box" else np.zeros(0, dtypes[field])


def _labels(
    spec: VariantSpec, fixed: np.ndarray | None, table: dict, n: int, num: int
) -> np.ndarray:
    """(n,) int64 class/scene labels, or (n, C) uint8 multi-hot of the visible classes."""
    if fixed is not None:
        return fixed
    labels = np.zeros((n, num), np.uint8)
    labels[table["image"], table["class"]] = 1
    return labels


# ----------------------------------------------------------------------------- cache


def cache_path(
    spec: VariantSpec, split: str, n: int, size: int, seed: int, dense: bool, cache_dir: str | Path
) -> Path:
    """<cache_dir>/<name>-<split>-n<n>-s<size>-seed<seed>[-dense]-<hash of every parameter>.npz"""
    key = json.dumps(
        {
            "version": GENERATOR_VERSION,
            "spec": asdict(spec),
            "split": split,
            "n": n,
            "size": size,
            "seed": seed,
            "dense": dense,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return (
        Path(cache_dir)
        / f"{spec.name}-{split}-n{n}-s{size}-seed{seed}{'-dense' if dense else ''}-{digest}.npz"
    )


def save(world: BiasWorldSet, path: Path) -> None:
    """Write atomically: a temporary file in the same folder, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "images": world.images,
        "labels": world.labels,
        **{f"obj_{k}": v for k, v in world.objects.items()},
        **{f"dense_{k}": v for k, v in (world.dense or {}).items()},
        "meta": np.asarray(
            json.dumps(
                {
                    "name": world.name,
                    "split": world.split,
                    "size": world.size,
                    "seed": world.seed,
                    "num_classes": world.num_classes,
                    "class_names": world.class_names,
                    "multilabel": world.multilabel,
                    "object_class_names": world.object_class_names,
                }
            )
        ),
    }
    if world.scene is not None:
        arrays["scene"] = world.scene
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def load(path: Path) -> BiasWorldSet:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        dense = {k[6:]: z[k] for k in z.files if k.startswith("dense_")}
        return BiasWorldSet(
            name=meta["name"],
            split=meta["split"],
            size=meta["size"],
            seed=meta["seed"],
            images=z["images"],
            labels=z["labels"],
            num_classes=meta["num_classes"],
            class_names=tuple(meta["class_names"]),
            multilabel=meta["multilabel"],
            objects={k[4:]: z[k] for k in z.files if k.startswith("obj_")},
            dense=dense or None,
            scene=z["scene"] if "scene" in z.files else None,
            object_class_names=tuple(meta["object_class_names"]),
        )
