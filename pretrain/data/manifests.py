"""Manifests of the paper's real pretraining datasets (Table 1, appendix A.1).

A manifest is the exact, ordered list of image files of a built variant (plus class ids or
object counts when the source has them) and a sha256 of that content, so two sites that build the
same variant with the same seed from the same dataset get the same subset and can check it by hash.
The root is stored but not hashed: the files are paths relative to it.

Variants (PROTOCOLS.md "Pretraining data"):
    in118k     ImageNet-1k train, uniform: size // num_classes images per class (118 on 1000)
    in118k_lt  ImageNet-1k train, class sizes ~ Pareto(alpha = 6) (pretrain.data.longtail)
    coco       COCO train2017, all images of instances_train2017.json found on disk
    oi118k     OpenImages v4 train, uniform random subset of `size` images
    bdd100k    BDD100K images/100k/train, all images

Subsets are nested: a class (or the OpenImages pool) is shuffled once per seed and the first k files
taken, so the 2x/4x/8x scaling subsets of Table S1 contain the 118K one (for in118k and oi118k).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from pretrain.data.longtail import pareto_class_sizes
from pretrain.registry import unknown_name

IMAGE_EXTS = (".jpg", ".jpeg", ".png")  # compared lower-case: ImageNet uses .JPEG
FORMAT = "pretrain-manifest/1"


class DatasetLayoutError(ValueError):
    """The dataset root is missing or does not look like the expected on-disk layout."""


class CorruptImageError(RuntimeError):
    """An image file of a manifest cannot be decoded."""


class ManifestError(ValueError):
    """A saved manifest is unreadable, incomplete or does not match its stored hash."""


@dataclass(frozen=True)
class Manifest:
    name: str  # variant name, e.g. "in118k"
    root: str  # absolute dataset root it was built from (not hashed)
    files: tuple[str, ...]  # paths relative to root, deterministic order
    class_ids: tuple[int, ...] | None  # per file (ImageNet), index into class_names
    class_names: tuple[str, ...] | None  # e.g. wnids; index = class id
    objects_per_image: tuple[int, ...] | None  # per file, from annotations (COCO, OpenImages boxes)
    seed: int
    params: dict  # builder parameters (size, alpha, ...), JSON values only
    # (object class, number of its objects in these images), from annotations (COCO, OpenImages)
    object_counts: tuple[tuple[str, int], ...] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def __hash__(self) -> int:
        return hash(self.sha256)

    def content(self) -> dict[str, Any]:
        """Everything but the root, as JSON values: what the hash covers."""
        out = asdict(self)
        out.pop("root")
        return json.loads(json.dumps(out))  # tuples -> lists, the form save() writes

    @cached_property
    def sha256(self) -> str:
        canonical = json.dumps(self.content(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def save(self, path: str | Path) -> None:
        """Write JSON atomically: a temporary file in the same folder, then os.replace."""
        path = Path(path)
        record = {"format": FORMAT, "sha256": self.sha256, "root": self.root, **self.content()}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read a saved manifest; ManifestError when it is unreadable or its hash does not match."""
        try:
            record = json.loads(Path(path).read_text())
            manifest = _from_record(record)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ManifestError(
                f"manifest {path} is unreadable or corrupt ({err}); delete it to rebuild"
            ) from err
        stored = str(record.get("sha256"))
        if manifest.sha256 != stored:
            raise ManifestError(
                f"manifest {path} does not match its stored hash (stored {stored[:12]}, "
                f"content {manifest.sha256[:12]}): it was edited or corrupted; delete it to rebuild"
            )
        return manifest

    def stats(self) -> dict[str, Any]:
        """Table 1's measurable columns: images, objects per image, classes and their counts.

        class_counts are images per class when the source has classes (ImageNet), else objects per
        object class when annotations give them (COCO, OpenImages); class_counts_of says which.
        """
        opi = None if self.objects_per_image is None else float(np.mean(self.objects_per_image))
        counts, of = None, None
        if self.class_ids is not None and self.class_names is not None:
            counts = np.bincount(self.class_ids, minlength=len(self.class_names)).tolist()
            of = "images"
        elif self.object_counts is not None:
            counts, of = [n for _, n in self.object_counts], "objects"
        return {"images": len(self.files), "objects_per_image": opi,
                "num_classes": None if counts is None else len(counts),
                "class_counts": counts, "class_counts_of": of}  # fmt: skip


