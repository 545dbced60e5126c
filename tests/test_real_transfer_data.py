"""Real transfer-dataset loaders, run on tiny trees written in each dataset's real on-disk format."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from transfer.data import (
    IGNORE_INDEX,
    TARGETS,
    load_dense,
    load_split,
    load_videos,
    target_defaults,
)
from transfer.real import CorruptImageError, DatasetLayoutError, load_classification
from transfer.real.classification import VOC_CLASSES
from transfer.real.common import holdout

S = 16  # evaluation size of the tests


def color(i: int) -> tuple[int, int, int]:
    return (10 + 7 * i % 240, 200 - 3 * i % 190, 50 + 11 * i % 200)


def write_jpeg(path: Path, i: int = 0, size: tuple[int, int] = (12, 10)) -> None:
    """A constant-colour image (so a resize keeps the colour: checks which file a sample came from)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color(i)).save(path, quality=100)


def write_label(path: Path, values: np.ndarray, palette: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8))
    if palette:
        image.putpalette([v for k in range(256) for v in (k, 255 - k, (7 * k) % 256)])
        assert image.mode == "P"
    image.save(path)


def spec(name: str, **kw) -> dict:
    base = (
        target_defaults(name) if name in TARGETS else {"name": name, "seed": 0}
    )  # imagenet: not a target yet
    return {**base, "source": "real", "image_size": S, **kw}


def mean_colour(images, i: int) -> tuple[int, ...]:
    return tuple(int(round(v)) for v in images[i].float().mean((1, 2)).tolist())


# --------------------------------------------------------------------------------------------------
# tree builders, one per real format


def make_cifar10(root: Path) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = {}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        ys = [(k * 3 + j) % 10 for j in range(4)]
        data = np.stack([np.full((3, 32, 32), 20 * k + j, np.uint8).reshape(-1) for j in range(4)])
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": ys, b"batch_label": name.encode()}, f)
        labels[name] = ys
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(10)]}, f)
    return labels


def cars_annotations(path: Path, rows: list[tuple[str, int]]) -> None:
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    ann = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, (fname, cls) in enumerate(rows):
        ann[0, i] = (np.array([[1]]), np.array([[2]]), np.array([[9]]), np.array([[8]]),
                     np.array([[cls]], dtype=np.uint8), np.array([fname]))  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"annotations": ann})


def make_cars(root: Path) -> None:
    train = [(f"{i:05d}.jpg", 1 + i % 4) for i in range(1, 11)]
    test = [(f"{i:05d}.jpg", 4 - i % 4) for i in range(1, 6)]
    cars_annotations(root / "devkit" / "cars_train_annos.mat", train)
    cars_annotations(root / "devkit" / "cars_test_annos_withlabels.mat", test)
    for i, (f, _) in enumerate(train):
        write_jpeg(root / "cars_train" / f, i)
    for i, (f, _) in enumerate(test):
        write_jpeg(root / "cars_test" / f, 50 + i)


FOOD_CLASSES = ["tacos", "apple_pie", "ramen"]  # classes.txt order, not alphabetical


def make_food(root: Path) -> None:
    base = root / "food-101"
    (base / "meta").mkdir(parents=True)
    (base / "meta" / "classes.txt").write_text("\n".join(FOOD_CLASSES) + "\n")
    for split, n in (("train", 4), ("test", 2)):
        listing = {c: [f"{c}/{split}{k}" for k in range(n)] for c in FOOD_CLASSES}
        (base / "meta" / f"{split}.json").write_text(json.dumps(listing))
        for c, ids in listing.items():
            for k, image_id in enumerate(ids):
                write_jpeg(base / "images" / f"{image_id}.jpg", k)


def make_pets(root: Path) -> None:
    (root / "annotations").mkdir(parents=True)
    for split, n in (("trainval", 10), ("test", 6)):
        rows = [(f"Breed{k % 3}_{split}{k}", 1 + k % 3) for k in range(n)]
        text = "".join(f"{name} {cls} {1 + cls % 2} {cls}\n" for name, cls in rows)
        (root / "annotations" / f"{split}.txt").write_text(text)
        for k, (name, _) in enumerate(rows):
            write_jpeg(root / "images" / f"{name}.jpg", k)


SUN_CLASSES = ["/b/bakery/shop", "/a/abbey", "/a/apartment_building/outdoor"]


