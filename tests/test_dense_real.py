"""Dense finetuning (Table 3) on real datasets: tiny trees of mixed image sizes, written here in the real on-disk
format (NYUD-v2: the folder layout and the official nyu_depth_v2_labeled.mat + splits.mat), run through run_dense."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from transfer.data import DenseSet, load_dense, target_defaults
from transfer.dense import DenseProtocol, build_model, evaluate, train_run
from transfer.features import normalize
from transfer.real import DatasetLayoutError
from transfer.tasks import TaskContext, run_task, task_defaults

TINY = {"epochs": 1, "batch_size": 2, "crop_size": 32, "n_runs": 1, "threads": 1, "eval_batch_size": 2}
# (height, width) of each image: two sizes in train, three in val, none a multiple of the output stride 16
SIZES = {
    "train": {"000002": (40, 56), "000003": (36, 44), "000004": (40, 56), "000006": (36, 44)},
    "val": {"000001": (40, 56), "000005": (33, 47), "000007": (40, 56)},
}



def make_nyud(root: Path) -> dict[str, np.ndarray]:
    """The NYUD folder layout: images/*.png, segmentation/*.png (0 unlabelled, 1..40), depth/*.png (uint16 mm,
    0 invalid), train.txt / val.txt. Returns the val labels and depths written (to count the scored pixels)."""
    rng = np.random.default_rng(0)
    for sub in ("images", "segmentation", "depth"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    written = {"seg": [], "depth": []}
    for split, sizes in SIZES.items():
        (root / f"{split}.txt").write_text("\n".join(sizes) + "\n")
        for name, (h, w) in sizes.items():
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
            seg = rng.integers(0, 41, (h, w)).astype(np.uint8)  # 0 = unlabelled -> ignored
            Image.fromarray(seg).save(root / "segmentation" / f"{name}.png")
            mm = rng.integers(500, 5000, (h, w)).astype(np.uint16)
            mm[rng.random((h, w)) < 0.2] = 0  # invalid
            Image.fromarray(mm).save(root / "depth" / f"{name}.png")
            if split == "val":
                written["seg"].append(seg)
                written["depth"].append(mm)
    return written


def spec(task: str, target: str, **protocol) -> dict:
    data = {**target_defaults(target), "source": "real"}
    protocol = {**task_defaults(task, target), **TINY, **protocol}
    return {"task": task, "data": data, "protocol": protocol, "device": "cpu"}


def ctx(backbone: Path, tmp: Path, root: Path, target: str) -> TaskContext:
    return TaskContext(backbone, "k" * 16, tmp / "cache", tmp / "work", roots={target: str(root)})


# ----------------------------------------------------------------------------- finetuning on mixed sizes


def test_segmentation_on_mixed_sizes_scores_every_labelled_val_pixel(backbone: Path, tmp_path: Path) -> None:
    written = make_nyud(tmp_path / "nyud")
    out = run_task(spec("segmentation", "nyud_seg"), ctx(backbone, tmp_path, tmp_path / "nyud", "nyud_seg"))
    assert out["metric"] == "miou" and 0 < out["value"] <= 100 and math.isfinite(out["losses"][0][0])
    assert out["val_pixels"] == sum(int((s != 0).sum()) for s in written["seg"])  # 0 = unlabelled = ignored


def test_depth_on_mixed_sizes_scores_every_valid_val_pixel(backbone: Path, tmp_path: Path) -> None:
    written = make_nyud(tmp_path / "nyud")
    out = run_task(spec("depth", "nyud_depth"), ctx(backbone, tmp_path, tmp_path / "nyud", "nyud_depth"))
    assert out["metric"] == "rmse" and math.isfinite(out["value"]) and 0 < out["value"] < 10  # metres
    assert out["val_pixels"] == sum(int((d > 0).sum()) for d in written["depth"])


def test_evaluation_equals_per_image_scoring(backbone: Path, tmp_path: Path) -> None:
    """Batches of equal-size images give the metric of scoring each image alone, at its own size."""
    make_nyud(tmp_path)
    val = load_dense({**target_defaults("nyud_depth"), "source": "real"}, "val", None, {"nyud_depth": str(tmp_path)})
    protocol = DenseProtocol(**{**task_defaults("depth", "nyud_depth"), **TINY, "eval_batch_size": 3})
    torch.manual_seed(0)
    model = build_model(backbone, 1, protocol).eval()
    value, pixels = evaluate(model, val, protocol, True, "cpu")
    sse, n = 0.0, 0
    with torch.no_grad():
        for image, depth in zip(val.images, val.depth):
            pred = model(normalize(image[None]))[0, 0]
            assert pred.shape == depth.shape  # cropped back to the image's own size
            sse += float(((pred.double() - depth.double())[depth > 0] ** 2).sum())
            n += int((depth > 0).sum())
    assert pixels == n and value == pytest.approx(math.sqrt(sse / n), rel=1e-5)


def test_a_list_of_images_trains_and_scores_as_the_stacked_tensor(backbone: Path, tmp_path: Path) -> None:
    """One code path: the bias world's stacked split, given as lists of per-image tensors, gives the same numbers."""
    data = {**target_defaults("voc12_seg"), "image_size": 32, "n_train": 8, "n_val": 4, "n_test": 4}
    train, val = (load_dense(data, s, tmp_path / "cache") for s in ("train", "val"))

    def as_list(d: DenseSet) -> DenseSet:
        return DenseSet(list(d.images), d.num_classes, d.class_names, class_mask=list(d.class_mask))

    protocol = DenseProtocol(**{**task_defaults("segmentation", "voc12_seg"), **TINY, "batch_size": 4})
    scores = []
    for k, (tr, va) in enumerate(((train, val), (as_list(train), as_list(val)))):
        model = train_run(tr, protocol, False, 0, TaskContext(backbone, "k" * 16, tmp_path, tmp_path / f"w{k}"))
        scores.append((model.losses, evaluate(model, va, protocol, False, "cpu")))
    assert scores[0] == scores[1] and scores[0][1][1] == int((val.class_mask != 255).sum())


# ----------------------------------------------------------------------------- bad splits


def test_image_and_mask_of_different_sizes_names_the_file(backbone: Path, tmp_path: Path) -> None:
    make_nyud(tmp_path / "nyud")
    bad = tmp_path / "nyud" / "segmentation" / "000005.png"
    Image.fromarray(np.ones((20, 20), np.uint8)).save(bad)
    with pytest.raises(ValueError, match=r"(?s)nyud_seg val: image 1 \(.*images/000005.png\).*\(20, 20\)"):
        run_task(spec("segmentation", "nyud_seg"), ctx(backbone, tmp_path, tmp_path / "nyud", "nyud_seg"))


def test_empty_split_fails_before_training(backbone: Path, tmp_path: Path) -> None:
    make_nyud(tmp_path / "nyud")
    (tmp_path / "nyud" / "train.txt").write_text("\n")
    with pytest.raises(ValueError, match="nyud_depth train: the split is empty"):
        run_task(spec("depth", "nyud_depth"), ctx(backbone, tmp_path, tmp_path / "nyud", "nyud_depth"))
    assert not (tmp_path / "work").exists()  # nothing was started


# ----------------------------------------------------------------------------- the official NYUD-v2 .mat

H, W, N = 5, 7, 4  # H != W: a swapped axis changes the shapes


def write_official_mat(root: Path, images: np.ndarray | None = None, depths: np.ndarray | None = None) -> None:
    """MATLAB v7.3 (HDF5 with a 512-byte userblock). MATLAB arrays are column-major: images (H,W,3,N) and depths
    (H,W,N) land in HDF5 with the axes reversed, (N,3,W,H) and (N,W,H); numpy's .T writes exactly that."""
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w", userblock_size=512) as f:
        if images is not None:
            f.create_dataset("images", data=images.T)
        if depths is not None:
            f.create_dataset("depths", data=depths.T)
    with open(root / "nyu_depth_v2_labeled.mat", "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")
    # splits.mat (MATLAB v5): 1-based column vectors of doubles, as in the official file
    savemat(root / "splits.mat", {"trainNdxs": np.array([[2.0], [4.0], [1.0]]), "testNdxs": np.array([[3.0]])})


def matlab_arrays() -> tuple[np.ndarray, np.ndarray]:
    """images (H,W,3,N) uint8 and depths (H,W,N) float32 metres, every entry distinct within its image."""
    h, w, c, n = np.meshgrid(np.arange(H), np.arange(W), np.arange(3), np.arange(N), indexing="ij")
    images = (n * 60 + c * 20 + h * 3 + w % 3).astype(np.uint8)
    depths = (1.0 + np.arange(N)[None, None] + 0.1 * np.arange(H)[:, None, None] + 0.01 * np.arange(W)[None, :, None])
    return images, depths.astype(np.float32)


def test_nyud_official_mat_images_depths_and_split(tmp_path: Path) -> None:
    images, depths = matlab_arrays()
    write_official_mat(tmp_path, images, depths)
    roots = {"nyud_depth": str(tmp_path)}
    train = load_dense({**target_defaults("nyud_depth"), "source": "real"}, "train", None, roots)
    assert len(train.images) == len(train.depth) == 3 and train.num_classes == 0
    for i, k in enumerate([1, 3, 0]):  # trainNdxs 2, 4, 1 (1-based)
        image, depth = train.images[i], train.depth[i]
        assert image.dtype == torch.uint8 and image.shape == (3, H, W)
        assert depth.dtype == torch.float32 and depth.shape == (H, W)
        np.testing.assert_array_equal(image.numpy(), images[..., k].transpose(2, 0, 1))
        np.testing.assert_array_equal(depth.numpy(), depths[..., k])
    val = load_dense({**target_defaults("nyud_depth"), "source": "real"}, "val", None, roots)
    assert len(val.images) == 1 and val.depth[0][2, 5].item() == pytest.approx(3.0 + 0.2 + 0.05)  # testNdxs 3


def test_nyud_official_mat_malformed_files(tmp_path: Path) -> None:
    images, depths = matlab_arrays()

    def load() -> None:
        load_dense({**target_defaults("nyud_depth"), "source": "real"}, "train", None, {"nyud_depth": str(tmp_path)})

    write_official_mat(tmp_path, images, None)  # no depths
    with pytest.raises(DatasetLayoutError, match="(?s)not the official labelled set.*'depths'"):
        load()
    (tmp_path / "nyu_depth_v2_labeled.mat").write_bytes(b"\x89HDF\r\n truncated")
    with pytest.raises(DatasetLayoutError, match="(?s)nyu_depth_v2_labeled.mat is not the official.*HDF5"):
        load()
    write_official_mat(tmp_path, images.transpose(3, 0, 1, 2), depths)  # (N,H,W,3): not MATLAB's order
    with pytest.raises(DatasetLayoutError, match=r"expected images \(N,3,W,H\) uint8"):
        load()
    write_official_mat(tmp_path, images[..., :1], depths[..., :1])  # one image; trainNdxs reaches 4
    with pytest.raises(DatasetLayoutError, match=r"splits.mat indexes images 1..4 \(1-based\) but .* holds 1"):
        load()
    write_official_mat(tmp_path, images, depths)
    savemat(tmp_path / "splits.mat", {"testNdxs": np.array([[1.0]])})
    with pytest.raises(DatasetLayoutError, match="cannot read trainNdxs"):
        load()
