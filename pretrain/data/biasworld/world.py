"""What the bias world contains: object classes (attribute tuples) and scene types (co-occurrence +
layout).

Vocabularies and scene families are fixed functions of constant seeds (not of the user's seed): the
same class "circle-stripes-red" looks the same in every set, so the pretraining sets and the target
sets share one world, as ImageNet/COCO and CIFAR/VOC share the real one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from pretrain.data.biasworld.render import BASIC_SHAPES, TEXTURES

HUE_NAMES = (
    "red",
    "orange",
    "yellow",
    "green",
    "teal",
    "blue",
    "purple",
    "pink",
)  # 8 hue bins of 1/8
TEXTURE_NAMES = tuple(TEXTURES)


@dataclass(frozen=True)
class ObjectClass:
    """An object class: a shape, a texture, a colour (None: drawn per instance), size priors."""

    name: str
    shape: str  # key of render.SHAPES
    texture: str | None  # key of render.TEXTURES; None: random per instance
    hue: float | None  # base hue in [0, 1); None: random per instance
    sat: float = 0.7
    val: float = 0.8
    hue2: float = 0.5  # hue offset of the texture colour c2
    val2: float = 0.45  # value of c2
    accent: tuple[float, float, float] = (0.0, 0.0, 0.12)  # HSV of c3 (wheels, eyes, legs)
    freq: float = 2.0  # texture cycles per local unit
    angle: float = 0.0  # texture direction as render.unit's parameter t in [-1, 1]
    hue_jitter: float = 0.02  # std of the per-instance hue shift
    size: float = 1.0  # relative size in scenes
    aspect: float = 1.0  # width / height
    upright: bool = False  # composites: small rotations and mirror flips only


@dataclass(frozen=True)
class SceneType:
    """A scene type: its background layout and which object classes it holds."""

    name: str
    horizon: float  # mean y of the horizon (wall/floor, sky/ground); images jitter it by +-0.12
    upper: tuple[float, float, float]  # HSV of the wall / sky
    lower: tuple[float, float, float]  # HSV of the floor / ground
    clutter: int  # distractor patches
    weights: tuple[float, ...]  # (C,) class sampling weights, sum 1


# ----------------------------------------------------------------------------- vocabularies

COMPOSITES = (  # recurring "things" (COCO/VOC's person, car, bus, cat, dog, sign, light)
    ObjectClass(
        "person",
        "person",
        "solid",
        None,
        0.55,
        0.7,
        accent=(0.62, 0.5, 0.3),
        size=1.4,
        aspect=0.8,
        hue_jitter=0.0,
        upright=True,
    ),
    ObjectClass(
        "car", "car", "solid", None, 0.75, 0.75, size=1.2, aspect=1.3, hue_jitter=0.0, upright=True
    ),
    ObjectClass(
        "bus",
        "bus",
        "stripes",
        0.12,
        0.85,
        0.9,
        val2=0.7,
        freq=1.0,
        angle=1.0,
        size=1.8,
        aspect=1.4,
        upright=True,
    ),
    ObjectClass(
        "cat", "cat", "stripes", 0.07, 0.6, 0.75, hue2=0.0, val2=0.35, freq=2.5, upright=True
    ),
    ObjectClass("dog", "dog", "solid", 0.09, 0.45, 0.55, accent=(0.08, 0.6, 0.25), upright=True),
    ObjectClass(
        "sign",
        "sign",
        "solid",
        0.0,
        0.85,
        0.85,
        accent=(0.0, 0.0, 0.5),
        size=1.1,
        aspect=0.8,
        upright=True,
    ),
    ObjectClass(
        "light",
        "light",
        "solid",
        0.0,
        0.0,
        0.15,
        accent=(0.3, 0.9, 0.95),
        size=1.0,
        aspect=0.7,
        upright=True,
    ),
)


@cache
def world_vocabulary(num_classes: int = 56, seed: int = 1234) -> tuple[ObjectClass, ...]:
    """The world's classes: the composites + distinct (shape, texture, hue bin) triplets."""
    rng = np.random.default_rng(seed)
    triplets = [
        (s, t, h) for s in BASIC_SHAPES for t in TEXTURE_NAMES for h in range(len(HUE_NAMES))
    ]
    picks = rng.permutation(len(triplets))[: num_classes - len(COMPOSITES)]
    classes = [_basic(triplets[p], rng) for p in picks]
    return COMPOSITES + tuple(classes)