def make_sun(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "ClassName.txt").write_text("\n".join(SUN_CLASSES) + "\n")
    (root / "Partitions").mkdir()
    for split, n in (("Training", 5), ("Testing", 2)):
        lines = [f"{c}/sun_{split}{k}.jpg" for c in SUN_CLASSES for k in range(n)]
        (root / "Partitions" / f"{split}_01.txt").write_text("\n".join(lines) + "\n")
        for k, line in enumerate(lines):
            write_jpeg(root / line.lstrip("/"), k)


def make_places(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    cats = ["/a/airfield", "/b/bar", "/c/canyon"]
    (root / "categories_places365.txt").write_text(
        "".join(f"{c} {i}\n" for i, c in enumerate(cats))
    )
    train = [(f"{c}/{k:08d}.jpg", i) for i, c in enumerate(cats) for k in range(1, 4)]
    (root / "places365_train_standard.txt").write_text("".join(f"{p} {i}\n" for p, i in train))
    val = [(f"Places365_val_{k:08d}.jpg", k % 3) for k in range(1, 5)]
    (root / "places365_val.txt").write_text("".join(f"{p} {i}\n" for p, i in val))
    for k, (p, _) in enumerate(train):
        write_jpeg(root / "data_256" / p.lstrip("/"), k)
    for k, (p, _) in enumerate(val):
        write_jpeg(root / "val_256" / p, k)


VOC07_SPLITS = {
    "train": ["000005", "000007"],
    "val": ["000009", "000012", "000016"],
    "test": ["000001", "000002"],
}


def make_voc07(root: Path) -> Path:
    base = root / "VOCdevkit" / "VOC2007"
    main = base / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for split, names in VOC07_SPLITS.items():
        for c, cls in enumerate(VOC_CLASSES):
            # image k: class k present (1), class k + 1 only difficult (0), others absent (-1)
            flags = ["1" if c == k else "0" if c == k + 1 else "-1" for k in range(len(names))]
            (main / f"{cls}_{split}.txt").write_text(
                "".join(f"{n} {f}\n" for n, f in zip(names, flags))
            )
        for k, n in enumerate(names):
            write_jpeg(base / "JPEGImages" / f"{n}.jpg", k)
    return root


def make_imagenet(root: Path) -> None:
    for c, wnid in enumerate(["n01440764", "n01443537"]):
        for k in range(5):
            write_jpeg(root / "train" / wnid / f"{wnid}_{k}.JPEG", k)
        write_jpeg(root / "val" / wnid / f"ILSVRC2012_val_{c:08d}.JPEG", 9)


CLASSIFICATION_TREES = {
    "cifar10": make_cifar10,
    "cars": make_cars,
    "food": make_food,
    "pets": make_pets,
    "places": make_places,
    "sun": make_sun,
    "voc07": make_voc07,
    "imagenet": make_imagenet,
}


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    roots = {}
    for name, make in CLASSIFICATION_TREES.items():
        root = tmp_path_factory.mktemp(name)
        make(root)
        roots[name] = str(root)
    return roots


# --------------------------------------------------------------------------------------------------
# contract over every linear target (and imagenet)


@pytest.mark.parametrize(
    "name", sorted({t.name for t in TARGETS.values() if t.linear} | {"imagenet"})
)
def test_every_classification_target_loads_resized_deterministic_splits(
    name: str, trees: dict
) -> None:
    assert name in CLASSIFICATION_TREES, f"no test tree for the linear target {name}"
    out = {
        split: load_classification(spec(name), split, trees) for split in ("train", "val", "test")
    }
    for split, (images, labels) in out.items():
        assert len(images) == len(labels) > 0, split
        batch = images[0:2]
        assert batch.dtype == torch.uint8 and batch.shape == (min(2, len(images)), 3, S, S)
        assert images[len(images) - 1].shape == (3, S, S)
        if name == "voc07":
            assert labels.dtype == np.uint8 and labels.shape == (len(images), 20)
        else:
            assert labels.dtype == np.int64 and labels.ndim == 1 and labels.min() >= 0
        again = load_classification(spec(name), split, trees)[1]
        np.testing.assert_array_equal(again, labels)
    if name != "voc07":  # holdout: val is 20% of the official train, train + val all of it
        n = len(out["train"][0]) + len(out["val"][0])
        assert len(out["val"][0]) == int(np.floor(0.2 * n))


def test_holdout_matches_ssl_transfer_and_partitions() -> None:
    for n, seed in ((50_000, 0), (37, 3)):
        indices = list(range(n))  # ssl-transfer linear.py: np.random.seed; np.random.shuffle(list)
        np.random.seed(seed)
        np.random.shuffle(indices)
        k = int(np.floor(0.2 * n))
        val, train = holdout(n, "val", seed), holdout(n, "train", seed)
        np.testing.assert_array_equal(val, sorted(indices[:k]))
        np.testing.assert_array_equal(train, sorted(indices[k:]))
    assert not set(holdout(100, "val", 1)) & set(holdout(100, "train", 1))
    assert not np.array_equal(holdout(100, "val", 1), holdout(100, "val", 2))


def test_cifar10_batches_labels_and_pixels(trees: dict) -> None:
    labels = {}
    folder = Path(trees["cifar10"]) / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "rb") as f:
            labels[name] = pickle.load(f, encoding="bytes")[b"labels"]
    images, y = load_classification(spec("cifar10"), "test", trees)
    assert y.tolist() == labels["test_batch"]
    assert mean_colour(images, 2) == (20 * 5 + 2,) * 3  # test_batch is k = 5, image j = 2
    all_train = sum((labels[f"data_batch_{i}"] for i in range(1, 6)), [])
    _, y_val = load_classification(spec("cifar10"), "val", trees)
    np.testing.assert_array_equal(y_val, np.asarray(all_train)[holdout(20, "val", 0)])
    _, y_val1 = load_classification(spec("cifar10", seed=1), "val", trees)
    assert len(y_val1) == 4


