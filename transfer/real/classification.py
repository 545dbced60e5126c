"""Real datasets of the linear classification protocol (Table 2; A.2, after ssl-transfer).

Every loader returns (images, labels): images a lazy sequence (real sets do not fit in memory) whose
slices are uint8 (n, 3, S, S), each image resized to S x S (S = spec["image_size"], 224 in the paper);
labels int64 (N,), or uint8 (N, 20) for VOC07.

Splits (provenance; ssl-transfer = linusericsson/ssl-transfer, `linear.py` and `datasets/`):
    cifar10  train/val: the 50,000 images of data_batch_1..5 (in that order), val = first
             floor(0.2 N) = 10,000 of a shuffle seeded by spec seed (0 = ssl-transfer's random_seed),
             train = the rest (holdout() below: ssl-transfer's draws). test: test_batch.
    cars     train/val: 20% holdout of devkit/cars_train_annos.mat (8,144 images, annotation order);
             test: cars_test_annos_withlabels.mat (8,041). Labels: the 'class' field (1..196) - 1.
    food     train/val: 20% holdout of food-101/meta/train.json (75,750), classes.txt order, then each
             class's json order, as ssl-transfer builds it; test: meta/test.json (25,250).
    pets     train/val: 20% holdout of annotations/trainval.txt (3,680); test: annotations/test.txt
             (3,669). Labels: the CLASS-ID column (1..37) - 1. The metric (mean per-class accuracy) is
             the task's, not the loader's.
    places   Places365-Standard (not in ssl-transfer; same rule): train/val: 20% holdout of
             places365_train_standard.txt (1,803,460); test: the official val (36,500,
             places365_val.txt). Labels: the list files' class column.
    sun      SUN397, first partition as ssl-transfer (split '01'): train/val: 20% holdout of
             Training_01.txt (19,850); test: Testing_01.txt (19,850). Labels: index of the image's
             class folder (e.g. /a/apartment_building/outdoor) in the sorted ClassName.txt.
    voc07    PASCAL VOC2007's official splits, as ssl-transfer (its 'predefined validation set'):
             train = ImageSets/Main train (2,501), val = val (2,510), test = test (4,952). Labels from
             the per-class files <class>_<split>.txt: 1 -> 1, and -1 (absent) and 0 ('difficult':
             the class appears only as difficult objects) -> 0, as ssl-transfer's `target == 1`.
    imagenet ImageNet-1k (for a target named 'imagenet'): train/val: 20% holdout of train/<wnid>/
             (sorted wnids, then sorted file names); test: the official val/<wnid>/*.JPEG.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from transfer.real.common import (
    DatasetLayoutError,
    ResizedImages,
    dataset_root,
    first_existing,
    holdout,
    image_files,
    layout_error,
    read_lines,
    require_files,
)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip

Files = tuple[list[Path], np.ndarray]  # (image paths, int64 labels) of one official split


def _holdout_split(files: Files, split: str, seed: int) -> Files:
    """train/val of ssl-transfer's 20% holdout of an official train split."""
    paths, labels = files
    keep = holdout(len(paths), split, seed)
    return [paths[i] for i in keep], labels[keep]


