"""Named protocol versions (issue 8): MoCo v1's main_lincls and its R50-C4 VOC detector next to today's defaults."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from pretrain.backbones import load_backbone
from transfer.data import load_dense, target_defaults
from transfer.detection import DetectionProtocol, Res5Head, build_detector, precise_bn
from transfer.lincls import LinclsProtocol
from transfer.tasks import TaskContext, run_task, task_defaults

from tests.test_dense import SMOKE_DET

SMOKE_DET = {**SMOKE_DET, "pooler_size": 4, "representation_size": 256}  # + the smoke profile's box head


def det_spec(protocol: dict) -> dict:
    spec = {"task": "detection", "data": target_defaults("voc_det"), "device": "cpu"}
    spec["data"].update(image_size=32, n_train=32, n_test=16)
    spec["protocol"] = {**task_defaults("detection", "voc_det"), **protocol}
    return spec


# ----------------------------------------------------------------------------- main_lincls


def test_lincls_versions_fill_their_fields_and_an_explicit_field_wins() -> None:
    v2, v1 = LinclsProtocol(), LinclsProtocol(version="mocov1")
    schedule = ("epochs", "batch_size", "lr", "momentum", "milestones")
    assert v2.version == "mocov2" and v2.weight_decay == 1e-4  # the paper's A.2
    assert v1.weight_decay == 0.0  # MoCo Sec. 4.1: lr 30, weight decay 0
    assert [getattr(v1, k) for k in schedule] == [getattr(v2, k) for k in schedule] == [100, 256, 30.0, 0.9, (0.6, 0.8)]
    assert LinclsProtocol(version="mocov1", weight_decay=1e-4, epochs=4).weight_decay == 1e-4
    assert LinclsProtocol(version="mocov1", epochs=4).epochs == 4
    with pytest.raises(ValueError, match="unknown lincls protocol version 'mocov3'; valid: mocov2, mocov1"):
        LinclsProtocol(version="mocov3")
    with pytest.raises(ValueError, match="weight_decay >= 0"):
        LinclsProtocol(weight_decay=-1.0)


# ----------------------------------------------------------------------------- detection


def test_detection_versions_fill_their_fields_and_an_explicit_field_wins() -> None:
    c5, c4 = DetectionProtocol(), DetectionProtocol(version="mocov1_c4")
    assert (c5.version, c5.arch, c5.pooler_size, c5.precise_bn) == ("dilated_c5", "dilated_c5", 7, 0.0)
    assert (c4.arch, c4.pooler_size, round(c4.precise_bn * c4.iterations)) == ("c4", 14, 200)
    shared = ("iterations", "batch_size", "lr", "milestones", "warmup", "train_sizes", "test_size", "roi_batch_size")
    assert [getattr(c4, k) for k in shared] == [getattr(c5, k) for k in shared]  # MoCo's schedule for both
    assert (c4.iterations, c4.batch_size, c4.test_size) == (24000, 16, 800)
    assert (c4.train_sizes[0], c4.train_sizes[-1]) == (480, 800)
    assert DetectionProtocol(version="mocov1_c4", pooler_size=4, precise_bn=0.0).pooler_size == 4
    assert DetectionProtocol(version="mocov1_c4", arch="dilated_c5").arch == "dilated_c5"
    with pytest.raises(ValueError, match="unknown detection protocol version 'c4'; valid: dilated_c5, mocov1_c4"):
        DetectionProtocol(version="c4")
    with pytest.raises(ValueError, match="unknown detection arch 'fpn'; valid: dilated_c5, c4"):
        DetectionProtocol(arch="fpn")


def test_a_spec_chooses_the_version_and_the_profile_still_wins() -> None:
    """`transfer.protocol.version=...` on the command line, or `protocol: {version: ...}` in a column."""
    from harness.planner import transfer_spec
    from harness.spec import load_profile, load_table

    assert task_defaults("detection", "voc_det")["pooler_size"] is None  # left for the version to fill
    table3, smoke, paper = load_table("table3"), load_profile("smoke"), load_profile("paper")
    spec = transfer_spec(table3, "Det. VOC", smoke, {"protocol.version": "mocov1_c4"})
    c4 = DetectionProtocol(**spec["protocol"])
    assert (c4.arch, c4.pooler_size, c4.iterations) == ("c4", 4, 3)  # smoke's pooler_size and iterations win
    assert DetectionProtocol(**transfer_spec(table3, "Det. VOC", paper, {})["protocol"]).arch == "dilated_c5"

    table4 = load_table("table4")
    column = {**table4.column_specs["ImageNet"], "protocol": {"version": "mocov1"}}
    table = dataclasses.replace(table4, column_specs={**table4.column_specs, "ImageNet": column})
    v1 = LinclsProtocol(**transfer_spec(table, "ImageNet", paper, {})["protocol"])
    assert (v1.version, v1.weight_decay, v1.epochs) == ("mocov1", 0.0, 100)
    v1_smoke = LinclsProtocol(**transfer_spec(table, "ImageNet", smoke, {})["protocol"])
    assert (v1_smoke.weight_decay, v1_smoke.epochs) == (0.0, 1)  # smoke's epochs win
    assert LinclsProtocol(**transfer_spec(table4, "ImageNet", paper, {})["protocol"]).weight_decay == 1e-4


def test_c4_detector_runs_res4_for_the_rpn_and_the_backbones_res5_as_box_head(backbone: Path) -> None:
    protocol = DetectionProtocol(**{**SMOKE_DET, "version": "mocov1_c4", "pooler_size": 14})
    model = build_detector(backbone, num_classes=3, protocol=protocol).eval()
    loaded = load_backbone(backbone)
    head = model.roi_heads.box_head
    assert isinstance(head, Res5Head)
    state, res5 = head.res5.state_dict(), loaded.layer4.state_dict()
    assert state.keys() == res5.keys() and all(torch.equal(state[k], res5[k]) for k in res5)
    assert not any(p is q for p in model.backbone.parameters() for q in head.parameters())  # res5 only in the head
    with torch.no_grad():
        fmap = model.backbone(torch.zeros(1, 3, 64, 96))  # res4: 256 channels at stride 16
        assert fmap.shape == (1, 256, 4, 6) and model.backbone.out_channels == 256
        out = head(torch.randn(5, 256, 14, 14))  # res5 (stride 2: 14 -> 7), BN, average pooling
    assert out.shape == (5, 512) and model.roi_heads.box_predictor.cls_score.in_features == 512
    assert model.roi_heads.box_roi_pool.output_size == (14, 14)
    c5 = build_detector(backbone, 3, DetectionProtocol(**SMOKE_DET))  # the default: dilated res5 in the trunk
    assert c5.backbone.out_channels == 512 and c5.roi_heads.box_roi_pool.output_size == (4, 4)


def test_precise_bn_sets_running_stats_to_the_mean_of_batch_stats(backbone: Path, cache: Path) -> None:
    protocol = DetectionProtocol(**{**SMOKE_DET, "version": "mocov1_c4", "iterations": 24000, "precise_bn": 2 / 24000})
    train = load_dense(det_spec({})["data"], "train", cache / "biasworld")
    torch.manual_seed(0)
    model = build_detector(backbone, train.num_classes, protocol)
    seen = []
    model.roi_heads.box_head.norm.register_forward_pre_hook(lambda m, x: seen.append(x[0].detach()))
    assert precise_bn(model, train, protocol, seed=0, device="cpu") == 2 and len(seen) == 2
    norm = model.roi_heads.box_head.norm
    means = torch.stack([x.mean((0, 2, 3)) for x in seen])
    variances = torch.stack([x.transpose(0, 1).flatten(1).var(1) for x in seen])  # unbiased, as BN's running_var
    assert torch.allclose(norm.running_mean, means.mean(0), atol=1e-5)
    assert torch.allclose(norm.running_var, variances.mean(0), rtol=1e-4, atol=1e-5)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(int(m.num_batches_tracked) == 2 and m.momentum == 0.1 for m in bns)
    assert precise_bn(model, train, DetectionProtocol(**{**SMOKE_DET, "precise_bn": 0.0}), 0, "cpu") == 0


def test_c4_detection_trains_and_scores_at_smoke_size(backbone: Path, cache: Path, tmp_path: Path) -> None:
    seen = []
    ctx = TaskContext(backbone, "k" * 16, cache, tmp_path, progress=seen.append)
    out = run_task(det_spec({**SMOKE_DET, "version": "mocov1_c4"}), ctx)
    assert out["metric"] == "ap"
    assert all(math.isfinite(out[k]) and 0 <= out[k] <= 100 for k in ("value", "ap50", "ap75"))
    assert out["ap50"] >= out["value"] - 1e-9 and len(out["losses"][0]) >= 1 and math.isfinite(out["losses"][0][0])
    assert {"stage": "precise BN run 1/1"} in seen and (tmp_path / "run0.pt").exists()


def test_detection_batches_pad_to_the_largest_image_as_detectron2(backbone: Path) -> None:
    """size_divisible 1 (detectron2's SIZE_DIVISIBILITY 0 for ResNet C4 / DC5): 64 and 80 px images batch at 80 px,
    not at torchvision's multiple of 32 (96 px); the old padding stays available."""
    protocol = DetectionProtocol(**{**SMOKE_DET, "train_sizes": (64, 80), "max_size": 128})
    model = build_detector(backbone, 3, protocol)
    images = [torch.rand(3, 64, 64), torch.rand(3, 80, 80)]
    model.transform.min_size = (80,)  # every image to 80 px: the batch is 80 x 80
    assert model.transform(images)[0].tensors.shape[-2:] == (80, 80)
    old = build_detector(backbone, 3, DetectionProtocol(**{**SMOKE_DET, "max_size": 128, "size_divisible": 32}))
    old.transform.min_size = (80,)
    assert old.transform(images)[0].tensors.shape[-2:] == (96, 96)
    with pytest.raises(ValueError, match="size_divisible must be >= 1"):
        DetectionProtocol(size_divisible=0)
