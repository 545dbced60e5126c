"""Manifests of the real pretraining datasets, built from tiny trees in the real on-disk layouts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pretrain.data.images import ManifestImages, verify
from pretrain.data.longtail import pareto_class_sizes
from pretrain.data.manifests import (
    VARIANTS,
    CorruptImageError,
    DatasetLayoutError,
    Manifest,
    ManifestError,
    build_manifest,
)

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475"]
PER_WNID = [6, 7, 8, 9, 10]  # unequal, so max_per_class matters for the long tail


def jpeg_bytes(size: int = 8, mode: str = "RGB", seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format="JPEG")
    return buf.getvalue()


def write_images(folder: Path, names: list[str], data: bytes | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(data or jpeg_bytes())


def make_imagenet(root: Path, reverse: bool = False) -> Path:
    """root/train/<wnid>/<wnid>_<i>.JPEG; `reverse` creates them in the opposite order."""
    order = list(zip(WNIDS, PER_WNID))
    for wnid, n in reversed(order) if reverse else order:
        names = [f"{wnid}_{i}.JPEG" for i in range(n)]
        write_images(root / "train" / wnid, names[::-1] if reverse else names)
    (root / "train" / "README.txt").write_text("not a class")  # ignored: not a wnid folder
    return root


COCO_IMAGES = {
    1: "000000000001.jpg",
    2: "000000000002.jpg",
    3: "000000000003.jpg",
    4: "000000000004.jpg",
}
# image id -> (non-crowd, crowd) annotations; image 4 is listed but not on disk, image 3 has none
COCO_ANNS = {1: (3, 1), 2: (1, 0), 3: (0, 0), 4: (2, 0)}


def make_coco(root: Path) -> Path:
    on_disk = [COCO_IMAGES[i] for i in (1, 2, 3)] + ["000000000099.jpg"]  # 99: not in the json
    write_images(root / "train2017", on_disk)
    anns = [{"id": 100 * i + k, "image_id": i, "category_id": 1 + k % 2, "iscrowd": int(k >= plain)}
            for i, (plain, crowd) in COCO_ANNS.items() for k in range(plain + crowd)]  # fmt: skip
    data = {
        "images": [{"id": i, "file_name": f} for i, f in COCO_IMAGES.items()],
        "annotations": anns,
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    return root


OI_IDS = [f"{i:016x}" for i in range(0x0A0, 0x0A8)]  # 8 ImageIDs
OI_HEADER = (
    "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,"
    "IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside"
)


def make_openimages(root: Path, shards: bool = False, csv: bool = True) -> Path:
    if shards:  # CVDF tar shards train_<x>/
        write_images(root / "train_0", [f"{i}.jpg" for i in OI_IDS[:4]])
        write_images(root / "train_a", [f"{i}.jpg" for i in OI_IDS[4:]])
    else:
        write_images(root / "train", [f"{i}.jpg" for i in OI_IDS])
    if csv:
        rows = [f"{image_id},xclick,/m/0{k % 3},1,0.1,0.5,0.2,0.6,0,0,0,0,0"
                for n, image_id in enumerate(OI_IDS) for k in range(n)]  # fmt: skip
        (root / "train-annotations-bbox.csv").write_text("\n".join([OI_HEADER, *rows]) + "\n")
    return root


def make_bdd(root: Path) -> Path:
    write_images(
        root / "images" / "100k" / "train",
        ["0000f77c-6257be58.jpg", "0000f77c-62c2a288.jpg", "00a0f008-3c67908e.jpg"],
    )
    return root


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagenet(tmp_path_factory.mktemp("imagenet"))


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_coco(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def openimages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_openimages(tmp_path_factory.mktemp("openimages"))


@pytest.fixture(scope="module")
def trees(
    imagenet: Path, coco: Path, openimages: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    bdd = make_bdd(tmp_path_factory.mktemp("bdd"))
    return {"in118k": (imagenet, 20), "in118k_lt": (imagenet, 25), "coco": (coco, None),
            "oi118k": (openimages, 5), "bdd100k": (bdd, None),
            "folder": (imagenet, 7)}  # any folder of images: ImageNet's tree read as unlabelled  # fmt: skip


# --------------------------------------------------------------------------------------------------
# contract over every registered variant


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_is_deterministic_and_readable(variant: str, trees: dict) -> None:
    root, size = trees[variant]
    a = build_manifest(variant, root, seed=3, size=size)
    b = build_manifest(variant, root, seed=3, size=size)
    assert a == b and a.sha256 == b.sha256 and a.name == variant
    assert a.root == str(root.resolve())
    assert a.stats()["images"] == len(a.files) > 0
    images = ManifestImages(a)
    assert len(images) == len(a.files)
    assert all((root / f).is_file() for f in a.files)
    assert images[0].mode == "RGB"


# --------------------------------------------------------------------------------------------------
# ImageNet


def test_in118k_uniform_counts_per_class(imagenet: Path) -> None:
    m = build_manifest("in118k", imagenet, size=20)  # 20 // 5 classes = 4 per class
    assert m.class_names == tuple(WNIDS)
    assert m.stats()["class_counts"] == [4] * 5 and m.stats()["num_classes"] == 5
    assert m.stats()["objects_per_image"] is None
    for f, c in zip(m.files, m.class_ids):
        assert f.split("/")[1] == WNIDS[c]  # train/<wnid>/<file>
    assert len(set(m.files)) == 20


def test_in118k_too_few_images_per_class_fails(imagenet: Path) -> None:
    with pytest.raises(ValueError, match="n01440764"):  # 7 per class asked, this class has 6
        build_manifest("in118k", imagenet, size=35)


def test_in118k_lt_follows_pareto_class_sizes(imagenet: Path) -> None:
    for seed in (0, 1):
        m = build_manifest("in118k_lt", imagenet, seed=seed, size=25)
        expected = pareto_class_sizes(5, 25, alpha=6.0, seed=seed, max_per_class=PER_WNID)
        counts = m.stats()["class_counts"]
        assert counts == expected.tolist() and sum(counts) == 25 == len(m.files)
        assert max(counts) > min(counts) >= 1  # long-tailed, not uniform
        assert all(n <= cap for n, cap in zip(counts, PER_WNID))
        assert m.params["alpha"] == 6.0


def test_same_seed_same_hash_different_seed_different_subset(imagenet: Path) -> None:
    a, b = build_manifest("in118k", imagenet, seed=0, size=20), build_manifest(
        "in118k", imagenet, seed=1, size=20
    )
    assert a.sha256 != b.sha256 and set(a.files) != set(b.files)
    assert a.stats()["class_counts"] == b.stats()["class_counts"]


def test_hash_ignores_root_and_directory_order(imagenet: Path, tmp_path: Path) -> None:
    other = make_imagenet(tmp_path / "elsewhere", reverse=True)  # same names, created in reverse
    a, b = build_manifest("in118k_lt", imagenet, seed=2, size=25), build_manifest(
        "in118k_lt", other, seed=2, size=25
    )
    assert a.root != b.root and a.files == b.files and a.sha256 == b.sha256


def test_subsets_are_nested(imagenet: Path) -> None:
    small, large = build_manifest("in118k", imagenet, size=10), build_manifest(
        "in118k", imagenet, size=25
    )
    assert set(small.files) < set(large.files)  # Table S1: the larger subsets contain the 118K one


# --------------------------------------------------------------------------------------------------
# COCO, OpenImages, BDD100K


def test_coco_objects_per_image_equal_annotation_counts(coco: Path) -> None:
    m = build_manifest("coco", coco)
    assert m.files == tuple(
        f"train2017/{COCO_IMAGES[i]}" for i in (1, 2, 3)
    )  # 4: not on disk; 99: not listed
    assert m.objects_per_image == (4, 1, 0)  # crowd annotations counted (see build_coco)
    assert m.stats()["objects_per_image"] == pytest.approx(5 / 3)
    assert dict(m.object_counts) == {"person": 3, "car": 2}
    plain = build_manifest("coco", coco, count_crowd=False)
    assert plain.objects_per_image == (3, 1, 0) and plain.sha256 != m.sha256


def test_openimages_subset_and_boxes(openimages: Path) -> None:
    m = build_manifest("oi118k", openimages, seed=0, size=5)
    ids = [Path(f).stem for f in m.files]
    assert (
        len(set(ids)) == 5
        and set(ids) <= set(OI_IDS)
        and all(f.startswith("train/") for f in m.files)
    )
    assert m.objects_per_image == tuple(
        OI_IDS.index(i) for i in ids
    )  # image n has n boxes in the csv
    assert sum(n for _, n in m.object_counts) == sum(m.objects_per_image)
    assert build_manifest("oi118k", openimages, seed=1, size=5).files != m.files


def test_openimages_shards_without_csv(tmp_path: Path) -> None:
    m = build_manifest("oi118k", make_openimages(tmp_path, shards=True, csv=False), size=8)
    assert {f.split("/")[0] for f in m.files} == {"train_0", "train_a"}
    assert m.objects_per_image is None and m.stats()["objects_per_image"] is None


def test_bdd100k_takes_all_images(trees: dict) -> None:
    m = build_manifest("bdd100k", trees["bdd100k"][0])
    assert len(m.files) == 3 and m.files == tuple(sorted(m.files))
    assert m.files[0] == "images/100k/train/0000f77c-6257be58.jpg"


# --------------------------------------------------------------------------------------------------
# save / load


def test_save_load_round_trip(coco: Path, tmp_path: Path) -> None:
    m = build_manifest("coco", coco)
    m.save(tmp_path / "m.json")
    loaded = Manifest.load(tmp_path / "m.json")
    assert loaded == m and loaded.sha256 == m.sha256 and loaded.stats() == m.stats()
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary file left


def test_load_detects_corruption_and_tampering(imagenet: Path, tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    build_manifest("in118k", imagenet, size=10).save(path)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # truncated JSON
    with pytest.raises(ManifestError, match="corrupt"):
        Manifest.load(path)
    record = json.loads(text)
    record["files"][0] = record["files"][1]  # valid JSON, edited content
    path.write_text(json.dumps(record))
    with pytest.raises(ManifestError, match="stored hash"):
        Manifest.load(path)


# --------------------------------------------------------------------------------------------------
# errors


def test_missing_root_names_path_and_expected_layout(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_imagenet"
    with pytest.raises(DatasetLayoutError) as err:
        build_manifest("in118k", missing)
    assert str(missing) in str(err.value) and "does not exist" in str(err.value)
    assert "train/" in str(err.value) and "n01440764_10026.JPEG" in str(err.value)


@pytest.mark.parametrize(
    ("variant", "expected"),
    [("in118k", "n01440764/"), ("coco", "instances_train2017.json"),
     ("oi118k", "train-annotations-bbox.csv"), ("bdd100k", "images/100k/train/")],
)  # fmt: skip
def test_wrong_layout_shows_what_was_found_and_the_expected_tree(
    variant: str, expected: str, tmp_path: Path
) -> None:
    (tmp_path / "val").mkdir()
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DatasetLayoutError) as err:
        build_manifest(variant, tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "readme.txt" in message and "val" in message
    assert "Expected layout" in message and expected in message


def test_imagenet_without_class_folders(tmp_path: Path) -> None:
    write_images(tmp_path / "train", ["a.JPEG"])
    with pytest.raises(DatasetLayoutError, match="no class folders"):
        build_manifest("in118k_lt", tmp_path)


def test_coco_json_that_is_not_coco(tmp_path: Path) -> None:
    write_images(tmp_path / "train2017", ["000000000001.jpg"])
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train2017.json").write_text('{"images": 3}')
    with pytest.raises(DatasetLayoutError, match="not a COCO instances file"):
        build_manifest("coco", tmp_path)


def test_unknown_variant_suggests_closest_name(imagenet: Path) -> None:
    with pytest.raises(ValueError, match="Did you mean 'in118k_lt'") as err:
        build_manifest("in118k-lt", imagenet)
    assert all(name in str(err.value) for name in VARIANTS)


# --------------------------------------------------------------------------------------------------
# images


def test_truncated_jpeg_raises_corrupt_image_error_naming_the_file(tmp_path: Path) -> None:
    make_bdd(tmp_path)
    bad = tmp_path / "images" / "100k" / "train" / "0000f77c-62c2a288.jpg"
    data = jpeg_bytes(size=64, seed=1)
    bad.write_bytes(data[: len(data) // 2])
    m = build_manifest("bdd100k", tmp_path)
    images = ManifestImages(m)
    with pytest.raises(CorruptImageError, match="0000f77c-62c2a288.jpg"):
        images[m.files.index("images/100k/train/0000f77c-62c2a288.jpg")]
    assert verify(m, workers=2) == [str(bad)]


def test_grayscale_image_comes_back_rgb(tmp_path: Path) -> None:
    write_images(tmp_path / "images" / "100k" / "train", ["g.jpg"], jpeg_bytes(mode="L"))
    image = ManifestImages(build_manifest("bdd100k", tmp_path))[0]
    assert image.mode == "RGB" and image.size == (8, 8)