def _from_record(record: dict[str, Any]) -> Manifest:
    if record.get("format") != FORMAT:
        raise ValueError(f"format {record.get('format')!r}, expected {FORMAT!r}")
    opt = _optional_tuple
    objects = record.get("object_counts")
    return Manifest(
        name=record["name"],
        root=record["root"],
        files=tuple(record["files"]),
        class_ids=opt(record["class_ids"]),
        class_names=opt(record["class_names"]),
        objects_per_image=opt(record["objects_per_image"]),
        seed=int(record["seed"]),
        params=dict(record["params"]),
        object_counts=None if objects is None else tuple((str(k), int(n)) for k, n in objects),
    )


def _optional_tuple(values: list | None) -> tuple | None:
    return None if values is None else tuple(values)


# --------------------------------------------------------------------------------------------------
# layout helpers


def _layout_error(root: Path, expected: str, problem: str) -> DatasetLayoutError:
    """'<problem>: found <listing of root>; expected layout: <tree>'."""
    if root.is_dir():
        entries = sorted(os.listdir(root))
        shown = ", ".join(entries[:10]) + (
            f", ... ({len(entries)} entries)" if len(entries) > 10 else ""
        )
        found = f"found in {root}: [{shown}]"
    else:
        found = f"{root} does not exist" if not root.exists() else f"{root} is not a directory"
    return DatasetLayoutError(f"{problem}. {found}. Expected layout:\n{expected}")


def _images_in(folder: Path) -> list[str]:
    """Sorted names of the image files in `folder` (hidden files skipped; FS order irrelevant)."""
    with os.scandir(folder) as it:
        names = [
            e.name for e in it if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTS)
        ]
    return sorted(names)


def _first_dir(root: Path, candidates: Sequence[str], expected: str, what: str) -> Path:
    for rel in candidates:
        if (root / rel).is_dir():
            return root / rel
    raise _layout_error(
        root, expected, f"{what}: none of {', '.join(candidates)} is a folder under {root}"
    )


def _prefix_subset(n: int, k: int, seed: Sequence[int] | int) -> np.ndarray:
    """Sorted indices of the first k of a seeded permutation of range(n): larger k, superset."""
    return np.sort(np.random.default_rng(seed).permutation(n)[:k])


def _relative(folder: Path, root: Path, names: Iterable[str]) -> list[str]:
    prefix = folder.relative_to(root).as_posix()
    return [f"{prefix}/{name}" for name in names]


# --------------------------------------------------------------------------------------------------
# ImageNet: IN-118K (uniform) and IN-118K-LT (Pareto class sizes)

IMAGENET_LAYOUT = """\
  <root>/
    train/                    (or ILSVRC/Data/CLS-LOC/train/, the Kaggle layout)
      n01440764/              one folder per class: 'n' + 8 digits (wnid)
        n01440764_10026.JPEG
        ...
      n01443537/
      ..."""
WNID = re.compile(r"^n\d{8}$")


def _imagenet_classes(root: Path) -> tuple[Path, list[str], list[list[str]]]:
    """(train folder, sorted wnids, sorted image names per wnid)."""
    train = _first_dir(
        root, ("train", "ILSVRC/Data/CLS-LOC/train"), IMAGENET_LAYOUT, "ImageNet train"
    )
    wnids = sorted(d for d in os.listdir(train) if WNID.match(d) and (train / d).is_dir())
    if not wnids:
        raise _layout_error(
            train, IMAGENET_LAYOUT, "ImageNet: no class folders named like n01440764"
        )
    images = [_images_in(train / w) for w in wnids]
    empty = [w for w, names in zip(wnids, images) if not names]
    if empty:
        raise _layout_error(
            train, IMAGENET_LAYOUT, f"ImageNet: class folders without images: {empty[:5]}"
        )
    return train, wnids, images


