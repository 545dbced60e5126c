"""The bias world: determinism, prefix stability, cache, Table 1 statistics, dense outputs."""

from __future__ import annotations

import numpy as np
import pytest

from pretrain.data.biasworld import (
    VARIANTS,
    BiasWorldSet,
    cache_path,
    generate,
    get_variant,
    video,
)
from pretrain.data.longtail import pareto_class_sizes

SCENES = ("scene_coco", "scene_oi", "street", "voc07", "places")


def same(a: BiasWorldSet, b: BiasWorldSet) -> bool:
    dense = (
        a.dense is None
        and b.dense is None
        or all(np.array_equal(a.dense[k], b.dense[k]) for k in a.dense)
    )
    return (
        np.array_equal(a.images, b.images)
        and np.array_equal(a.labels, b.labels)
        and dense
        and a.objects.keys() == b.objects.keys()
        and all(np.array_equal(a.objects[k], b.objects[k]) for k in a.objects)
    )


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_regenerates_bit_identically(name: str) -> None:
    a, b = generate(name, n=4, size=32, seed=3), generate(name, n=4, size=32, seed=3)
    assert a.images.shape == (4, 32, 32, 3) and a.images.dtype == np.uint8
    assert same(a, b)
    assert a.images.std() > 10  # not blank
    other = generate(name, n=4, size=32, seed=4)
    assert not np.array_equal(a.images, other.images)


def test_splits_are_independent_streams() -> None:
    train, val = generate("cifar10", "train", n=10, size=32), generate(
        "cifar10", "val", n=10, size=32
    )
    assert not any(np.array_equal(x, y) for x in train.images for y in val.images)


@pytest.mark.parametrize("name", ["scene_coco", "street", "object_uniform", "sun"])
def test_first_images_do_not_change_when_n_grows(name: str) -> None:
    small, big = generate(name, n=5, size=32), generate(name, n=70, size=32)
    assert np.array_equal(small.images, big.images[:5]) and np.array_equal(
        small.labels, big.labels[:5]
    )


def test_cache_round_trip_equals_fresh(tmp_path) -> None:
    cached = generate("scene_oi", "val", n=6, size=32, seed=1, dense=True, cache_dir=tmp_path)
    path = cache_path(get_variant("scene_oi"), "val", 6, 32, 1, True, tmp_path)
    assert path.exists() and [p.name for p in tmp_path.iterdir()] == [
        path.name
    ]  # no temporary file left
    loaded = generate("scene_oi", "val", n=6, size=32, seed=1, dense=True, cache_dir=tmp_path)
    fresh = generate("scene_oi", "val", n=6, size=32, seed=1, dense=True)
    assert same(loaded, fresh) and same(cached, fresh)
    assert (
        loaded.class_names == fresh.class_names
        and loaded.multilabel
        and np.array_equal(loaded.scene, fresh.scene)
    )
    assert cache_path(get_variant("scene_oi"), "val", 7, 32, 1, True, tmp_path) != path


@pytest.mark.parametrize(
    "name,target,tol",
    [
        ("scene_coco", 7.3, 1.5),
        ("scene_oi", 8.4, 1.5),
        ("object_uniform", 1.5, 0.45),
        ("object_lt", 1.5, 0.45),
    ],
)
def test_objects_per_image_match_table1(name: str, target: float, tol: float) -> None:
    world = generate(name, n=120, size=64)
    assert abs(world.objects_per_image() - target) <= tol
    if name.startswith("object"):
        assert world.objects_per_image() < 2
        main = (
            world.objects["depth"] == 1.0
        )  # the dominant object stands at depth 1, small extras anywhere
        assert np.array_equal(world.objects["image"][main], np.arange(120))
        assert np.array_equal(world.objects["class"][main], world.labels)


def test_long_tailed_counts_are_pareto_class_sizes() -> None:
    world = generate("object_lt", n=300, size=32, seed=5)
    sizes = pareto_class_sizes(world.num_classes, 300, alpha=6.0, seed=5)
    assert np.array_equal(np.bincount(world.labels, minlength=world.num_classes), sizes)
    assert sizes.max() >= 5 * sizes.min()  # really long-tailed