def _labelled(paths: list[Path], labels: list[int], layout: str, what: str) -> Files:
    require_files(paths, layout, what)
    return paths, np.asarray(labels, dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# CIFAR-10 (python pickled batches, as torchvision.datasets.CIFAR10)

CIFAR10_LAYOUT = """\
  <root>/cifar-10-batches-py/      (or <root> itself)
    data_batch_1 ... data_batch_5  pickled dicts {b'data': uint8 (10000, 3072), b'labels': [...]}
    test_batch
    batches.meta"""


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise layout_error(path.parent, CIFAR10_LAYOUT, f"cifar10: batch file {path} is missing")
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
        assert len(data) == len(labels), f"{len(data)} images, {len(labels)} labels"
    except (
        OSError,
        pickle.UnpicklingError,
        EOFError,
        KeyError,
        ValueError,
        TypeError,
        AssertionError,
    ) as err:
        raise DatasetLayoutError(
            f"cifar10: {path} is not a CIFAR-10 python batch ({err!r}); expected a pickled dict with "
            f"b'data' (N, 3072) uint8 and b'labels'"
        ) from err
    return data.transpose(0, 2, 3, 1), labels  # (N, 32, 32, 3) HWC for PIL


def cifar10(root: Path, split: str, size: int, seed: int) -> tuple[ResizedImages, np.ndarray]:
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    batches = [_cifar_batch(folder / name) for name in names]
    data = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    if split != "test":
        keep = holdout(len(data), split, seed)
        data, labels = data[keep], labels[keep]
    return ResizedImages(len(data), lambda i: Image.fromarray(data[i]), size), labels


# --------------------------------------------------------------------------------------------------
# Stanford Cars (devkit .mat annotations)

CARS_LAYOUT = """\
  <root>/
    cars_train/00001.jpg ...
    cars_test/00001.jpg ...
    devkit/cars_train_annos.mat            struct 'annotations': bbox_x1..bbox_y2, class (1..196), fname
    devkit/cars_test_annos_withlabels.mat  (the test annotations with labels; also accepted in <root>)"""


def cars(root: Path, split: str) -> Files:
    from scipy.io import loadmat

    name = "cars_test_annos_withlabels.mat" if split == "test" else "cars_train_annos.mat"
    mat = first_existing(root, (f"devkit/{name}", name), CARS_LAYOUT, "cars annotations", dir=False)
    try:
        annotations = loadmat(mat)["annotations"].ravel()
        fnames = [str(np.ravel(a["fname"])[0]) for a in annotations]
        classes = [int(np.ravel(a["class"])[0]) for a in annotations]
    except (ValueError, KeyError, IndexError, TypeError, NotImplementedError) as err:
        raise DatasetLayoutError(
            f"cars: {mat} is not a Stanford Cars annotation file ({err!r}); expected a struct array "
            f"'annotations' with fields 'class' and 'fname'"
        ) from err
    folder = root / ("cars_test" if split == "test" else "cars_train")
    return _labelled([folder / f for f in fnames], [c - 1 for c in classes], CARS_LAYOUT, "cars")


# --------------------------------------------------------------------------------------------------
# Food-101

FOOD_LAYOUT = """\
  <root>/food-101/                 (or <root> itself)
    images/apple_pie/1005649.jpg ...
    meta/classes.txt               one class per line (label = line index)
    meta/train.json, meta/test.json  {"apple_pie": ["apple_pie/1005649", ...], ...}"""


def food(root: Path, split: str) -> Files:
    base = root / "food-101" if (root / "food-101").is_dir() else root
    classes = read_lines(base / "meta" / "classes.txt", FOOD_LAYOUT, "food classes")
    path = base / "meta" / ("test.json" if split == "test" else "train.json")
    if not path.is_file():
        raise layout_error(path.parent, FOOD_LAYOUT, f"food: split file {path} is missing")
    try:
        per_class = json.loads(path.read_text())
        items = [
            (base / "images" / f"{image_id}.jpg", c)
            for c, name in enumerate(classes)
            for image_id in per_class[name]
        ]
    except (ValueError, KeyError, TypeError) as err:
        raise DatasetLayoutError(
            f"food: {path} does not list every class of classes.txt ({err!r})"
        ) from err
    return _labelled([p for p, _ in items], [c for _, c in items], FOOD_LAYOUT, "food")


# --------------------------------------------------------------------------------------------------
# Oxford-IIIT Pets

PETS_LAYOUT = """\
  <root>/
    images/Abyssinian_100.jpg ...
    annotations/trainval.txt, annotations/test.txt   'Image CLASS-ID SPECIES BREED-ID' per line"""


def pets(root: Path, split: str) -> Files:
    path = root / "annotations" / ("test.txt" if split == "test" else "trainval.txt")
    rows = [
        line.split() for line in read_lines(path, PETS_LAYOUT, "pets") if not line.startswith("#")
    ]
    if any(len(r) < 2 or not r[1].isdigit() for r in rows):
        raise layout_error(path.parent, PETS_LAYOUT, f"pets: {path} has lines without a CLASS-ID")
    paths = [root / "images" / f"{r[0]}.jpg" for r in rows]
    return _labelled(paths, [int(r[1]) - 1 for r in rows], PETS_LAYOUT, "pets")


# --------------------------------------------------------------------------------------------------
# Places365-Standard

PLACES_LAYOUT = """\
  <root>/
    categories_places365.txt        '/a/airfield 0' per line
    places365_train_standard.txt    '/a/airfield/00000001.jpg 0' per line
    places365_val.txt               'Places365_val_00000001.jpg 165' per line
    data_256/ (or data_256_standard/, data_large/, data_large_standard/)   train images: a/airfield/...
    val_256/  (or val_large/)                                              val images"""


def places(root: Path, split: str) -> Files:
    if split == "test":
        listing = root / "places365_val.txt"
        folder = first_existing(root, ("val_256", "val_large"), PLACES_LAYOUT, "places val images")
    else:
        listing = root / "places365_train_standard.txt"
        folder = first_existing(
            root,
            ("data_256", "data_256_standard", "data_large", "data_large_standard"),
            PLACES_LAYOUT,
            "places train images",
        )
    rows = [line.split() for line in read_lines(listing, PLACES_LAYOUT, "places")]
    if any(len(r) != 2 or not r[1].isdigit() for r in rows):
        raise layout_error(
            root, PLACES_LAYOUT, f"places: {listing} has lines other than 'path class'"
        )
    paths = [folder / r[0].lstrip("/") for r in rows]
    return _labelled(paths, [int(r[1]) for r in rows], PLACES_LAYOUT, "places")


# --------------------------------------------------------------------------------------------------
# SUN397

SUN_LAYOUT = """\
  <root>/                                   (or <root>/SUN397/)
    ClassName.txt                           '/a/abbey' per line (397 lines)
    a/abbey/sun_aaalbzqrimafwbiv.jpg ...
    Partitions/Training_01.txt, Partitions/Testing_01.txt   '/a/abbey/sun_....jpg' per line
      (also accepted in <root>, as ssl-transfer keeps them)"""


def sun(root: Path, split: str) -> Files:
    base = root / "SUN397" if (root / "SUN397" / "ClassName.txt").is_file() else root
    classes = sorted(read_lines(base / "ClassName.txt", SUN_LAYOUT, "sun classes"))
    index = {c: i for i, c in enumerate(classes)}
    name = "Testing_01.txt" if split == "test" else "Training_01.txt"
    listing = first_existing(
        base,
        (f"Partitions/{name}", name, f"../Partitions/{name}"),
        SUN_LAYOUT,
        "sun partition",
        dir=False,
    )
    lines = read_lines(listing, SUN_LAYOUT, "sun")
    unknown = [line for line in lines if str(PurePosixPath(line).parent) not in index]
    if unknown:
        raise layout_error(
            base,
            SUN_LAYOUT,
            f"sun: {listing} lists images of classes not in ClassName.txt, e.g. {unknown[0]}",
        )
    paths = [base / line.lstrip("/") for line in lines]
    return _labelled(
        paths, [index[str(PurePosixPath(line).parent)] for line in lines], SUN_LAYOUT, "sun"
    )


# --------------------------------------------------------------------------------------------------
# ImageNet-1k (train/val folders)

IMAGENET_LAYOUT = """\
  <root>/
    train/n01440764/n01440764_10026.JPEG ...   one folder per wnid
    val/n01440764/ILSVRC2012_val_00000293.JPEG ...   the official val, sorted into wnid folders"""


def imagenet(root: Path, split: str) -> Files:
    train = first_existing(root, ("train",), IMAGENET_LAYOUT, "imagenet train")
    wnids = sorted(d.name for d in train.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not wnids:
        raise layout_error(train, IMAGENET_LAYOUT, "imagenet: no class folders in train/")
    folder = (
        train
        if split != "test"
        else first_existing(root, ("val",), IMAGENET_LAYOUT, "imagenet val")
    )
    paths, labels = [], []
    for c, wnid in enumerate(wnids):
        if not (folder / wnid).is_dir():
            raise layout_error(
                folder, IMAGENET_LAYOUT, f"imagenet: class folder {folder / wnid} is missing"
            )
        names = sorted(
            p.name
            for p in (folder / wnid).iterdir()
            if p.suffix.lower() in (".jpeg", ".jpg", ".png")
        )
        paths += [folder / wnid / n for n in names]
        labels += [c] * len(names)
    return paths, np.asarray(labels, dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# PASCAL VOC2007 classification (per-class ImageSets/Main files)

VOC07_LAYOUT = """\
  <root>/                        (VOC2007 itself, or a folder holding VOCdevkit/VOC2007 or VOC2007)
    JPEGImages/000005.jpg ...
    ImageSets/Main/aeroplane_train.txt, aeroplane_val.txt, aeroplane_test.txt, ... (20 classes)
      '000005 -1' per line: 1 present, -1 absent, 0 only 'difficult' objects"""


def voc_year(root: Path, year: str, layout: str, allow_self: bool = True) -> Path:
    """The VOC<year> folder: <root>/VOCdevkit/VOC<year>, <root>/VOC<year>, or <root> itself (allow_self)."""
    candidates = [root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}"]
    other_year = re.fullmatch(r"VOC\d{4}", root.name) and root.name != f"VOC{year}"
    if allow_self and not other_year:
        candidates.append(root)
    for folder in candidates:
        if (folder / "JPEGImages").is_dir():
            return folder
    shown = ", ".join(str(c) for c in candidates)
    raise layout_error(root, layout, f"VOC{year}: no JPEGImages/ folder in any of {shown}")


def voc07(root: Path, split: str) -> tuple[list[Path], np.ndarray]:
    base = voc_year(root, "2007", VOC07_LAYOUT)
    main = base / "ImageSets" / "Main"
    names: list[str] | None = None
    labels = []
    for cls in VOC_CLASSES:
        rows = [
            line.split() for line in read_lines(main / f"{cls}_{split}.txt", VOC07_LAYOUT, "voc07")
        ]
        if any(len(r) != 2 or r[1] not in ("1", "-1", "0") for r in rows):
            raise layout_error(
                main,
                VOC07_LAYOUT,
                f"voc07: {main / f'{cls}_{split}.txt'} has lines other than 'id 1|0|-1'",
            )
        if names is None:
            names = [r[0] for r in rows]
        elif [r[0] for r in rows] != names:
            raise layout_error(
                main,
                VOC07_LAYOUT,
                f"voc07: {cls}_{split}.txt lists other images than {VOC_CLASSES[0]}_{split}.txt",
            )
        labels.append(
            [r[1] == "1" for r in rows]
        )  # difficult-only (0) -> negative, as ssl-transfer
    paths = [base / "JPEGImages" / f"{n}.jpg" for n in names or []]
    require_files(paths, VOC07_LAYOUT, "voc07")
    return paths, np.asarray(labels, dtype=np.uint8).T.reshape(len(paths), len(VOC_CLASSES))


# --------------------------------------------------------------------------------------------------
# registry

# name -> (files of an official split, layout, has its own val split (else the 20% holdout))
Loader = Callable[[Path, str], Files]
CLASSIFICATION: dict[str, tuple[Loader | None, str, bool]] = {
    "cifar10": (None, CIFAR10_LAYOUT, False),  # in-memory arrays: see cifar10()
    "cars": (cars, CARS_LAYOUT, False),
    "food": (food, FOOD_LAYOUT, False),
    "pets": (pets, PETS_LAYOUT, False),
    "places": (places, PLACES_LAYOUT, False),
    "sun": (sun, SUN_LAYOUT, False),
    "voc07": (voc07, VOC07_LAYOUT, True),
    "imagenet": (imagenet, IMAGENET_LAYOUT, False),
}


def load_classification(
    spec: dict[str, Any], split: str, roots: dict[str, str]
) -> tuple[Any, np.ndarray]:
    """(lazy images, labels) of one split; see the module docstring for each dataset's splits."""
    name = spec["name"]
    if name not in CLASSIFICATION:
        raise ValueError(
            f"no real classification loader for '{name}'; have: {', '.join(sorted(CLASSIFICATION))}"
        )
    loader, layout, own_val = CLASSIFICATION[name]
    root = dataset_root(spec, roots, layout)
    size, seed = int(spec["image_size"]), int(spec.get("seed", 0))
    if loader is None:
        return cifar10(root, split, size, seed)
    if own_val or split == "test":
        paths, labels = loader(root, split)
    else:
        paths, labels = _holdout_split(loader(root, "train"), split, seed)
    return image_files(paths, size), labels