def _imagenet_manifest(
    name: str,
    root: Path,
    classes: tuple[Path, list[str], list[list[str]]],
    sizes: np.ndarray,
    seed: int,
    params: dict,
) -> Manifest:
    """Take sizes[c] images of class c: the first sizes[c] of a permutation seeded (seed, wnid)."""
    train, wnids, images = classes
    files: list[str] = []
    class_ids: list[int] = []
    for c, (wnid, names) in enumerate(zip(wnids, images)):
        keep = _prefix_subset(len(names), int(sizes[c]), (seed, int(wnid[1:])))
        files += _relative(train / wnid, root, (names[i] for i in keep))
        class_ids += [c] * len(keep)
    return Manifest(
        name, str(root), tuple(files), tuple(class_ids), tuple(wnids), None, seed, params
    )


def build_in118k(root: Path, seed: int = 0, size: int | None = None) -> Manifest:
    """IN-118K: size // num_classes images of every class (118 per class for 118_000 on 1000)."""
    size = 118_000 if size is None else size
    classes = _imagenet_classes(root)
    _, wnids, images = classes
    per_class = size // len(wnids)
    short = [(w, len(n)) for w, n in zip(wnids, images) if len(n) < per_class]
    if per_class < 1 or short:
        raise ValueError(
            f"in118k: {per_class} images per class asked (size {size} / {len(wnids)} classes); "
            f"classes with fewer: {short[:5]}"
        )
    sizes = np.full(len(wnids), per_class)
    params = {"size": size, "per_class": per_class}
    return _imagenet_manifest("in118k", root, classes, sizes, seed, params)


def build_in118k_lt(
    root: Path, seed: int = 0, size: int | None = None, alpha: float = 6.0
) -> Manifest:
    """IN-118K-LT: class sizes from pareto_class_sizes (as the bias world), capped by availability."""
    size = 118_000 if size is None else size
    classes = _imagenet_classes(root)
    _, wnids, images = classes
    available = [len(names) for names in images]
    sizes = pareto_class_sizes(len(wnids), size, alpha=alpha, seed=seed, max_per_class=available)
    params = {"size": size, "alpha": float(alpha)}
    return _imagenet_manifest("in118k_lt", root, classes, sizes, seed, params)


# --------------------------------------------------------------------------------------------------
# COCO train2017

COCO_LAYOUT = """\
  <root>/
    train2017/
      000000000009.jpg
      ...
    annotations/
      instances_train2017.json   {"images": [{"id", "file_name", ...}],
                                  "annotations": [{"image_id", "category_id", "iscrowd", ...}],
                                  "categories": [{"id", "name"}]}"""


def _read_coco(root: Path) -> dict[str, Any]:
    path = root / "annotations" / "instances_train2017.json"
    if not path.is_file() or not (root / "train2017").is_dir():
        raise _layout_error(root, COCO_LAYOUT, f"COCO: {path} or {root / 'train2017'} is missing")
    try:
        data = json.loads(path.read_text())
        assert isinstance(data["images"], list) and isinstance(data["annotations"], list)
    except (ValueError, KeyError, TypeError, AssertionError) as err:
        raise _layout_error(
            root, COCO_LAYOUT, f"COCO: {path} is not a COCO instances file ({err!r})"
        ) from err
    return data


