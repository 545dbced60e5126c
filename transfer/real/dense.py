"""Real datasets of the dense protocols: segmentation (VOC12, Cityscapes, NYUD), depth (NYUD), detection (VOC).

Each returns a transfer.data.DenseSet whose images, masks and depth are lazy sequences (decoded on
access, at the image's own size): images uint8 (3, H, W), class_mask int64 (H, W) with 255 = ignore,
depth float32 (H, W) metres with 0 = invalid; boxes are read eagerly (small).

Splits (provenance). Where a dataset has no public test labels, "test" is the split the paper reports
on (the same images as "val"): the dense protocols train on "train" and score "val"/"test".
    voc12_seg   train: train_aug (10,582) = SBD train + SBD val + VOC12 seg train - VOC12 seg val
                (Hariharan et al. 2011; the DeepLab list). Either given as SegmentationClassAug/*.png
                + train_aug.txt, or built from SBD dataset/{train,val}.txt + dataset/cls/*.mat
                (GTcls.Segmentation, 0..20, no borders); a VOC12 SegmentationClass PNG is preferred when
                both exist. val = test: ImageSets/Segmentation/val.txt (1,449), SegmentationClass palette
                PNGs (255 = object borders, kept as ignore). 21 classes, 0 = background.
    cityscapes  train: gtFine train (2,975); val = test: gtFine val (500); *_gtFine_labelIds.png mapped
                to the 19 trainIds of cityscapesScripts' labels.py, every other id -> 255.
    nyud_seg    NYUD-v2 labelled set, the Gupta et al. split: train.txt (795), val = test: val.txt (654).
                segmentation/*.png holds the 40-class labels 1..40 with 0 = unlabelled; we map v -> v-1
                and 0 -> 255 (ignored, as in the authors' Multi-Task-Learning-PyTorch NYUD loader):
                40 classes, no background class.
    nyud_depth  same split; depth/*.png uint16 millimetres (-> metres), or depth/*.npy (float: metres,
                integer: millimetres); 0 = invalid. Or the official nyu_depth_v2_labeled.mat (HDF5: images
                and depths, read with h5py, a requirement) + splits.mat (1-based trainNdxs = train,
                testNdxs = val = test).
    voc_det     train: VOC2007 trainval + VOC2012 trainval (16,551; ImageSets/Main/trainval.txt);
                val = test: VOC2007 test (4,952). Boxes from Annotations/*.xml, all objects kept with their
                'difficult' flag; xyxy pixels made 0-based as detectron2's pascal_voc loader (MoCo's
                detection code): xmin - 1, ymin - 1, xmax, ymax. 20 classes (no background).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transfer.data import IGNORE_INDEX, DenseSet
from transfer.real.classification import VOC_CLASSES, voc_year
from transfer.real.common import (
    CorruptImageError,
    DatasetLayoutError,
    LazyItems,
    first_existing,
    image_files,
    layout_error,
    read_label,
    read_lines,
    require_files,
)


def _named_images(paths: list[Path]) -> LazyItems:
    """image_files at their own size, with .files: the path of item i, which dense finetuning names when an
    image and its mask or depth map differ in size."""
    items = image_files(paths)
    items.files = list(paths)
    return items


# --------------------------------------------------------------------------------------------------
# PASCAL VOC2012 segmentation (+ SBD train_aug)

VOC12_SEG_LAYOUT = """\
  <root>/                      (VOC2012 itself, or a folder holding VOCdevkit/VOC2012 or VOC2012)
    JPEGImages/2007_000032.jpg ...
    SegmentationClass/2007_000032.png ...       palette PNGs: 0 background, 1..20, 255 borders
    ImageSets/Segmentation/train.txt, val.txt
  train_aug, either:
    SegmentationClassAug/*.png  + ImageSets/Segmentation/train_aug.txt (or <root>/train_aug.txt)
      lines 'name' or '/JPEGImages/name.jpg /SegmentationClassAug/name.png'
  or SBD (benchmark_RELEASE): <sbd>/dataset/cls/*.mat (GTcls.Segmentation), <sbd>/dataset/{train,val}.txt,
      <sbd> = the root named 'sbd' (--data-root sbd=PATH), or <root>/SBD, <root>/benchmark_RELEASE"""
VOC_SEG_CLASSES = ("background", *VOC_CLASSES)


def _name(line: str) -> str:
    """'2007_000032' from '2007_000032' or '/JPEGImages/2007_000032.jpg /SegmentationClassAug/...'."""
    return Path(line.split()[0]).stem


def _sbd_mask(path: Path) -> np.ndarray:
    from scipy.io import loadmat

    try:
        return np.asarray(loadmat(path)["GTcls"]["Segmentation"][0, 0])
    except (OSError, ValueError, KeyError, IndexError, TypeError, NotImplementedError) as err:
        raise CorruptImageError(
            f"cannot read SBD label {path} (expected GTcls.Segmentation): {err!r}"
        ) from err


def _sbd_root(root: Path, base: Path, roots: dict[str, str]) -> Path | None:
    """roots['sbd'] if given (must be SBD), else SBD/ or benchmark_RELEASE/ in the root or VOC2012."""
    if "sbd" in roots:
        sbd = Path(roots["sbd"]).expanduser()
        if not (sbd / "dataset" / "cls").is_dir():
            raise layout_error(sbd, VOC12_SEG_LAYOUT, f"sbd: {sbd}/dataset/cls is not a folder")
        return sbd
    candidates = [folder / name for folder in (root, base) for name in ("SBD", "benchmark_RELEASE")]
    return next((c for c in candidates if (c / "dataset" / "cls").is_dir()), None)


def _voc12_train_aug(root: Path, base: Path, roots: dict[str, str]) -> tuple[list[str], list[Path]]:
    """(names, label files: .png or SBD .mat) of train_aug."""
    sets = base / "ImageSets" / "Segmentation"
    aug = base / "SegmentationClassAug"
    if aug.is_dir():
        listing = first_existing(
            base,
            ("ImageSets/Segmentation/train_aug.txt", "train_aug.txt"),
            VOC12_SEG_LAYOUT,
            "voc12_seg train_aug list",
            dir=False,
        )
        names = [_name(line) for line in read_lines(listing, VOC12_SEG_LAYOUT, "voc12_seg")]
        return names, [aug / f"{n}.png" for n in names]
    sbd = _sbd_root(root, base, roots)
    if sbd is None:
        raise layout_error(
            base, VOC12_SEG_LAYOUT, "voc12_seg: train_aug needs SegmentationClassAug/ or SBD"
        )
    val = set(read_lines(sets / "val.txt", VOC12_SEG_LAYOUT, "voc12_seg"))
    voc_train = read_lines(sets / "train.txt", VOC12_SEG_LAYOUT, "voc12_seg")
    sbd_names = [
        n
        for s in ("train", "val")
        for n in read_lines(sbd / "dataset" / f"{s}.txt", VOC12_SEG_LAYOUT, "sbd")
    ]
    names = sorted((set(voc_train) | set(sbd_names)) - val)
    voc_png = {n: base / "SegmentationClass" / f"{n}.png" for n in voc_train}
    return names, [voc_png.get(n) or sbd / "dataset" / "cls" / f"{n}.mat" for n in names]


def voc12_seg(root: Path, split: str, roots: dict[str, str]) -> DenseSet:
    base = voc_year(root, "2012", VOC12_SEG_LAYOUT)
    if split == "train":
        names, labels = _voc12_train_aug(root, base, roots)
    else:
        names = read_lines(
            base / "ImageSets" / "Segmentation" / "val.txt", VOC12_SEG_LAYOUT, "voc12_seg"
        )
        labels = [base / "SegmentationClass" / f"{n}.png" for n in names]
    images = [base / "JPEGImages" / f"{n}.jpg" for n in names]
    require_files(images + labels, VOC12_SEG_LAYOUT, f"voc12_seg {split}")

    def mask(i: int) -> torch.Tensor:
        path = labels[i]
        values = _sbd_mask(path) if path.suffix == ".mat" else read_label(path)
        return torch.from_numpy(values.astype(np.int64))  # 0..20, 255 = border = IGNORE_INDEX

    return DenseSet(
        _named_images(images), 21, VOC_SEG_CLASSES, class_mask=LazyItems(len(names), mask)
    )


# --------------------------------------------------------------------------------------------------
# Cityscapes (gtFine)

CITYSCAPES_LAYOUT = """\
  <root>/
    leftImg8bit/{train,val}/<city>/<city>_000000_000019_leftImg8bit.png
    gtFine/{train,val}/<city>/<city>_000000_000019_gtFine_labelIds.png   (label ids 0..33)"""
# cityscapesScripts labels.py: label id -> trainId of the 19 evaluated classes
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                        24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)  # fmt: skip
_CITYSCAPES_LUT = np.full(256, IGNORE_INDEX, dtype=np.int64)
_CITYSCAPES_LUT[list(CITYSCAPES_TRAIN_IDS)] = list(CITYSCAPES_TRAIN_IDS.values())


def cityscapes(root: Path, split: str) -> DenseSet:
    folder = "train" if split == "train" else "val"
    left = first_existing(root, (f"leftImg8bit/{folder}",), CITYSCAPES_LAYOUT, "cityscapes images")
    images = sorted(left.glob("*/*_leftImg8bit.png"))
    if not images:
        raise layout_error(
            left, CITYSCAPES_LAYOUT, "cityscapes: no <city>/*_leftImg8bit.png images"
        )
    gt = root / "gtFine" / folder
    labels = [gt / p.parent.name / p.name.replace("leftImg8bit", "gtFine_labelIds") for p in images]
    require_files(labels, CITYSCAPES_LAYOUT, f"cityscapes {folder} labels")

    def mask(i: int) -> torch.Tensor:
        return torch.from_numpy(_CITYSCAPES_LUT[read_label(labels[i])])

    return DenseSet(
        _named_images(images), 19, CITYSCAPES_CLASSES, class_mask=LazyItems(len(images), mask)
    )