def _basic(triplet: tuple[str, str, int], rng: np.random.Generator) -> ObjectClass:
    shape, texture, h = triplet
    sat, val, hue2 = (
        rng.uniform(0.55, 0.95),
        rng.uniform(0.6, 0.95),
        rng.choice([0.0, 0.33, 0.5, 0.67]),
    )
    return ObjectClass(
        f"{shape}-{texture}-{HUE_NAMES[h]}",
        shape,
        texture,
        h / len(HUE_NAMES),
        float(sat),
        float(val),
        hue2=float(hue2),
        val2=float(rng.uniform(0.2, 0.6)),
        freq=float(rng.uniform(1.2, 3.0)),
        angle=float(rng.uniform(-1, 1)),
        size=float(rng.uniform(0.7, 1.3)),
    )


def street_vocabulary() -> tuple[ObjectClass, ...]:
    """BDD100K's few recurring classes: car, pedestrian, sign, traffic light, bus."""
    by = {c.name: c for c in COMPOSITES}
    return (
        by["car"],
        ObjectClass(
            "pedestrian",
            "person",
            "solid",
            None,
            0.5,
            0.6,
            accent=(0.6, 0.4, 0.25),
            size=1.0,
            aspect=0.8,
            upright=True,
        ),
        by["sign"],
        by["light"],
        by["bus"],
    )


# CIFAR's ten classes as a shape + a typical (widely jittered) colour; texture random per instance
CIFAR10 = (
    ("airplane", "cross", 0.58),
    ("automobile", "car", 0.0),
    ("bird", "triangle", 0.15),
    ("cat", "cat", 0.08),
    ("deer", "star", 0.07),
    ("dog", "dog", 0.1),
    ("frog", "blob", 0.3),
    ("horse", "ellipse", 0.05),
    ("ship", "crescent", 0.6),
    ("truck", "bus", 0.95),
)


def cifar10_vocabulary() -> tuple[ObjectClass, ...]:
    return tuple(
        ObjectClass(
            n,
            s,
            None,
            h,
            0.55,
            0.75,
            hue2=0.4,
            hue_jitter=0.12,
            freq=2.0,
            angle=0.3,
            upright=s in ("car", "cat", "dog", "bus"),
        )
        for n, s, h in CIFAR10
    )


def cars_vocabulary() -> tuple[ObjectClass, ...]:
    """Fine-grained: one car silhouette; classes differ in stripe angle and frequency, hue."""
    return tuple(
        ObjectClass(
            f"car-a{a}-f{f}-h{h}",
            "car",
            "stripes",
            0.55 + 0.05 * h,
            0.55,
            0.7,
            hue2=0.02,
            val2=0.45,
            freq=(1.6, 2.6)[f],
            angle=(-0.6, -0.2, 0.2, 0.6)[a],
            hue_jitter=0.02,
            aspect=1.3,
            upright=True,
        )
        for a in range(4)
        for f in range(2)
        for h in range(2)
    )


FOOD_TEXTURES = ("dots", "blobs", "stripes", "checker", "rings")
FOOD_PALETTES = (
    (0.08, 0.8, 0.85),
    (0.0, 0.75, 0.6),
    (0.28, 0.6, 0.6),
    (0.14, 0.5, 0.95),
)  # (hue, sat, val)


def food_vocabulary() -> tuple[ObjectClass, ...]:
    """Dishes filling the frame: a texture x a palette, one round blob shape."""
    return tuple(
        ObjectClass(
            f"{t}-{p}",
            "blob",
            t,
            FOOD_PALETTES[p][0],
            FOOD_PALETTES[p][1],
            FOOD_PALETTES[p][2],
            hue2=0.06,
            val2=0.3,
            freq=2.2 + 0.3 * p,
            angle=0.25 * p,
            hue_jitter=0.03,
        )
        for t in FOOD_TEXTURES
        for p in range(len(FOOD_PALETTES))
    )


