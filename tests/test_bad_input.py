"""Bad input fails before anything runs, with an error that names the culprit and what is valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.executors import make_executor
from harness.spec import REPO
from pretrain.config import PretrainConfig
from pretrain.data import load_pretrain_images
from pretrain.data.manifests import CorruptImageError, DatasetLayoutError
from tests.test_manifests import make_imagenet
from tests.test_real_transfer_data import make_food, spec
from transfer.real import load_classification


def harness(capsys, *argv: str) -> tuple[int, str]:
    """Exit code and stderr of `python -m harness argv` run in this process."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    return code, capsys.readouterr().err


def dry_run(capsys, tmp_path: Path, *extra: str) -> tuple[int, str]:
    args = ("run", "table2", "--profile", "smoke", "--dry-run", "--results", str(tmp_path / "r"))
    return harness(capsys, *args, *extra)


# ----------------------------------------------------------------------------- unknown names


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["run", "tabel2"], "unknown table 'tabel2'. Did you mean 'table2'?"),
        (["run", "table2", "--profile", "smok"], "unknown profile 'smok'. Did you mean 'smoke'?"),
        (["run", "table2", "--executor", "slrum"], "unknown executor 'slrum'. Did you mean 'slurm'?"),
        (["table", "table2", "--format", "tx"], "unknown format 'tx'. Did you mean 'tex'?"),
        (["run", "table2", "--rows", "IN-118"], "unknown row of table2 'IN-118'. Did you mean 'IN-118K'?"),
        (["run", "table2", "pretrain.data.name=in118"], "unknown pretraining dataset 'in118'. Did you mean 'in118k'?"),
        (["run", "table2", "pretrain.method=mocov3"], "unknown method 'mocov3'. Did you mean 'mocov2'?"),
        (["run", "table2", "transfer.task=linera"], "unknown transfer task 'linera'. Did you mean 'linear'?"),
        (["run", "table2", "transfer.data.name=cifar"], "unknown target dataset 'cifar'. Did you mean 'cifar10'?"),
        (["run", "table2", "pretrain.data.source=rael"], "unknown pretrain.data.source 'rael'. Did you mean 'real'?"),
    ],
)  # fmt: skip
def test_unknown_names_list_the_valid_ones_and_the_closest(
    capsys, tmp_path, argv, expected
) -> None:
    args = [*argv, "--dry-run"] if argv[0] == "run" else argv
    code, err = harness(capsys, *args, "--results", str(tmp_path / "r"))
    assert code == 2
    assert expected in err and "Valid:" in err
    assert not (tmp_path / "r" / "jobs").exists()  # nothing was registered, let alone run


def test_unknown_cluster_profile_names_the_closest() -> None:
    with pytest.raises(Exception, match="unknown cluster profile 'loca'. Did you mean 'local'"):
        make_executor("slurm", "loca", {})


# ----------------------------------------------------------------------------- invalid values


@pytest.mark.parametrize(
    "override, expected",
    [
        ("pretrain.epochs=-1", "pretrain.epochs=-1: must be >= 0"),
        ("pretrain.aug.crop_scale=[0,1]", "pretrain.aug.crop_scale=(0, 1): must be (lo, hi) with 0 < lo <= hi <= 1"),
        ("pretrain.aug.crop_scale=[0.2,1.5]", "pretrain.aug.crop_scale=(0.2, 1.5): must be (lo, hi)"),
        ("pretrain.moco.knn_lambda=0.4", "pretrain.moco.knn_k=20: must be in [1, moco.queue_size=16]"),
        ("pretrain.batch_size=24", "pretrain.moco.queue_size=64: must be a multiple of the batch size batch_size=24"),
        ("pretrain.precision=fp61", "pretrain.precision='fp61': valid are fp32, bf16"),
        ("transfer.protocol.max_iter=-5", "transfer.protocol.max_iter=-5: must be >= 1"),
        ("transfer.data.n_train=0", "transfer.data.n_train=0: must be >= 1"),
        ("transfer.image_size=0", "transfer.image_size=0: must be >= 1"),
    ],
)  # fmt: skip
def test_invalid_values_fail_at_plan_time_naming_field_and_range(
    capsys, tmp_path, override, expected
) -> None:
    extra = ["pretrain.moco.queue_size=16", "pretrain.batch_size=16"] if "knn" in override else []
    code, err = dry_run(capsys, tmp_path, *extra, override)
    assert code == 2, err
    assert expected in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback


def test_transfer_protocol_checks_run_at_plan_time(capsys, tmp_path) -> None:
    """A task's own protocol check (DenseProtocol: batch_size >= 2 for BatchNorm) fails the plan too."""
    code, err = harness(capsys, "run", "table3", "--profile", "smoke", "--dry-run", "--columns",
                        "Seg. Cityscapes", "transfer.protocol.batch_size=1", "--results", str(tmp_path))  # fmt: skip
    assert code == 2 and "transfer.protocol of task 'segmentation'" in err and "batch_size" in err


def test_negative_epochs_exit_2_from_the_command_line(tmp_path) -> None:
    cmd = [sys.executable, "-m", "harness", "run", "table2", "pretrain.epochs=-1", "--dry-run"]
    out = subprocess.run(
        cmd + ["--results", str(tmp_path)], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: pretrain.epochs=-1: must be >= 0 (job 'pretrain IN-118K')"
    ]


# ----------------------------------------------------------------------------- typos in keys


def table_with(tmp_path: Path, old: str, new: str) -> str:
    text = (REPO / "tables" / "table2.yaml").read_text()
    assert old in text
    path = tmp_path / "typo.yaml"
    path.write_text(text.replace(old, new, 1))
    return str(path)