# --------------------------------------------------------------------------------------------------
# NYUD-v2 (labelled set, 795 / 654)

NYUD_LAYOUT = """\
  <root>/
    images/<name>.png (or .jpg)
    segmentation/<name>.png      40-class labels 1..40, 0 = unlabelled (nyud_seg)
    depth/<name>.png             uint16 millimetres, 0 = invalid (or <name>.npy: float metres) (nyud_depth)
    train.txt, val.txt           795 / 654 names, one per line (also accepted in gt_sets/)
  or the official nyu_depth_v2_labeled.mat + splits.mat (depth only; needs h5py)"""
NYUD_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)  # fmt: skip


def _first_file(folder: Path, name: str, exts: tuple[str, ...]) -> Path:
    for ext in exts:
        if (folder / f"{name}{ext}").is_file():
            return folder / f"{name}{ext}"
    return folder / f"{name}{exts[0]}"  # missing: require_files names it


def _nyud_seg_mask(path: Path) -> torch.Tensor:
    values = read_label(path).astype(np.int64)
    if values.max(initial=0) > 40:
        raise CorruptImageError(f"{path}: label {values.max()} > 40; expected NYUD-40 labels 0..40")
    return torch.from_numpy(np.where(values == 0, IGNORE_INDEX, values - 1))