PET_BREEDS = (  # (texture, hue, sat, val, c2 value)
    ("solid", 0.07, 0.7, 0.8, 0.5),
    ("stripes", 0.07, 0.6, 0.7, 0.3),
    ("dots", 0.6, 0.08, 0.7, 0.25),
    ("blobs", 0.0, 0.0, 0.9, 0.15),
    ("radial", 0.1, 0.3, 0.95, 0.5),
    ("solid", 0.0, 0.05, 0.25, 0.1),
)


def pets_vocabulary() -> tuple[ObjectClass, ...]:
    """Two shape families (cat-like, dog-like) x six breeds (fur texture and colour)."""
    return tuple(
        ObjectClass(
            f"{fam}-{b}",
            fam,
            t,
            h,
            s,
            v,
            hue2=0.0,
            val2=v2,
            freq=2.4,
            angle=0.9,
            upright=True,
            hue_jitter=0.04,
            accent=(0.07, 0.5, 0.2),
        )
        for fam in ("cat", "dog")
        for b, (t, h, s, v, v2) in enumerate(PET_BREEDS)
    )


VOCABULARIES = {
    "world": world_vocabulary,
    "voc": lambda: world_vocabulary()[
        :20
    ],  # VOC's 20 classes are a subset of COCO's, as in the real world
    "street": street_vocabulary,
    "cifar10": cifar10_vocabulary,
    "cars": cars_vocabulary,
    "food": food_vocabulary,
    "pets": pets_vocabulary,
}


# ----------------------------------------------------------------------------- scene families

PALETTES = (  # (upper HSV, lower HSV): indoor rooms, outdoors, night, beach ...
    ((0.1, 0.15, 0.85), (0.08, 0.45, 0.45)),
    ((0.58, 0.45, 0.9), (0.3, 0.5, 0.45)),
    ((0.65, 0.5, 0.25), (0.0, 0.0, 0.2)),
    ((0.55, 0.3, 0.95), (0.12, 0.4, 0.85)),
    ((0.0, 0.0, 0.6), (0.0, 0.0, 0.4)),
    ((0.9, 0.2, 0.7), (0.05, 0.3, 0.3)),
)


@dataclass(frozen=True)
class SceneFamily:
    """How a family of scene types is drawn: size, peakedness of classes, dominant class."""

    count: int
    seed: int
    core: int  # classes a scene type favours (co-occurrence)
    zipf: float  # exponent of the global class frequency (long tail)
    dominant: float  # extra weight of class 0 (the person) in every scene type
    palettes: int  # palettes shared by the family: a palette alone does not tell the type
    vocabulary: str = "world"


SCENE_FAMILIES = {
    "coco": SceneFamily(12, 11, 8, 0.7, 0.25, 6),
    "oi": SceneFamily(16, 22, 12, 1.0, 0.1, 6),
    "places": SceneFamily(12, 33, 5, 0.3, 0.05, 4),
    "sun": SceneFamily(20, 44, 5, 0.3, 0.05, 4),
    "voc": SceneFamily(6, 55, 5, 0.5, 0.2, 6, vocabulary="voc"),
}


@cache
def scene_types(family: str) -> tuple[SceneType, ...]:
    """A family's scene types; class weights = global long tail x type affinity + dominant class."""
    fam = SCENE_FAMILIES[family]
    num = len(VOCABULARIES[fam.vocabulary]())
    rng = np.random.default_rng(fam.seed)
    glob = 1.0 / (1.0 + rng.permutation(num)) ** fam.zipf  # (C,) global long tail
    types = []
    for k in range(fam.count):
        affinity = np.full(num, 0.05)
        affinity[rng.choice(num, fam.core, replace=False)] = 1.0
        w = glob * affinity
        w = w / w.sum() * (1 - fam.dominant)
        w[0] += fam.dominant
        upper, lower = PALETTES[(k * 5 + fam.seed) % fam.palettes]
        types.append(
            SceneType(
                f"{family}-{k}",
                float(rng.uniform(0.35, 0.55)),
                upper,
                lower,
                int(rng.integers(2, 10)),
                tuple(float(x) for x in w / w.sum()),
            )
        )
    return tuple(types)
