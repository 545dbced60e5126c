"""Finetuning transfer tasks (Table 3): dilation, bias-world dense data, registered runners, resume, learning."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from pretrain.backbones import build_backbone
from pretrain.data.biasworld import generate
from transfer.data import load_dense, target_defaults
from transfer.dense import DenseProtocol, Preempted, dilate_last_block, trunk
from transfer.tasks import TaskContext, run_task, task_defaults

SMOKE = {"epochs": 1, "batch_size": 8, "crop_size": 32, "n_runs": 1, "threads": 1}
SMOKE_DET = {
    "iterations": 3, "batch_size": 4, "train_sizes": [32, 48], "test_size": 48, "max_size": 96,
    "anchor_sizes": [8, 16, 32], "rpn_pre_nms": [200, 100], "rpn_post_nms": [50, 30], "rpn_batch_size": 32,
    "roi_batch_size": 32, "n_runs": 1, "threads": 1,
}  # fmt: skip


def spec(task: str, target: str, protocol: dict, **data) -> dict:
    out = {"task": task, "data": target_defaults(target), "protocol": task_defaults(task, target), "device": "cpu"}
    out["data"].update({"image_size": 32, "n_train": 32, "n_val": 16, "n_test": 16, **data})
    out["protocol"].update(protocol)
    return out


def ctx(backbone: Path, cache: Path, workdir: Path, progress=lambda info: None) -> TaskContext:
    return TaskContext(backbone, "k" * 16, cache, workdir, progress=progress)


# ----------------------------------------------------------------------------- dilation


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_dilation_keeps_weights_and_gives_output_stride_16(arch: str) -> None:
    net = build_backbone(arch)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    body = trunk(net).eval()
    after = body.state_dict()  # the same tensors, in the same order, under the Sequential's names
    assert len(after) == len(before) and all(torch.equal(a, b) for a, b in zip(before.values(), after.values()))
    with torch.no_grad():
        assert body(torch.randn(1, 3, 64, 96)).shape == (1, net.out_dim, 4, 6)  # 64/16, 96/16


def test_dilation_matches_torchvision_for_bottleneck() -> None:
    mine = dilate_last_block(torchvision.models.resnet50())
    ref = torchvision.models.resnet50(replace_stride_with_dilation=[False, False, True])
    convs = lambda m: [(c.stride, c.dilation, c.padding) for c in m.layer4.modules() if isinstance(c, torch.nn.Conv2d)]  # noqa: E731
    assert convs(mine) == convs(ref)
    assert (2, 2) in [c[1] for c in convs(mine)]  # dilated, not only un-strided
    odd = torchvision.models.resnet18()
    odd.layer4 = torch.nn.Sequential(torch.nn.ReLU())
    with pytest.raises(TypeError, match="BasicBlock or Bottleneck"):
        dilate_last_block(odd)


# ----------------------------------------------------------------------------- data and protocol


def test_dense_targets_from_the_bias_world(cache: Path) -> None:
    seg = load_dense(spec("segmentation", "voc12_seg", {})["data"], "train", cache)
    det = load_dense(spec("detection", "voc_det", {})["data"], "train", cache)
    assert seg.images.shape == (32, 3, 32, 32) and seg.class_mask.shape == (32, 32, 32)
    assert seg.num_classes == det.num_classes + 1 == 21 and seg.class_names[0] == "background"
    assert int(seg.class_mask.max()) < seg.num_classes and (seg.depth > 0).all()
    # every box holds pixels of its class in the class mask (mask ids are class + 1)
    for i in range(8):
        for box, label in zip(det.boxes[i].long().tolist(), det.box_labels[i].tolist()):
            x0, y0, x1, y1 = box
            assert (seg.class_mask[i, y0:y1, x0:x1] == label + 1).any()
    city = generate("cityscapes", n=2, size=32, dense=True)
    street = generate("street", n=2, size=32, dense=True)
    assert not np.array_equal(city.images, street.images) and city.num_classes == street.num_classes == 5
    nyud = load_dense(spec("depth", "nyud_depth", {})["data"], "val", cache)
    assert nyud.depth.shape == (16, 32, 32) and nyud.depth.dtype == torch.float32 and float(nyud.depth.std()) > 0


def test_protocol_defaults_per_target_and_loud_errors() -> None:
    voc, city, nyud = (task_defaults("segmentation", t) for t in ("voc12_seg", "cityscapes", "nyud_seg"))
    assert (voc["epochs"], voc["optimizer"], voc["head_dilation"], voc["crop_size"]) == (45, "sgd", 6, 513)
    assert [round(m * 45) for m in voc["milestones"]] == [30, 40]
    assert (city["epochs"], city["optimizer"], city["schedule"], city["head_dilation"]) == (150, "adam", "poly", 1)
    assert (nyud["head"], nyud["batch_size"], nyud["epochs"]) == ("deeplabv3", 8, 100)
    assert task_defaults("depth", "nyud_depth") == {**nyud, "metric": "rmse"}
    with pytest.raises(ValueError, match="unknown head 'fcm'; valid: fcn, deeplabv3"):
        DenseProtocol(head="fcm")
    with pytest.raises(ValueError, match="target dataset of task 'segmentation'"):
        task_defaults("segmentation", "voc_det")


# ----------------------------------------------------------------------------- the runners


def test_segmentation_and_depth_runners(backbone: Path, cache: Path, tmp_path: Path) -> None:
    seen = []
    out = run_task(spec("segmentation", "nyud_seg", {**SMOKE, "n_runs": 2}), ctx(backbone, cache, tmp_path / "s", seen.append))
    assert out["metric"] == "miou" and 0 <= out["value"] <= 100 and len(out["runs"]) == 2
    assert out["value"] == pytest.approx(np.mean(out["runs"])) and out["std"] == pytest.approx(np.std(out["runs"], ddof=1))
    assert {"stage": "finetune run 2/2", "epoch": 1, "epochs": 1} in [{k: i.get(k) for k in ("stage", "epoch", "epochs")} for i in seen]
    depth = run_task(spec("depth", "nyud_depth", SMOKE), ctx(backbone, cache, tmp_path / "d"))
    assert depth["metric"] == "rmse" and math.isfinite(depth["value"]) and depth["value"] > 0


def test_detection_runner(backbone: Path, cache: Path, tmp_path: Path) -> None:
    out = run_task(spec("detection", "voc_det", SMOKE_DET), ctx(backbone, cache, tmp_path))
    assert out["metric"] == "ap" and all(0 <= out[k] <= 100 for k in ("value", "ap50", "ap75"))
    assert out["ap50"] >= out["value"] - 1e-9 and math.isfinite(out["losses"][0][0])
    assert (tmp_path / "run0.pt").exists()


@pytest.fixture(scope="module")
def uninterrupted(backbone: Path, cache: Path, tmp_path_factory) -> dict:
    return run_task(spec("segmentation", "voc12_seg", {**SMOKE, "epochs": 3}, n_train=48), ctx(backbone, cache, tmp_path_factory.mktemp("u")))


def test_resume_after_preemption_equals_uninterrupted(uninterrupted: dict, backbone: Path, cache: Path, tmp_path: Path) -> None:
    def preempt(info: dict) -> None:
        if info.get("epoch") == 2:
            raise Preempted

    job = spec("segmentation", "voc12_seg", {**SMOKE, "epochs": 3}, n_train=48)
    with pytest.raises(Preempted):
        run_task(job, ctx(backbone, cache, tmp_path, preempt))
    assert len(torch.load(tmp_path / "run0.pt", weights_only=False)["losses"]) == 2
    resumed = run_task(job, ctx(backbone, cache, tmp_path))
    assert resumed["losses"] == uninterrupted["losses"] and resumed["value"] == uninterrupted["value"]


def test_loss_decreases_on_the_bias_world(uninterrupted: dict) -> None:
    losses = uninterrupted["losses"][0]
    assert len(losses) == 3 and losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("profile", ["smoke", "tiny"])
def test_profile_task_sections_resolve_to_valid_protocols(profile: str) -> None:
    from harness.spec import apply_task_sizes, load_profile
    from transfer.tasks import get_task

    prof = load_profile(profile)
    for task, target in (("segmentation", "nyud_seg"), ("depth", "nyud_depth"), ("detection", "voc_det")):
        job = apply_task_sizes(spec(task, target, {}), prof, task, target)  # typos raise
        protocol = get_task(task).protocol(**job["protocol"])
        assert protocol.n_runs == 1 and job["protocol"] != task_defaults(task, target)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_finetuning_optimizers_are_fused_and_step_as_the_per_tensor_ones(optimizer: str) -> None:
    """Finetuning's SGD and Adam run torch's fused kernels on CPU (Adam 6x, SGD 2x a step here): the same
    weights as the per-tensor loop after a few steps, to float rounding."""
    from transfer.dense import make_optimizer

    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(64, 32)), torch.nn.Parameter(torch.randn(32))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    protocol = DenseProtocol(optimizer=optimizer, lr=0.01)
    fast = make_optimizer(a, protocol)
    assert fast.defaults["fused"]
    loop = type(fast)(b, **{**fast.defaults, "fused": None})
    for _ in range(3):
        for params, opt in ((a, fast), (b, loop)):
            opt.zero_grad()
            ((params[0] @ params[1]) ** 2).sum().backward()
            opt.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