def _nyud_depth(path: Path) -> torch.Tensor:
    if path.suffix == ".npy":
        try:
            values = np.load(path)
        except (OSError, ValueError) as err:
            raise CorruptImageError(f"cannot read depth map {path}: {err}") from err
        metres = values.astype(np.float32) / (
            1000.0 if np.issubdtype(values.dtype, np.integer) else 1.0
        )
    else:
        metres = read_label(path).astype(np.float32) / 1000.0  # uint16 millimetres
    return torch.from_numpy(np.ascontiguousarray(metres))


def nyud(root: Path, split: str, task: str) -> DenseSet:
    if not (root / "images").is_dir() and (root / "nyu_depth_v2_labeled.mat").is_file():
        return _nyud_mat(root, split, task)
    name = "train.txt" if split == "train" else "val.txt"
    listing = first_existing(root, (name, f"gt_sets/{name}"), NYUD_LAYOUT, "nyud split", dir=False)
    names = [Path(line).stem for line in read_lines(listing, NYUD_LAYOUT, "nyud")]
    images = [_first_file(root / "images", n, (".png", ".jpg")) for n in names]
    if task == "seg":
        labels = [root / "segmentation" / f"{n}.png" for n in names]
    else:
        labels = [_first_file(root / "depth", n, (".png", ".npy")) for n in names]
    require_files(images + labels, NYUD_LAYOUT, f"nyud_{task} {split}")
    dense = LazyItems(
        len(names), lambda i: (_nyud_seg_mask if task == "seg" else _nyud_depth)(labels[i])
    )
    if task == "seg":
        return DenseSet(_named_images(images), 40, NYUD_CLASSES, class_mask=dense)
    return DenseSet(_named_images(images), 0, (), depth=dense)


