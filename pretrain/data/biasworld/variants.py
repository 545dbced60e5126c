"""The bias world's variants: one per row of Table 1 (pretraining), one per column of Table 2."""

from __future__ import annotations

from dataclasses import dataclass

from pretrain.registry import lookup

KINDS = ("object", "scene", "street")
LABELS = ("class", "multilabel", "scene")


@dataclass(frozen=True)
class VariantSpec:
    """The generator's knobs for one set. Every field enters the cache key."""

    name: str
    kind: str  # "object": one dominant centred object; "scene": objects on a ground plane; "street"
    vocabulary: str  # key of world.VOCABULARIES (the object classes)
    label: str  # "class": the main object's class; "multilabel": visible classes; "scene": its type
    balance: str = "uniform"  # class list of "class"/"scene" labels: "uniform" or "pareto"
    alpha: float = 6.0  # Pareto power of the "pareto" balance (paper Sec. 3.2)
    scenes: str | None = None  # key of world.SCENE_FAMILIES (scene kind)
    objects: float = 0.75  # object kind: mean extra small objects; scene/street: mean objects drawn
    max_objects: int = 24
    radius: tuple[float, float] = (
        0.26,
        0.36,
    )  # object: main radius; scene/street: radius at depth 1
    depth: tuple[float, float] = (
        0.8,
        4.0,
    )  # scene/street: depth range of objects (uniform in 1 / depth)
    grounded: float = (
        0.7  # scene: fraction of objects standing on the ground plane (the rest anywhere)
    )
    background: str = "gradient"  # "gradient" | "layout" | "street"
    clutter: int = 0  # extra distractor patches (scene types add their own)
    noise: float = 0.02  # amplitude of uniform pixel noise
    centre_jitter: float = 0.08  # object kind: offset of the main object from the centre


VARIANTS: dict[str, VariantSpec] = {
    v.name: v
    for v in [
        # pretraining sets (Table 1)
        VariantSpec("object_uniform", "object", "world", "class"),  # IN-118K
        VariantSpec("object_lt", "object", "world", "class", balance="pareto"),  # IN-118K-LT
        VariantSpec(
            "scene_coco",
            "scene",
            "world",
            "multilabel",
            scenes="coco",
            objects=7.5,
            radius=(0.12, 0.17),
            background="layout",
            clutter=3,
        ),  # COCO: 7.3 visible objects/img
        VariantSpec(
            "scene_oi",
            "scene",
            "world",
            "multilabel",
            scenes="oi",
            objects=8.8,
            radius=(0.1, 0.14),
            depth=(0.8, 5.0),
            background="layout",
            clutter=5,
        ),  # OI: 8.4
        VariantSpec(
            "street",
            "street",
            "street",
            "multilabel",
            objects=5.5,
            radius=(0.1, 0.13),
            depth=(0.7, 6.0),
            background="street",
        ),  # BDD100K: monotonous, few classes
        # linear-classification targets (Table 2)
        VariantSpec(
            "cifar10",
            "object",
            "cifar10",
            "class",
            objects=0.0,
            radius=(0.22, 0.36),
            clutter=2,
            centre_jitter=0.12,
        ),
        VariantSpec("cars", "object", "cars", "class", objects=0.0, radius=(0.3, 0.38), clutter=2),
        VariantSpec(
            "food", "object", "food", "class", objects=0.0, radius=(0.5, 0.62), centre_jitter=0.05
        ),
        VariantSpec(
            "pets",
            "object",
            "pets",
            "class",
            objects=0.0,
            radius=(0.2, 0.36),
            clutter=3,
            centre_jitter=0.15,
        ),
        VariantSpec(
            "places",
            "scene",
            "world",
            "scene",
            scenes="places",
            objects=5.0,
            radius=(0.12, 0.17),
            background="layout",
        ),
        VariantSpec(
            "sun",
            "scene",
            "world",
            "scene",
            scenes="sun",
            objects=5.0,
            radius=(0.12, 0.17),
            background="layout",
        ),
        VariantSpec(
            "voc07",
            "scene",
            "voc",
            "multilabel",
            scenes="voc",
            objects=2.8,
            radius=(0.16, 0.22),
            depth=(0.8, 2.5),
            background="layout",
        ),  # VOC: ~2.4 objects/img, larger ones
        # dense transfer targets (Table 3): segmentation, depth
        VariantSpec(
            "cityscapes",
            "street",
            "street",
            "multilabel",
            objects=7.0,
            radius=(0.1, 0.13),
            depth=(0.7, 6.0),
            background="street",
        ),  # Cityscapes: street scenes like BDD100K's, busier; its own name, so its own images
        VariantSpec(
            "nyud",
            "scene",
            "world",
            "multilabel",
            scenes="coco",
            objects=6.0,
            radius=(0.15, 0.2),
            depth=(0.8, 4.0),
            grounded=0.8,
            background="layout",
            clutter=4,
        ),  # NYUD-v2: cluttered rooms (wall above, floor below), several objects at 0.8-4 depth units
        # video target (Tables 3, 5, 9): DAVIS-2017 clips follow 1-5 large salient objects (~2.5 per clip)
        VariantSpec(
            "davis",
            "scene",
            "world",
            "multilabel",
            scenes="coco",
            objects=2.5,
            max_objects=5,
            radius=(0.17, 0.24),
            depth=(0.8, 2.0),
            background="layout",
            clutter=2,
        ),
    ]
}


def get_variant(name: str) -> VariantSpec:
    """VARIANTS[name], or a ValueError listing the valid names and the closest one."""
    return lookup(VARIANTS, name, "bias-world variant")
