"""Video propagation (DAVIS J&F), segment retrieval, VOC07 SVM, main_lincls and CAMs on smoke-size bias-world data."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.backbones import build_backbone, save_backbone
from transfer.data import target_defaults
from transfer.tasks import TaskContext, get_task, task_defaults, task_spec_defaults
from transfer.video import VideoProtocol, segment_clip
from transfer.video_metrics import contour_accuracy, davis_scores, region_similarity, score_clip


def square(size: int, top: int, left: int, side: int) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[top : top + side, left : left + side] = True
    return m


# ----------------------------------------------------------------------------- metrics


def test_region_and_contour_on_simple_shapes():
    a = square(64, 10, 10, 20)
    assert region_similarity(a, a) == 1.0 and contour_accuracy(a, a) == 1.0
    far = square(64, 40, 40, 20)
    assert region_similarity(a, far) == 0.0 and contour_accuracy(a, far) == 0.0
    shifted = square(64, 10, 14, 20)  # 4 px right: overlap 16x20, union 24x20
    assert region_similarity(a, shifted) == pytest.approx(16 / 24)
    # tolerance ceil(0.008 * diagonal 90.5) = 1 px: a 1 px shift keeps F at 1, a 4 px shift does not
    assert contour_accuracy(a, square(64, 10, 11, 20)) == 1.0
    assert 0.0 < contour_accuracy(a, shifted) < 1.0
    assert region_similarity(np.zeros((8, 8)), np.zeros((8, 8))) == 1.0  # hidden and predicted absent


def test_static_clip_with_perfect_features_scores_one():
    """Frames identical; features = one-hot instance ids at full resolution: every top-k neighbour of a pixel
    belongs to its own object, so propagation is exact and J&F = 100."""
    gt0 = torch.zeros(32, 32, dtype=torch.int64)
    gt0[4:14, 4:20], gt0[18:30, 10:26] = 1, 2
    masks = gt0.expand(6, 32, 32).clone()
    feats = torch.nn.functional.one_hot(masks, 3).permute(0, 3, 1, 2).float()  # (T, 3, 32, 32)
    for version in ("videowalk", "dino"):
        pred = segment_clip(feats, masks[0], VideoProtocol(version=version))
        assert torch.equal(pred, masks)
        assert davis_scores([score_clip(pred, masks)])["jf"] == 100.0
    wrong = masks.clone()
    wrong[1:] = 0
    assert davis_scores([score_clip(wrong, masks)])["jf"] == 0.0


def test_video_protocol_versions_and_bad_input():
    p = VideoProtocol(version="dino")
    assert (p.n_last_frames, p.topk, p.radius, p.temperature) == (7, 5, 12, 0.1)
    assert VideoProtocol(version="dino", topk=3).topk == 3
    with pytest.raises(ValueError, match="videowalk"):
        VideoProtocol(version="crw")


# ----------------------------------------------------------------------------- runners at smoke size


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vr")
    torch.manual_seed(0)
    path = save_backbone(build_backbone("resnet18"), "resnet18", tmp / "backbone.pt")
    return TaskContext(backbone_path=path, source_key="f" * 64, cache_dir=tmp / "cache", workdir=tmp / "work")


def smoke_spec(task: str, target: str, data: dict, protocol: dict, **top) -> dict:
    spec = {"task": task, "data": target_defaults(target), "protocol": task_defaults(task, target), "device": "cpu"}
    spec.update(task_spec_defaults(task), **top)
    spec["data"].update(data)
    spec["protocol"].update(threads=1, **protocol) if "threads" in spec["protocol"] else spec["protocol"].update(protocol)
    return spec


def test_video_runner(ctx):
    spec = smoke_spec("video", "davis", {"n_videos": 3, "frames": 6, "image_size": 64}, {}, image_size=64)
    out = get_task("video").run(spec, ctx)
    assert out["metric"] == "jf" and 0.0 < out["value"] <= 100.0 and math.isfinite(out["j_mean"])
    assert out["n_clips"] == 3 and out["n_objects"] >= 3


def test_retrieval_runner(ctx):
    spec = smoke_spec("retrieval", "voc12_seg", {"n_train": 16, "n_val": 8, "image_size": 64}, {}, image_size=64)
    out = get_task("retrieval").run(spec, ctx)
    assert out["metric"] == "miou" and 0.0 < out["value"] <= 100.0
    assert out["subset"] == ["person", "car", "bus", "cat", "dog", "sign", "light"]
    assert 16 <= out["n_train_regions"] <= 16 * 15 and math.isfinite(out["miou_subset"])


def test_kmeans_separates_blobs():
    from transfer.retrieval import kmeans

    x = torch.cat([torch.randn(20, 4) * 0.1, torch.randn(20, 4) * 0.1 + 5])[None]
    ids = kmeans(x, 2, 20, [torch.Generator().manual_seed(0)])[0]
    assert len(set(ids[:20].tolist())) == 1 and len(set(ids[20:].tolist())) == 1 and ids[0] != ids[20]


def test_svm_runner_matches_sklearn(ctx):
    from sklearn.svm import LinearSVC

    from transfer.data import load_split
    from transfer.features import data_id
    from transfer.metrics import mean_average_precision

    spec = smoke_spec("svm", "voc07", {"n_train": 48, "n_val": 16, "n_test": 48, "image_size": 32}, {}, image_size=32)
    out = get_task("svm").run(spec, ctx)
    assert out["metric"] == "map11" and 0.0 < out["value"] <= 100.0
    # the same cached features, one direct LinearSVC per class with the repo's arguments
    tag = f"{data_id(spec['data'], 32)}-crop{224 / 256:.4f}"
    feats = {s: torch.load(ctx.cache_dir / "features" / ("f" * 16) / f"{tag}-{s}.pt") for s in ("train", "val", "test")}
    y = {s: load_split(spec["data"], s, ctx.cache_dir / "biasworld")[1] for s in ("train", "val", "test")}
    norm = lambda x: (x / x.norm(dim=1, keepdim=True)).double().numpy()  # noqa: E731
    x_tv, y_tv = norm(torch.cat([feats["train"], feats["val"]])), np.concatenate([y["train"], y["val"]])
    scores = np.zeros(y["test"].shape)
    for c in range(y_tv.shape[1]):
        svm = LinearSVC(C=0.5, class_weight={1: 2, -1: 1}, loss="squared_hinge", max_iter=2000, dual=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            svm.fit(x_tv, np.where(y_tv[:, c] > 0, 1, -1))
        scores[:, c] = svm.decision_function(norm(feats["test"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert out["value"] == pytest.approx(mean_average_precision(scores, y["test"]), abs=1e-9)


def test_lincls_runner(ctx):
    spec = smoke_spec("lincls", "imagenet", {"n_train": 64, "n_val": 32, "image_size": 32}, {"epochs": 2, "batch_size": 32}, image_size=32)
    out = get_task("lincls").run(spec, ctx)
    assert out["metric"] == "top1" and 0.0 <= out["value"] <= 100.0 and math.isfinite(out["value"])


def test_random_resized_crop_flips_and_keeps_full_box():
    from transfer.lincls import LinclsProtocol, random_resized_crop

    img = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 3, 4, 4)
    p = LinclsProtocol(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    outs = {tuple(random_resized_crop(img, 4, p, torch.Generator().manual_seed(s))[0, 0, 0].tolist()) for s in range(8)}
    assert outs == {(0.0, 1.0, 2.0, 3.0), (3.0, 2.0, 1.0, 0.0)}  # the whole image, flipped or not


# ----------------------------------------------------------------------------- CAM (Figure 6)


def _cam_setup(size: int):
    """A random-init ResNet-18 and a one-vs-rest logistic classifier of the most frequent object_uniform class."""
    from pretrain.data.biasworld import generate
    from transfer.features import extract
    from transfer.linear import LinearProtocol, fit_logreg

    world = generate("object_uniform", split="train", n=256, size=size, seed=0)
    images = torch.from_numpy(np.ascontiguousarray(world.images.transpose(0, 3, 1, 2)))
    torch.manual_seed(0)
    backbone = build_backbone("resnet18").eval()
    binary = (world.labels == np.bincount(world.labels).argmax()).astype(np.int64)
    fit = fit_logreg(extract(backbone, images, size), binary, 1.0, LinearProtocol(max_iter=200, threads=1))
    idx = np.flatnonzero(binary)[:4]
    assert len(idx) == 4
    return world, images, backbone, torch.tensor(fit["coef"], dtype=torch.float32), binary, idx  # coef (2, D)


def test_cam_grid_png_and_cam_is_the_class_score(tmp_path):
    from transfer.cam import CELL, cam_grid, class_activation_maps
    from transfer.features import extract

    world, images, backbone, weight, binary, idx = _cam_setup(64)
    cams = cam_grid(backbone, weight, images[idx], binary[idx], tmp_path / "cam.png")
    with Image.open(tmp_path / "cam.png") as im:
        assert im.size == (4 * CELL, 2 * CELL)
    assert cams.shape == (4, 64, 64) and cams.min() == 0.0 and cams.max() == 1.0
    raw, pred = class_activation_maps(backbone, weight, images[idx], raw=True)
    pooled = extract(backbone, images[idx], 64) @ weight.T  # (4, 2) class scores less the bias
    assert torch.allclose(raw.mean((1, 2)), pooled[torch.arange(4), pred], rtol=1e-4, atol=1e-5)


@pytest.mark.xfail(strict=False, reason="random-init backbone: its CAMs do not localise the object (measured: "
                   "peak inside the box in 1/4 images at 64 px); meant for pretrained backbones")
def test_cam_peaks_in_object_box():
    from transfer.cam import class_activation_maps

    world, images, backbone, weight, binary, idx = _cam_setup(64)
    cams, _ = class_activation_maps(backbone, weight, images[idx])
    o, inside = world.objects, 0
    for k, i in enumerate(idx):  # the main object: the one of the image's class
        box = o["box"][np.flatnonzero((o["image"] == i) & (o["class"] == world.labels[i]))[0]]
        y, x = np.unravel_index(int(cams[k].argmax()), cams[k].shape)
        inside += int(box[0] <= x <= box[2] and box[1] <= y <= box[3])
    assert inside >= 3, f"CAM peak inside the object box in {inside}/4 images"