@pytest.mark.parametrize("name,n", [("object_uniform", 130), ("cifar10", 25), ("places", 30)])
def test_uniform_counts_differ_by_at_most_one(name: str, n: int) -> None:
    counts = np.bincount(generate(name, n=n, size=32).labels, minlength=get_num(name))
    assert counts.max() - counts.min() <= 1 and counts.sum() == n


def get_num(name: str) -> int:
    return generate(name, n=1, size=32).num_classes


@pytest.mark.parametrize("name", SCENES + ("object_uniform",))
def test_dense_masks_agree_with_boxes_and_labels(name: str) -> None:
    world = generate(name, n=8, size=48, dense=True)
    inst, cls_mask, obj = world.dense["instance_mask"], world.dense["class_mask"], world.objects
    assert (
        inst.dtype == np.int16
        and cls_mask.dtype == np.int16
        and world.dense["depth"].shape == inst.shape
    )
    assert (world.dense["depth"] > 0).all()
    for i in range(len(world.images)):
        rows = np.flatnonzero(obj["image"] == i)
        assert set(np.unique(inst[i])) - {0} == set(
            obj["instance"][rows].tolist()
        )  # every visible one listed
        lut = np.zeros(inst[i].max() + 1, np.int16)
        lut[obj["instance"][rows]] = obj["class"][rows] + 1
        assert np.array_equal(cls_mask[i], lut[inst[i]])  # class_mask = class of instance_mask
        for r in rows:
            ys, xs = np.nonzero(inst[i] == obj["instance"][r])
            assert tuple(obj["box"][r]) == (
                xs.min(),
                ys.min(),
                xs.max() + 1,
                ys.max() + 1,
            )  # tight xyxy box
        assert ((obj["visible"][rows] > 0) & (obj["visible"][rows] <= 1)).all()


@pytest.mark.parametrize("name", ["scene_coco", "street", "voc07"])
def test_multilabel_labels_are_the_visible_classes(name: str) -> None:
    world = generate(name, n=10, size=32, dense=True)
    assert (
        world.multilabel
        and world.labels.shape == (10, world.num_classes)
        and world.labels.dtype == np.uint8
    )
    for i in range(10):
        visible = set(np.unique(world.dense["class_mask"][i]).tolist()) - {0}
        assert set((np.flatnonzero(world.labels[i]) + 1).tolist()) == visible


def test_scenes_are_occluded_and_long_tailed() -> None:
    world = generate("scene_coco", n=100, size=64)
    assert (
        world.objects["visible"] < 0.5
    ).mean() > 0.05  # painter's algorithm hides parts of objects
    freq = np.bincount(world.objects["class"], minlength=world.num_classes) / len(
        world.objects["class"]
    )
    assert freq.argmax() == 0 and freq[0] > 0.15  # the person-like class dominates, as in COCO


@pytest.mark.parametrize("size", [32, 256])
def test_renders_at_the_extreme_sizes(size: int) -> None:
    world = generate("scene_coco", n=1, size=size, dense=True)
    assert world.images.shape == (1, size, size, 3) and world.dense["class_mask"].shape == (
        1,
        size,
        size,
    )


def test_unknown_name_lists_valid_and_closest() -> None:
    with pytest.raises(ValueError, match="Did you mean 'scene_coco'.*object_uniform"):
        generate("scene_cocoo", n=1)
    with pytest.raises(ValueError, match="unknown split"):
        generate("cifar10", split="training", n=1)


def test_video_objects_move_and_keep_their_instance_ids() -> None:
    clips = video("scene_coco", n=3, frames=4, size=32, seed=2)
    assert clips.frames.shape == (3, 4, 32, 32, 3) and clips.instance_masks.shape == (3, 4, 32, 32)
    assert np.array_equal(clips.frames, video("scene_coco", n=3, frames=4, size=32, seed=2).frames)
    assert not np.array_equal(clips.instance_masks[:, 0], clips.instance_masks[:, -1])  # they moved
    for i in range(3):
        ids = np.unique(clips.instance_masks[i])[1:]
        assert (
            clips.classes[i, ids - 1] >= 0
        ).all()  # every painted id is a listed object of the clip
    with pytest.raises(ValueError, match="scene variant"):
        video("cifar10", n=1)