def test_cars_labels_from_devkit_mat(trees: dict) -> None:
    images, y = load_classification(spec("cars"), "test", trees)
    assert y.tolist() == [(4 - i % 4) - 1 for i in range(1, 6)]
    assert mean_colour(images, 1) == pytest.approx(color(51), abs=2)
    _, y_train = load_classification(spec("cars"), "train", trees)
    expected = np.asarray([i % 4 for i in range(1, 11)])[holdout(10, "train", 0)]
    np.testing.assert_array_equal(y_train, expected)


def test_food_pets_sun_places_imagenet_labels(trees: dict) -> None:
    _, food_test = load_classification(spec("food"), "test", trees)
    assert food_test.tolist() == [0, 0, 1, 1, 2, 2]  # classes.txt order
    _, pets_test = load_classification(spec("pets"), "test", trees)
    assert pets_test.tolist() == [k % 3 for k in range(6)]
    _, sun_test = load_classification(spec("sun"), "test", trees)
    order = sorted(SUN_CLASSES)  # label = index in the sorted ClassName.txt
    assert sun_test.tolist() == [order.index(c) for c in SUN_CLASSES for _ in range(2)]
    _, places_test = load_classification(spec("places"), "test", trees)
    assert places_test.tolist() == [k % 3 for k in range(1, 5)]
    images, imnet_test = load_classification(spec("imagenet"), "test", trees)
    assert imnet_test.tolist() == [0, 1] and mean_colour(images, 0) == pytest.approx(
        color(9), abs=2
    )


def test_voc07_official_splits_and_difficult_is_negative(trees: dict) -> None:
    for split, names in VOC07_SPLITS.items():
        images, y = load_classification(spec("voc07"), split, trees)
        assert len(images) == len(names)
        for k in range(len(names)):
            assert y[k].nonzero()[0].tolist() == [k]  # the difficult-only class k + 1 counts as 0


def test_dispatch_through_transfer_data(trees: dict) -> None:
    images, labels = load_split(spec("pets"), "val", None, trees)
    assert len(images) == len(labels) == 2 and images[:].shape == (2, 3, S, S)


# --------------------------------------------------------------------------------------------------
# malformed layouts and corrupt images


def test_missing_root_names_dataset_flag_and_layout(trees: dict) -> None:
    with pytest.raises(
        DatasetLayoutError, match=r"(?s)'sun'.*--data-root sun=.*ClassName.txt"
    ) as err:
        load_classification(spec("sun"), "train", {})
    assert "datasets.yaml" in str(err.value)
    with pytest.raises(DatasetLayoutError, match="not a folder"):
        load_classification(spec("sun"), "train", {"sun": "/nonexistent/sun"})
    with pytest.raises(DatasetLayoutError, match=r"--data-root davis="):
        load_videos(spec("davis"), "val", None, {})


