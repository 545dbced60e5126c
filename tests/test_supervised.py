"""Supervised pretraining (the reference row): labels reach each image in batch order on both data
paths, multi-label sets train with a per-class sigmoid loss, bad labels fail, and the harness runs it
as a method of its own."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from harness.claims import parse_claims
from harness.planner import plan
from harness.spec import load_profile, load_table
from pretrain.methods import method_config, method_defaults
from pretrain.train import pretrain, with_classes

N = 128


def config(**kw):
    base = {"supervised.arch": "resnet18", "aug.size": 16, "batch_size": 32, "epochs": 4,
            "lr": 0.01, "threads": 1}  # fmt: skip
    return method_config("supervised", {**base, **kw})


def coloured(labels: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x 24 x 24: the label's colour (class 0 red, class 1 blue) under pixel noise."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 60, (len(labels), 3, 24, 24), generator=g)
    base = torch.zeros(len(labels), 3, 1, 1, dtype=torch.long)
    base[:, 0] = 190 * (labels == 0).view(-1, 1, 1)
    base[:, 2] = 190 * (labels == 1).view(-1, 1, 1)
    return (base + noise).to(torch.uint8)


LABELS = torch.randint(0, 2, (N,), generator=torch.Generator().manual_seed(1))


def test_labels_follow_their_images_through_the_shuffled_batches(tmp_path: Path) -> None:
    """The colour gives the class away: the loss falls far below ln 2 only if every batch's
    targets are its own images' labels (a misaligned order leaves chance, ~0.69)."""
    images = coloured(LABELS)
    out = pretrain(config(), images, tmp_path / "tensor", labels=LABELS)
    assert out["loss_curve"][-1] < 0.35
    photos = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in images]  # the per-image path
    out = pretrain(config(), photos, tmp_path / "pil", labels=LABELS)
    assert out["loss_curve"][-1] < 0.35
    shuffled = LABELS[torch.randperm(N, generator=torch.Generator().manual_seed(2))]
    out = pretrain(config(), images, tmp_path / "wrong", labels=shuffled)
    assert out["loss_curve"][-1] > 0.6  # the control: labels that do not belong to the images


def test_multi_label_rows_train_a_sigmoid_per_class(tmp_path: Path) -> None:
    rows = torch.stack([LABELS == 0, LABELS == 1, torch.ones(N, dtype=torch.bool)], 1).to(torch.uint8)
    cfg, labels = with_classes(config(epochs=2), rows, N)  # num_classes: the rows' width
    assert cfg.supervised.num_classes == 3 and labels.shape == (N, 3)
    out = pretrain(config(epochs=2), coloured(LABELS), tmp_path, labels=rows)
    assert out["loss_curve"][-1] < out["loss_curve"][0] < math.log(2) + 0.2


def test_num_classes_from_the_spec_is_kept_when_the_labels_fit_it() -> None:
    """A spec's supervised.num_classes wins (a class may have no image in the set); labels beyond
    it, or multi-label rows of another width, fail naming the setting."""
    cfg, _ = with_classes(config(**{"supervised.num_classes": 5}), LABELS, N)
    assert cfg.supervised.num_classes == 5  # the labels alone say 2
    assert with_classes(config(), LABELS, N)[0].supervised.num_classes == 2
    with pytest.raises(ValueError, match=r"num_classes=1, but the labels have class ids up to 1"):
        with_classes(config(**{"supervised.num_classes": 1}), LABELS, N)
    rows = torch.ones(N, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"num_classes=4, but the labels have rows of width 3"):
        with_classes(config(**{"supervised.num_classes": 4}), rows, N)


def test_missing_or_malformed_labels_fail_before_training(tmp_path: Path) -> None:
    images = coloured(LABELS)
    with pytest.raises(ValueError, match="needs the images' labels"):
        pretrain(config(), images, tmp_path / "a")
    with pytest.raises(ValueError, match="class ids >= 0"):
        pretrain(config(), images, tmp_path / "b", labels=LABELS.float())
    with pytest.raises(ValueError, match=rf"for N={N} images"):
        pretrain(config(), images, tmp_path / "c", labels=LABELS[:10])
    with pytest.raises(ValueError, match="one view per image"):
        config(**{"aug.n_small": 2})
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_published_defaults_and_the_harness_row() -> None:
    d = method_defaults("supervised")
    assert (d["batch_size"], d["lr"], d["epochs"], d["weight_decay"]) == (256, 0.1, 90, 1e-4)
    assert d["aug"]["crop_scale"] == [0.08, 1.0] and d["aug"]["jitter_p"] == 0.0
    assert (d["aug"]["grayscale_p"], d["aug"]["blur_p"]) == (0.0, 0.0)
    p = plan(load_table("table2"), load_profile("smoke"), {"method": "supervised"})
    moco = plan(load_table("table2"), load_profile("smoke"), {})
    specs = [j.spec for j in p.jobs.values() if j.kind == "pretrain"]
    assert specs and all(s["method"] == "supervised" and "moco" not in s for s in specs)
    assert all(s["supervised"]["arch"] == "resnet18" for s in specs)  # the profile's size
    assert not set(p.jobs) & set(moco.jobs)  # nothing shared with the MoCo table


def test_supervised_rows_run_through_the_harness(tmp_path: Path, capsys) -> None:
    """Single-label (IN-118K) and multi-label (COCO) bias-world sets, smoke sizes."""
    from harness.cli import main

    code = main(["run", "table2", "--profile", "smoke", "--results", str(tmp_path), "--rows",
                 "IN-118K,COCO", "--columns", "CIFAR10", "method=supervised"])  # fmt: skip
    assert code == 0
    table = (tmp_path / "table2.csv").read_text()
    assert "IN-118K" in table and "COCO" in table and "nan" not in table.lower()


def test_baselines_table_shares_its_rows_with_tables_2_and_3() -> None:
    """The MoCo-v2 row is Tables 2/3's IN-118K row and Supervised is `table2 method=supervised`'s:
    one pretraining each, the transfers too; both claims are against Rand. init. on every column."""
    smoke = load_profile("smoke")
    base = plan(load_table("baselines"), smoke, {})
    t2, t3 = (plan(load_table(t), smoke, {}) for t in ("table2", "table3"))
    sup = plan(load_table("table2"), smoke, {"method": "supervised"})
    assert base.rows["MoCo-v2"] == t2.rows["IN-118K"] == t3.rows["IN-118K"]
    assert base.rows["Supervised"] == sup.rows["IN-118K"] != base.rows["Rand. init."]
    assert len(set(base.jobs) & set(t2.jobs)) == 1 + 4  # the pretraining, CIFAR10 Food Pets SUN
    assert len(set(base.jobs) & set(t3.jobs)) == 1 + 6  # and Table 3's six columns
    assert len(set(base.jobs) & set(sup.jobs)) == 1 + 4
    claims = parse_claims(load_table("baselines"))
    assert {(c.args["row"], c.args["baseline"], len(c.args["columns"])) for c in claims} == {
        ("MoCo-v2", "Rand. init.", 10), ("Supervised", "Rand. init.", 10)}
