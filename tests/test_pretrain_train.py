"""pretrain(): outputs, exact resume, NaN detection, per-image data path, config round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from pretrain.backbones import build_backbone, load_backbone
from pretrain.config import MoCoConfig, PretrainConfig
from pretrain.moco import MoCo
from pretrain.train import pretrain

BATCH = 16


def tiny(**kw) -> PretrainConfig:
    """ResNet-18 on 32 px crops, 4 steps per epoch on DATA."""
    base = {
        "moco": {"arch": "resnet18", "queue_size": 64, "split_bn": 4},
        "aug": {"size": 32},
        "epochs": 2,
        "batch_size": BATCH,
        "lr": 0.06,
        "threads": 2,
    }
    return PretrainConfig.from_dict({**base, **kw})


DATA = torch.randint(
    0,
    256,
    (4 * BATCH + 5, 3, 40, 40),
    dtype=torch.uint8,
    generator=torch.Generator().manual_seed(0),
)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, list[dict]]:
    workdir, seen = tmp_path_factory.mktemp("two"), []
    return pretrain(tiny(), DATA, workdir, progress=seen.append), workdir, seen


def test_two_epochs_write_checkpoint_backbone_and_summary(two_epochs) -> None:
    summary, workdir, seen = two_epochs
    assert summary["epochs"] == 2 and len(summary["loss_history"]) == 2
    assert all(0 < loss < 20 for loss in summary["loss_history"])
    assert summary["images_per_s"] > 0 and summary["wall_s"] > 0
    assert Path(summary["backbone"]) == workdir / "backbone.pt"
    net = load_backbone(summary["backbone"])
    assert not any(type(m).__name__ == "SplitBatchNorm" for m in net.modules())
    assert net(torch.rand(3, 3, 32, 32)).shape == (3, net.out_dim) == (3, 512)
    blob = torch.load(workdir / "checkpoint.pt", weights_only=True)
    assert blob["epoch"] == 2 and blob["loss_history"] == summary["loss_history"]
    assert int(blob["model"]["queue_ptr"]) == 2 * 4 * BATCH % 64
    n_query = len(MoCo(MoCoConfig(arch="resnet18", queue_size=64)).query_parameters())
    # f' is not in the optimizer
    assert len(blob["optimizer"]["param_groups"][0]["params"]) == n_query
    assert seen[-1] == {**seen[-1], "epoch": 2, "epochs": 2, "step": 4, "steps": 4}


def test_resume_after_interruption_gives_the_same_weights(two_epochs, tmp_path: Path) -> None:
    summary, _, _ = two_epochs

    def stop_in_epoch_2(info: dict) -> None:
        if info["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny(), DATA, tmp_path, progress=stop_in_epoch_2)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1
    resumed = pretrain(tiny(), DATA, tmp_path)
    assert resumed["loss_history"] == summary["loss_history"]
    for name, value in weights(Path(summary["backbone"])).items():
        assert torch.equal(value, weights(tmp_path / "backbone.pt")[name]), name


def test_one_epoch_run_continued_to_two_equals_two_epochs(two_epochs, tmp_path: Path) -> None:
    summary, _, _ = two_epochs
    # cosine per epoch: epoch 1's lr does not depend on E
    first = pretrain(tiny(epochs=1), DATA, tmp_path)
    assert first["loss_history"] == summary["loss_history"][:1]
    assert pretrain(tiny(), DATA, tmp_path)["loss_history"] == summary["loss_history"]
    assert all(
        torch.equal(v, weights(tmp_path / "backbone.pt")[k])
        for k, v in weights(Path(summary["backbone"])).items()
    )


def test_resume_refuses_a_different_config(two_epochs) -> None:
    _, workdir, _ = two_epochs
    with pytest.raises(ValueError, match="lr"):
        pretrain(tiny(lr=0.1), DATA, workdir)


def test_nan_loss_names_epoch_and_step(tmp_path: Path) -> None:
    with pytest.raises(FloatingPointError, match=r"epoch 1/2, step \d+/4"):
        pretrain(tiny(lr=1e30), DATA, tmp_path)


def test_weights_exploded_by_an_epochs_last_step_fail_the_epoch(tmp_path: Path) -> None:
    """One step per epoch: no later loss sees the exploded update, the weight check after the epoch does."""
    with pytest.raises(FloatingPointError, match=r"weights are not finite .* after epoch 1/2, step 1/1"):
        pretrain(tiny(lr=float("inf")), DATA[:BATCH], tmp_path)


def test_dataset_of_variable_size_pil_images(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    sizes = [(36 + i % 7, 48 - i % 5) for i in range(BATCH + 3)]
    photos = [
        Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
        for h, w in sizes
    ]
    one = pretrain(tiny(epochs=1), photos, tmp_path / "a")
    two = pretrain(tiny(epochs=1), photos, tmp_path / "b")
    assert len(one["loss_history"]) == 1
    assert one["loss_history"] == two["loss_history"]  # deterministic


def test_config_round_trip_and_unknown_keys() -> None:
    cfg = tiny()
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg
    # dotted keys, as in overrides
    assert PretrainConfig.from_dict({"moco.tau": 0.1}).moco.tau == 0.1
    defaults = PretrainConfig()
    assert (
        defaults.moco.arch,
        defaults.moco.queue_size,
        defaults.moco.momentum,
        defaults.moco.tau,
    ) == ("resnet50", 65536, 0.999, 0.2)
    assert (defaults.epochs, defaults.batch_size, defaults.lr, defaults.schedule) == (
        400,
        256,
        0.3,
        "cosine",
    )
    with pytest.raises(ValueError, match=r"'moco.quee_size'.*'moco.queue_size'"):
        PretrainConfig.from_dict({"moco": {"quee_size": 8}})
    with pytest.raises(ValueError, match=r"'epoch'.*'epochs'"):
        PretrainConfig.from_dict({"epoch": 8})


def test_unknown_backbone_names_the_closest() -> None:
    with pytest.raises(ValueError, match="resnet50"):
        build_backbone("resnet05")