def test_missing_split_file_and_malformed_files(tmp_path: Path) -> None:
    make_sun(tmp_path / "sun")
    (tmp_path / "sun" / "Partitions" / "Testing_01.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="Testing_01.txt"):
        load_classification(spec("sun"), "test", {"sun": str(tmp_path / "sun")})
    make_pets(tmp_path / "pets")
    (tmp_path / "pets" / "images" / "Breed1_test1.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match="Breed1_test1.jpg"):
        load_classification(spec("pets"), "test", {"pets": str(tmp_path / "pets")})
    (tmp_path / "cifar" / "cifar-10-batches-py").mkdir(parents=True)
    (tmp_path / "cifar" / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetLayoutError, match="test_batch"):
        load_classification(spec("cifar10"), "test", {"cifar10": str(tmp_path / "cifar")})
    make_cars(tmp_path / "cars")
    (tmp_path / "cars" / "devkit" / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(DatasetLayoutError, match="cars_test_annos_withlabels.mat"):
        load_classification(spec("cars"), "test", {"cars": str(tmp_path / "cars")})


def test_corrupt_image_is_reported_with_its_path_not_skipped(tmp_path: Path) -> None:
    make_pets(tmp_path)
    bad = tmp_path / "images" / "Breed2_test2.jpg"
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="JPEG")
    bad.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    images, labels = load_classification(spec("pets"), "test", {"pets": str(tmp_path)})
    assert len(images) == len(labels) == 6  # listed, not dropped
    assert images[0].shape == (3, S, S)
    with pytest.raises(CorruptImageError, match=str(bad)):
        images[0:6]


# --------------------------------------------------------------------------------------------------
# dense targets


def seg_values(k: int, shape: tuple[int, int] = (6, 8)) -> np.ndarray:
    """Label map of image k: class 1 + k % 20 on the left half, background right, a 255 border column."""
    values = np.zeros(shape, np.uint8)
    values[:, : shape[1] // 2] = 1 + k % 20
    values[:, shape[1] // 2] = 255
    return values


VOC12 = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033", "2007_000042"]}
SBD = {
    "train": ["2008_000002", "2007_000033"],
    "val": ["2008_000003"],
}  # 2007_000033: VOC val, excluded


def make_voc12(root: Path, aug: bool) -> Path:
    base = root / "VOCdevkit" / "VOC2012"
    sets = base / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    names = sorted({n for v in (*VOC12.values(), *SBD.values()) for n in v})
    for k, n in enumerate(names):
        write_jpeg(base / "JPEGImages" / f"{n}.jpg", k, size=(8, 6))
    for split, ns in VOC12.items():
        (sets / f"{split}.txt").write_text("\n".join(ns) + "\n")
        for n in ns:
            write_label(base / "SegmentationClass" / f"{n}.png", seg_values(names.index(n)))
    train_aug = sorted(
        (set(VOC12["train"]) | set(SBD["train"]) | set(SBD["val"])) - set(VOC12["val"])
    )
    if aug:  # the DeepLab layout: gray PNGs + a list of 'image label' paths
        (sets / "train_aug.txt").write_text(
            "".join(f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n" for n in train_aug)
        )
        for n in train_aug:
            write_label(
                base / "SegmentationClassAug" / f"{n}.png",
                seg_values(names.index(n)),
                palette=False,
            )
    else:  # SBD benchmark_RELEASE next to it
        sbd = root / "benchmark_RELEASE" / "dataset"
        (sbd / "cls").mkdir(parents=True)
        for split, ns in SBD.items():
            (sbd / f"{split}.txt").write_text("\n".join(ns) + "\n")
            for n in ns:
                seg = np.where(
                    seg_values(names.index(n)) == 255, 0, seg_values(names.index(n))
                )  # no borders
                savemat(
                    sbd / "cls" / f"{n}.mat",
                    {"GTcls": {"Segmentation": seg, "CategoriesPresent": [1]}},
                )
    return root


@pytest.mark.parametrize("aug", [True, False], ids=["SegmentationClassAug", "SBD"])
def test_voc12_seg_train_aug_and_val_borders(aug: bool, tmp_path: Path) -> None:
    roots = {"voc12_seg": str(make_voc12(tmp_path, aug))}
    names = sorted({n for v in (*VOC12.values(), *SBD.values()) for n in v})
    train = load_dense(spec("voc12_seg"), "train", None, roots)
    expected = sorted({"2007_000032", "2007_000039", "2008_000002", "2008_000003"})
    assert len(train.images) == len(train.class_mask) == len(expected) and train.num_classes == 21
    for i, n in enumerate(expected):
        mask = train.class_mask[i]
        assert (
            mask.dtype == torch.int64
            and mask.shape == (6, 8)
            and train.images[i].shape == (3, 6, 8)
        )
        assert mask[0, 0] == 1 + names.index(n) % 20 and mask[0, 7] == 0
        from_voc = aug or n in VOC12["train"]  # SBD .mat labels have no borders
        assert mask[0, 4] == (IGNORE_INDEX if from_voc else 0)
    val = load_dense(spec("voc12_seg"), "val", None, roots)
    assert len(val.images) == 2 and val.class_names[0] == "background"
    assert (
        val.class_mask[1][:, 4] == IGNORE_INDEX
    ).all()  # palette index 255 = border, kept as ignore
    assert val.class_mask[1][0, 0] == 1 + names.index("2007_000042") % 20
    assert mean_colour(val.images, 0) == pytest.approx(color(names.index("2007_000033")), abs=2)


def test_voc12_seg_without_train_aug_source_fails(tmp_path: Path) -> None:
    make_voc12(tmp_path, aug=False)
    import shutil

    shutil.rmtree(tmp_path / "benchmark_RELEASE")
    with pytest.raises(DatasetLayoutError, match="SegmentationClassAug/ or SBD"):
        load_dense(spec("voc12_seg"), "train", None, {"voc12_seg": str(tmp_path)})


def make_cityscapes(root: Path) -> np.ndarray:
    ids = np.arange(48, dtype=np.uint8).reshape(6, 8)  # every label id 0..33 (and a few beyond)
    for split, cities in (("train", ["aachen", "bochum"]), ("val", ["frankfurt"])):
        for city in cities:
            for k in range(2):
                stem = f"{city}_{k:06d}_000019"
                write_jpeg(
                    root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", k, size=(8, 6)
                )
                write_label(
                    root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
                    ids,
                    palette=False,
                )
    return ids


def test_cityscapes_label_ids_map_to_19_train_ids(tmp_path: Path) -> None:
    ids = make_cityscapes(tmp_path)
    roots = {"cityscapes": str(tmp_path)}
    train = load_dense(spec("cityscapes"), "train", None, roots)
    val = load_dense(spec("cityscapes"), "val", None, roots)
    assert len(train.images) == 4 and len(val.images) == 2 and train.num_classes == 19
    mask = train.class_mask[0].numpy()
    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
    for label_id in range(48):
        assert mask[ids == label_id].item() == expected.get(label_id, IGNORE_INDEX), label_id
    assert train.class_names[13] == "car" and sorted(set(mask.ravel())) == [*range(19), 255]


def test_cityscapes_missing_label_names_the_file(tmp_path: Path) -> None:
    make_cityscapes(tmp_path)
    missing = (
        tmp_path / "gtFine" / "val" / "frankfurt" / "frankfurt_000001_000019_gtFine_labelIds.png"
    )
    missing.unlink()
    with pytest.raises(DatasetLayoutError, match=missing.name):
        load_dense(spec("cityscapes"), "val", None, {"cityscapes": str(tmp_path)})


NYUD = {"train": ["000002", "000003", "000004"], "val": ["000001", "000005"]}


def make_nyud(root: Path, npy: bool = False) -> None:
    for split, names in NYUD.items():
        (root / f"{split}.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
        for n in names:
            k = int(n)
            write_jpeg(root / "images" / f"{n}.png", k, size=(8, 6))
            seg = np.full((6, 8), k, np.uint8)
            seg[0] = 0  # unlabelled row
            seg[1] = 40
            write_label(root / "segmentation" / f"{n}.png", seg, palette=False)
            mm = np.full((6, 8), 1000 * k + 250, np.uint16)
            mm[2] = 0  # invalid
            (root / "depth").mkdir(exist_ok=True)
            if npy:  # float metres
                np.save(root / "depth" / f"{n}.npy", mm.astype(np.float32) / 1000.0)
            else:  # uint16 millimetres
                Image.fromarray(mm).save(root / "depth" / f"{n}.png")


@pytest.mark.parametrize("npy", [False, True], ids=["png-mm", "npy-metres"])
def test_nyud_depth_in_metres_and_seg_ignore(npy: bool, tmp_path: Path) -> None:
    make_nyud(tmp_path, npy)
    roots = {"nyud_seg": str(tmp_path), "nyud_depth": str(tmp_path)}
    for split, names in NYUD.items():
        depth = load_dense(spec("nyud_depth"), split, None, roots)
        assert len(depth.images) == len(depth.depth) == len(names)
        d = depth.depth[0]
        assert d.dtype == torch.float32 and d.shape == (6, 8)
        assert d[0, 0].item() == pytest.approx(int(names[0]) + 0.25) and (d[2] == 0).all()
    seg = load_dense(spec("nyud_seg"), "val", None, roots)
    assert seg.num_classes == 40 and len(seg.class_names) == 40
    mask = seg.class_mask[1]  # image 000005: label 5 -> class 4
    assert (mask[0] == IGNORE_INDEX).all() and (mask[1] == 39).all() and (mask[3] == 4).all()


def test_nyud_official_mat_needs_h5py_or_conversion(tmp_path: Path) -> None:
    (tmp_path / "nyu_depth_v2_labeled.mat").write_bytes(b"\x89HDF\r\n")
    savemat(
        tmp_path / "splits.mat",
        {"trainNdxs": np.arange(1, 4)[:, None], "testNdxs": np.array([[4]])},
    )
    with pytest.raises(DatasetLayoutError, match="(?s)894-class.*segmentation/"):
        load_dense(spec("nyud_seg"), "train", None, {"nyud_seg": str(tmp_path)})
    try:
        import h5py  # noqa: F401
    except ImportError:
        with pytest.raises(DatasetLayoutError, match="(?s)h5py.*convert"):
            load_dense(spec("nyud_depth"), "train", None, {"nyud_depth": str(tmp_path)})


def test_nyud_missing_split_file(tmp_path: Path) -> None:
    make_nyud(tmp_path)
    (tmp_path / "val.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="val.txt"):
        load_dense(spec("nyud_seg"), "val", None, {"nyud_seg": str(tmp_path)})


def voc_xml(objects: list[tuple[str, int, tuple[int, int, int, int]]]) -> str:
    body = "".join(
        f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated><difficult>{d}</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, d, b in objects
    )
    return f"<annotation><folder>VOC</folder><size><width>8</width><height>6</height></size>{body}</annotation>"


VOC_DET = {("2007", "trainval"): ["000005", "000007"], ("2007", "test"): ["000001"],
           ("2012", "trainval"): ["2008_000008"]}  # fmt: skip


def make_voc_det(root: Path) -> None:
    for (year, image_set), names in VOC_DET.items():
        base = root / "VOCdevkit" / f"VOC{year}"
        (base / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (base / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(names) + "\n")
        for k, n in enumerate(names):
            write_jpeg(base / "JPEGImages" / f"{n}.jpg", k, size=(8, 6))
            objects = [("dog", 0, (1, 2, 8, 6)), ("person", 1, (3 + k, 1, 5, 4))]
            (base / "Annotations").mkdir(exist_ok=True)
            (base / "Annotations" / f"{n}.xml").write_text(voc_xml(objects[: 1 + (n != "000007")]))


def test_voc_det_boxes_zero_based_with_difficult_flags(tmp_path: Path) -> None:
    make_voc_det(tmp_path)
    roots = {"voc_det": str(tmp_path)}
    train = load_dense(spec("voc_det"), "train", None, roots)
    assert (
        len(train.images) == len(train.boxes) == 3 and train.num_classes == 20
    )  # 07 trainval + 12 trainval
    assert train.class_names == VOC_CLASSES
    np.testing.assert_array_equal(train.boxes[0].numpy(), [[0, 1, 8, 6], [2, 0, 5, 4]])
    assert train.boxes[0].dtype == torch.float32
    assert train.box_labels[0].tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]
    assert train.box_difficult[0].tolist() == [False, True]
    assert len(train.boxes[1]) == 1  # 000007: one object
    test = load_dense(spec("voc_det"), "test", None, roots)
    assert len(test.images) == 1 and test.images[0].shape == (3, 6, 8)


def test_voc_det_malformed_annotation_and_missing_2012(tmp_path: Path) -> None:
    make_voc_det(tmp_path)
    bad = tmp_path / "VOCdevkit" / "VOC2007" / "Annotations" / "000001.xml"
    bad.write_text(voc_xml([("unicorn", 0, (1, 1, 2, 2))]))
    with pytest.raises(DatasetLayoutError, match="000001.xml"):
        load_dense(spec("voc_det"), "test", None, {"voc_det": str(tmp_path)})
    import shutil

    shutil.rmtree(tmp_path / "VOCdevkit" / "VOC2012")
    with pytest.raises(DatasetLayoutError, match="VOC2012"):
        load_dense(spec("voc_det"), "train", None, {"voc_det": str(tmp_path)})


# --------------------------------------------------------------------------------------------------
# DAVIS-2017


def make_davis(root: Path) -> None:
    seqs = {"train": ["bear"], "val": ["blackswan", "bike-packing"]}
    (root / "ImageSets" / "2017").mkdir(parents=True)
    for split, names in seqs.items():
        (root / "ImageSets" / "2017" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for s, seq in enumerate(names):
            for t in range(3 + s):
                write_jpeg(root / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg", t, size=(8, 6))
                ids = np.zeros((6, 8), np.uint8)
                ids[:, t : t + 2] = 1
                ids[0, :] = 2 if s else 0
                write_label(root / "Annotations" / "480p" / seq / f"{t:05d}.png", ids)


def test_davis_clips_frames_and_instance_ids(tmp_path: Path) -> None:
    make_davis(tmp_path)
    videos = load_videos(spec("davis"), "val", None, {"davis": str(tmp_path)})
    assert len(videos) == 2
    clip = videos[1]
    assert (
        clip.name == "bike-packing"
        and clip.frames.shape == (4, 3, 6, 8)
        and clip.frames.dtype == torch.uint8
    )
    assert clip.masks.shape == (4, 6, 8) and clip.masks.dtype == torch.int64
    assert sorted(clip.masks.unique().tolist()) == [0, 1, 2]
    assert (clip.masks[2, 1:, 2:4] == 1).all() and (clip.masks[2, 1:, 4:] == 0).all()
    assert tuple(clip.frames[1].float().mean((1, 2)).round().int().tolist()) == pytest.approx(
        color(1), abs=2
    )
    assert [
        v.name for v in load_videos(spec("davis"), "train", None, {"davis": str(tmp_path)})
    ] == ["bear"]


def test_davis_missing_annotation_names_it(tmp_path: Path) -> None:
    make_davis(tmp_path)
    missing = tmp_path / "Annotations" / "480p" / "blackswan" / "00002.png"
    missing.unlink()
    with pytest.raises(DatasetLayoutError, match="blackswan/00002.png"):
        load_videos(spec("davis"), "val", None, {"davis": str(tmp_path)})


def test_dense_contract_over_every_dense_target(tmp_path: Path) -> None:
    """Every non-linear target has a real loader whose splits index images and targets alike."""
    builders = {
        "voc12_seg": lambda r: make_voc12(r, True),
        "cityscapes": make_cityscapes,
        "nyud_seg": make_nyud,
        "nyud_depth": make_nyud,
        "voc_det": make_voc_det,
        "davis": make_davis,
    }
    # dense and video targets: every non-linear one except the classification targets of main_lincls (top-1)
    assert set(builders) == {t.name for t in TARGETS.values() if not t.linear and t.metric != "top1"}
    for name, make in builders.items():
        make(tmp_path / name)
        roots = {name: str(tmp_path / name)}
        for split in ("train", "val", "test"):
            if name == "davis":
                assert len(load_videos(spec(name), split, None, roots)) > 0
                continue
            dense = load_dense(spec(name), split, None, roots)
            targets = (
                dense.class_mask
                if dense.class_mask is not None
                else dense.depth if dense.depth is not None else dense.boxes
            )
            assert len(dense.images) == len(targets) > 0, (name, split)
            assert all(img.dtype == torch.uint8 and img.shape[0] == 3 for img in dense.images[0:2])