@pytest.mark.parametrize(
    "old, new, key, hint",
    [
        ("higher_is_better:", "higher_is_beter:", "higher_is_beter", "higher_is_better"),  # top level
        ("  epochs: 400", "  epoch: 400", "epoch", "epochs"),  # the table's pretrain section
        ("  task: linear", "  tsk: linear", "tsk", "task"),  # the table's transfer section
        ("{data: {name: coco}}", "{data: {name: coco}, aug: {crop_scal: [0.2, 1]}}", "aug.crop_scal", "aug.crop_scale"),
        ("{data: {name: cifar10}}", "{data: {name: cifar10}, protocl: {n_wd: 3}}", "protocl", "protocol"),
    ],
)  # fmt: skip
def test_table_spec_typos_name_key_file_and_closest(capsys, tmp_path, old, new, key, hint) -> None:
    path = table_with(tmp_path, old, new)
    code, err = harness(
        capsys, "run", path, "--profile", "smoke", "--dry-run", "--results", str(tmp_path)
    )
    assert code == 2
    assert f"unknown key '{key}'" in err and path in err and f"Did you mean '{hint}'" in err


@pytest.mark.parametrize(
    "old, new, key, hint",
    [
        ("data_source:", "data_sorce:", "data_sorce", "data_source"),
        ("  moco.queue_size: 64", "  moco.queue_sise: 64", "moco.queue_sise", "moco.queue_size"),
        ("  data.n_train: 64", "  data.n_trian: 64", "data.n_trian", "data.n_train"),
        ("    protocol.max_iter: 50", "    protocol.max_iters: 50", "protocol.max_iters", "protocol.max_iter"),
        ("  segmentation:", "  segmentaton:", "segmentaton", "segmentation"),
    ],
)  # fmt: skip
def test_profile_typos_name_key_file_and_closest(capsys, tmp_path, old, new, key, hint) -> None:
    text = (REPO / "harness" / "profiles" / "smoke.yaml").read_text()
    assert old in text
    path = tmp_path / "typo_profile.yaml"
    path.write_text(text.replace(old, new, 1))
    code, err = harness(
        capsys, "run", "table2", "--profile", str(path), "--dry-run", "--results", str(tmp_path)
    )
    assert code == 2
    assert f"'{key}'" in err and str(path) in err and f"Did you mean '{hint}'" in err


def test_override_and_config_typos_name_the_closest_key(capsys, tmp_path) -> None:
    code, err = dry_run(capsys, tmp_path, "pretrain.moco.tua=0.1")
    assert code == 2 and "unknown key 'pretrain.moco.tua'" in err and "'pretrain.moco.tau'" in err
    with pytest.raises(
        ValueError, match="unknown config key 'aug.flip_pp'; did you mean 'aug.flip_p'"
    ):
        PretrainConfig.from_dict({"aug": {"flip_pp": 0.5}})


# ----------------------------------------------------------------------------- datasets on disk


def test_missing_root_and_wrong_layout_name_the_path(tmp_path) -> None:
    data = {"name": "in118k", "source": "real", "size": 10, "image_size": 32, "seed": 0}
    with pytest.raises(FileNotFoundError, match="--data-root in118k=/path/to/root"):
        load_pretrain_images(data, tmp_path / "cache", {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match=str(tmp_path / "empty")):
        load_pretrain_images(data, tmp_path / "cache", {"in118k": str(tmp_path / "empty")})


def test_corrupt_image_in_a_pretraining_set_is_reported_not_skipped(tmp_path) -> None:
    """One truncated JPEG among 40: reported by path before training (an epoch could drop it)."""
    root = make_imagenet(tmp_path / "imagenet")
    victim = sorted((root / "train").glob("n01440764/*.JPEG"))[3]  # 6 images: all in a 30-image set
    victim.write_bytes(victim.read_bytes()[:40])
    data = {"name": "in118k", "source": "real", "size": 30, "image_size": 32, "seed": 0}
    with pytest.raises(CorruptImageError, match=str(victim)):
        load_pretrain_images(data, tmp_path / "cache", {"in118k": str(root)})
    assert not list((tmp_path / "cache").glob("manifests/*"))  # not cached as good: it fails again


def test_corrupt_image_in_a_transfer_set_is_reported_with_its_path(tmp_path) -> None:
    make_food(tmp_path)
    victim = sorted((tmp_path / "food-101" / "images").glob("*/test1.jpg"))[1]
    victim.write_bytes(victim.read_bytes()[:40])
    images, _ = load_classification(spec("food"), "test", {"food": str(tmp_path)})
    with pytest.raises(CorruptImageError, match=str(victim)):
        images[0 : len(images)]


# ----------------------------------------------------------------------------- the results directory


def test_full_disk_fails_before_any_job(capsys, tmp_path) -> None:
    """A 1 MB tmpfs as the results directory: the run stops before registering a single job."""
    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)],
                             capture_output=True).returncode == 0  # fmt: skip
    try:
        args = ["run", "table2", "--profile", "smoke", "--rows", "IN-118K", "--columns", "CIFAR10"]
        if not mounted:  # no mount here: a threshold above the real free space
            args += ["--min-free-gb", "1e9"]
        code, err = harness(capsys, *args, "--results", str(full))
        assert code == 2
        assert f"results directory {full}" in err and "GB free" in err and "--min-free-gb" in err
        assert not (full / "jobs").exists()
    finally:
        if mounted:
            subprocess.run(["umount", str(full)], check=True)


def test_unwritable_results_directory(capsys, tmp_path) -> None:
    (tmp_path / "file").write_text("not a folder")
    code, err = harness(capsys, "run", "table2", "--profile", "smoke", "--dry-run",
                        "--results", str(tmp_path / "file" / "results"))  # fmt: skip
    assert code == 2 and f"results directory {tmp_path / 'file' / 'results'} is not writable" in err