def _nyud_mat(root: Path, split: str, task: str) -> DenseSet:
    """The official nyu_depth_v2_labeled.mat (MATLAB v7.3 = HDF5) and splits.mat (1-based trainNdxs/testNdxs).

    MATLAB stores images (H,W,3,N) uint8 and depths (H,W,N) single metres, column-major, so h5py reads them
    with the axes reversed: images (N,3,W,H), depths (N,W,H). Item i is transposed back to (3,H,W) / (H,W).
    """
    mat = root / "nyu_depth_v2_labeled.mat"
    if task == "seg":
        raise DatasetLayoutError(
            f"nyud_seg: {mat} holds the 894-class labels, not the 40-class ones the protocol uses; "
            f"convert it to the folder layout with the NYUD-40 labels (Gupta et al.):\n{NYUD_LAYOUT}"
        )
    try:
        import h5py
    except ImportError as err:
        raise DatasetLayoutError(
            f"nyud_depth: reading {mat} needs h5py (pip install h5py), or convert it to the folder "
            f"layout:\n{NYUD_LAYOUT}"
        ) from err
    index = _nyud_split(root, split)
    try:
        handle = h5py.File(mat, "r")
        images, depths = handle["images"], handle["depths"]
        shapes = images.shape, depths.shape
    except (OSError, KeyError, TypeError) as err:
        raise DatasetLayoutError(
            f"nyud_depth: {mat} is not the official labelled set ({err}); it must be a MATLAB v7.3 (HDF5) file "
            "with datasets 'images' (uint8, read as (N,3,W,H)) and 'depths' (read as (N,W,H)), or convert it "
            f"to the folder layout:\n{NYUD_LAYOUT}"
        ) from err
    n = shapes[0][0] if len(shapes[0]) == 4 else -1
    if shapes[0][1:2] != (3,) or shapes[1] != (n, *shapes[0][2:]) or images.dtype != np.uint8:
        raise DatasetLayoutError(
            f"nyud_depth: {mat} has images {shapes[0]} {images.dtype} and depths {shapes[1]}; expected "
            "images (N,3,W,H) uint8 and depths (N,W,H) as h5py reads MATLAB's (H,W,3,N) and (H,W,N)"
        )
    if index.size and (index.min() < 0 or index.max() >= n):
        raise DatasetLayoutError(
            f"nyud_depth: {root / 'splits.mat'} indexes images {index.min() + 1}..{index.max() + 1} (1-based) "
            f"but {mat} holds {n}"
        )

    def image(i: int) -> torch.Tensor:  # (3,W,H) -> (3,H,W)
        return torch.from_numpy(np.ascontiguousarray(images[index[i]].transpose(0, 2, 1)))

    def depth(i: int) -> torch.Tensor:  # (W,H) -> (H,W) metres
        return torch.from_numpy(np.ascontiguousarray(depths[index[i]].astype(np.float32).T))

    return DenseSet(LazyItems(len(index), image), 0, (), depth=LazyItems(len(index), depth))


def _nyud_split(root: Path, split: str) -> np.ndarray:
    """0-based indices of the split from splits.mat (trainNdxs = train, testNdxs = val/test; 1-based there)."""
    from scipy.io import loadmat

    path = root / "splits.mat"
    if not path.is_file():
        raise layout_error(
            root, NYUD_LAYOUT, f"nyud_depth: {path} (trainNdxs, testNdxs) is missing"
        )
    key = "trainNdxs" if split == "train" else "testNdxs"
    try:
        values = np.asarray(loadmat(path)[key]).ravel()
        index = values.astype(np.int64)
        if not np.array_equal(index, values):
            raise ValueError(f"{key} holds non-integer values")
    except (OSError, ValueError, KeyError, TypeError, NotImplementedError) as err:
        raise DatasetLayoutError(
            f"nyud_depth: cannot read {key} from {path} ({err!r}); it must be a MATLAB file with 1-based "
            "integer vectors trainNdxs (795) and testNdxs (654)"
        ) from err
    return index - 1