def build_coco(
    root: Path, seed: int = 0, size: int | None = None, count_crowd: bool = True
) -> Manifest:
    """COCO: every image of instances_train2017.json present in train2017/ (size: seeded subset).

    Objects per image = annotations per image. We count crowd annotations too (count_crowd=True):
    an 'iscrowd' region is at least one object, and all 860,001 annotations over the 118,287
    images give 7.27, Table 1's 7.3 (non-crowd only: ~7.2). Images without annotations count 0.
    """
    data = _read_coco(root)
    on_disk = set(os.listdir(root / "train2017"))
    images = sorted(
        (im["file_name"], im["id"]) for im in data["images"] if im["file_name"] in on_disk
    )
    if not images:
        raise _layout_error(
            root, COCO_LAYOUT, "COCO: no image of instances_train2017.json is in train2017/"
        )
    if size is not None:
        images = [
            images[i]
            for i in _prefix_subset(len(images), _check_size(size, len(images), "coco"), seed)
        ]
    kept = {image_id for _, image_id in images}
    anns = [
        a
        for a in data["annotations"]
        if a["image_id"] in kept and (count_crowd or not a.get("iscrowd", 0))
    ]
    per_image = Counter(a["image_id"] for a in anns)
    names = {c["id"]: c["name"] for c in data.get("categories", [])}
    per_class = Counter(names.get(a["category_id"], str(a["category_id"])) for a in anns)
    files = tuple(f"train2017/{name}" for name, _ in images)
    objects = tuple(per_image[image_id] for _, image_id in images)
    params = {"size": size, "count_crowd": count_crowd}
    return Manifest(
        "coco",
        str(root),
        files,
        None,
        None,
        objects,
        seed,
        params,
        tuple(sorted(per_class.items())),
    )


def _check_size(size: int, available: int, variant: str) -> int:
    if not 0 < size <= available:
        raise ValueError(f"{variant}: size {size} asked, {available} images available")
    return size


# --------------------------------------------------------------------------------------------------
# OpenImages v4 train

OPENIMAGES_LAYOUT = """\
  <root>/
    train/                          images as synced from s3://open-images-dataset/train (CVDF)
      000002b66c9c498e.jpg          <ImageID>.jpg
      ...
    (or train_0/ ... train_f/       the CVDF tar shards train_<x>.tar.gz, extracted)
    train-annotations-bbox.csv      optional (or annotations/train-annotations-bbox.csv): v4 boxes,
      ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,
      IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside"""
OI_BOX_CSV = ("train-annotations-bbox.csv", "annotations/train-annotations-bbox.csv")


def _openimages_pool(root: Path) -> list[str]:
    """Sorted paths (relative to root) of all train images: train/ or the train_<x>/ shards."""
    folders = [root / "train"] if (root / "train").is_dir() else []
    folders += sorted(p for p in root.glob("train_*") if p.is_dir())
    pool = [f for folder in folders for f in _relative(folder, root, _images_in(folder))]
    if not pool:
        raise _layout_error(
            root, OPENIMAGES_LAYOUT, "OpenImages: no images in train/ or train_<x>/"
        )
    return sorted(pool)


def _openimages_boxes(path: Path, image_ids: set[str]) -> tuple[Counter, Counter]:
    """(boxes per ImageID, boxes per LabelName) over image_ids; streams the 1.1 GB v4 csv."""
    import pandas as pd

    header = pd.read_csv(path, nrows=0).columns
    if not {"ImageID", "LabelName"} <= set(header):
        raise _layout_error(
            path.parent, OPENIMAGES_LAYOUT, f"{path} lacks ImageID/LabelName, has {list(header)}"
        )
    per_image, per_label = Counter(), Counter()
    for chunk in pd.read_csv(
        path, usecols=["ImageID", "LabelName"], dtype=str, chunksize=2_000_000
    ):
        chunk = chunk[chunk["ImageID"].isin(image_ids)]
        per_image.update(chunk["ImageID"].value_counts().to_dict())
        per_label.update(chunk["LabelName"].value_counts().to_dict())
    return per_image, per_label


def build_oi118k(root: Path, seed: int = 0, size: int | None = None) -> Manifest:
    """OI-118K: uniform random subset of `size` train images; each box row of the csv: one object.

    All 14.6M v4 boxes (group-of boxes included) over the 1.74M images give 8.4 per image, Table 1's
    figure. Without the csv, objects_per_image is None. Images absent from the csv count 0 boxes.
    """
    size = 118_000 if size is None else size
    pool = _openimages_pool(root)
    files = tuple(
        pool[i] for i in _prefix_subset(len(pool), _check_size(size, len(pool), "oi118k"), seed)
    )
    objects, object_counts = None, None
    csv = next((root / rel for rel in OI_BOX_CSV if (root / rel).is_file()), None)
    if csv is not None:
        ids = [Path(f).stem for f in files]
        per_image, per_label = _openimages_boxes(csv, set(ids))
        objects, object_counts = tuple(per_image[i] for i in ids), tuple(sorted(per_label.items()))
    params = {"size": size}
    return Manifest("oi118k", str(root), files, None, None, objects, seed, params, object_counts)