# --------------------------------------------------------------------------------------------------
# PASCAL VOC07+12 detection

VOC_DET_LAYOUT = """\
  <root>/                      (holding VOC2007/ and VOC2012/, or VOCdevkit/VOC2007 and VOCdevkit/VOC2012)
    VOC2007/JPEGImages/000005.jpg, VOC2007/Annotations/000005.xml
    VOC2007/ImageSets/Main/trainval.txt, test.txt
    VOC2012/JPEGImages, Annotations, ImageSets/Main/trainval.txt
  Annotations: <object><name>dog</name><difficult>0</difficult>
               <bndbox><xmin>..</xmin><ymin>..</ymin><xmax>..</xmax><ymax>..</ymax></bndbox></object>
               (1-based pixel indices, inclusive)"""


def parse_voc_xml(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes float32 (M,4) 0-based xyxy, labels int64 (M,), difficult bool (M,)) of one annotation."""
    try:
        objects = ET.parse(path).getroot().findall("object")
        rows = []
        for obj in objects:
            box = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (
                float(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")
            )
            label = VOC_CLASSES.index(obj.find("name").text.strip())
            difficult = obj.find("difficult")
            hard = difficult is not None and int(difficult.text) == 1
            rows.append(((xmin - 1.0, ymin - 1.0, xmax, ymax), label, hard))  # detectron2: 0-based
    except (OSError, ET.ParseError, AttributeError, TypeError, ValueError) as err:
        raise DatasetLayoutError(
            f"voc_det: {path} is not a VOC annotation ({err!r}); each <object> needs <name> (one of the "
            f"20 VOC classes) and <bndbox> with xmin, ymin, xmax, ymax"
        ) from err
    boxes = np.asarray([r[0] for r in rows], dtype=np.float32).reshape(-1, 4)
    return (
        boxes,
        np.asarray([r[1] for r in rows], dtype=np.int64),
        np.asarray([r[2] for r in rows], dtype=bool),
    )


def voc_det(root: Path, split: str) -> DenseSet:
    parts = [("2007", "trainval"), ("2012", "trainval")] if split == "train" else [("2007", "test")]
    images, annotations = [], []
    for year, image_set in parts:
        base = voc_year(root, year, VOC_DET_LAYOUT, allow_self=False)
        names = read_lines(
            base / "ImageSets" / "Main" / f"{image_set}.txt", VOC_DET_LAYOUT, "voc_det"
        )
        images += [base / "JPEGImages" / f"{n}.jpg" for n in names]
        annotations += [base / "Annotations" / f"{n}.xml" for n in names]
    require_files(images + annotations, VOC_DET_LAYOUT, f"voc_det {split}")
    parsed = [parse_voc_xml(p) for p in annotations]
    return DenseSet(
        image_files(images), len(VOC_CLASSES), VOC_CLASSES,
        boxes=[torch.from_numpy(b) for b, _, _ in parsed],
        box_labels=[torch.from_numpy(c) for _, c, _ in parsed],
        box_difficult=[torch.from_numpy(d) for _, _, d in parsed],
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# registry: name -> (builder(root, split, roots), layout)

DENSE: dict[str, tuple[Any, str]] = {
    "voc12_seg": (voc12_seg, VOC12_SEG_LAYOUT),
    "cityscapes": (lambda root, split, roots: cityscapes(root, split), CITYSCAPES_LAYOUT),
    "nyud_seg": (lambda root, split, roots: nyud(root, split, "seg"), NYUD_LAYOUT),
    "nyud_depth": (lambda root, split, roots: nyud(root, split, "depth"), NYUD_LAYOUT),
    "voc_det": (lambda root, split, roots: voc_det(root, split), VOC_DET_LAYOUT),
}