# --------------------------------------------------------------------------------------------------
# BDD100K

BDD_LAYOUT = """\
  <root>/
    images/100k/train/              (or bdd100k/images/100k/train/)
      0000f77c-6257be58.jpg
      ..."""


def build_bdd100k(root: Path, seed: int = 0, size: int | None = None) -> Manifest:
    """BDD100K: every image of images/100k/train (size: optional seeded subset)."""
    train = _first_dir(
        root, ("images/100k/train", "bdd100k/images/100k/train"), BDD_LAYOUT, "BDD100K"
    )
    pool = _relative(train, root, _images_in(train))
    if not pool:
        raise _layout_error(train, BDD_LAYOUT, "BDD100K: no images in the train folder")
    if size is not None:
        pool = [
            pool[i]
            for i in _prefix_subset(len(pool), _check_size(size, len(pool), "bdd100k"), seed)
        ]
    return Manifest("bdd100k", str(root), tuple(pool), None, None, None, seed, {"size": size})


FOLDER_LAYOUT = """\
  <root>/                           any folder of your own images, searched recursively
    a.jpg
    street/b.png
    ..."""


def build_folder(root: Path, seed: int = 0, size: int | None = None) -> Manifest:
    """A user's folder of images (.jpg/.jpeg/.png at any depth), unlabelled: a custom pretraining set.
    size None: every image; else a seeded subset of at most `size` (a profile's size caps a folder,
    as the smoke profile's 64 images, rather than failing on a smaller one)."""
    pool = sorted(
        str(Path(dirpath, name).relative_to(root))
        for dirpath, dirnames, names in os.walk(root)
        if not any(part.startswith(".") for part in Path(dirpath).relative_to(root).parts)
        for name in names
        if not name.startswith(".") and name.lower().endswith(IMAGE_EXTS)
    )
    if not pool:
        raise _layout_error(root, FOLDER_LAYOUT, "folder: no .jpg/.jpeg/.png images under the root")
    if size is not None and size < len(pool):
        pool = [pool[i] for i in _prefix_subset(len(pool), size, seed)]
    return Manifest("folder", str(root), tuple(pool), None, None, None, seed, {"size": size})


# --------------------------------------------------------------------------------------------------
# registry

VARIANTS: dict[str, Callable[..., Manifest]] = {
    "in118k": build_in118k,
    "in118k_lt": build_in118k_lt,
    "coco": build_coco,
    "oi118k": build_oi118k,
    "bdd100k": build_bdd100k,
    "folder": build_folder,
}
LAYOUTS: dict[str, str] = {
    "in118k": IMAGENET_LAYOUT,
    "in118k_lt": IMAGENET_LAYOUT,
    "coco": COCO_LAYOUT,
    "oi118k": OPENIMAGES_LAYOUT,
    "bdd100k": BDD_LAYOUT,
    "folder": FOLDER_LAYOUT,
}


def build_manifest(
    variant: str, root: str | Path, *, seed: int = 0, size: int | None = None, **kw: Any
) -> Manifest:
    """Build the manifest of `variant` from the dataset at `root`.

    size None: the paper's size (118_000 for in118k, in118k_lt, oi118k; all of coco, bdd100k).
    Extra keywords go to the builder (alpha for in118k_lt, count_crowd for coco).
    """
    if variant not in VARIANTS:
        raise ValueError(unknown_name("pretraining manifest variant", variant, VARIANTS))
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise _layout_error(
            root, LAYOUTS[variant], f"{variant}: dataset root {root} is not a folder"
        )
    return VARIANTS[variant](root, seed=seed, size=size, **kw)
