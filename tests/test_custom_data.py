"""A user's own folder of images as a pretraining row (README "Your own study"), through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.errors import HarnessError
from harness.planner import plan
from harness.spec import load_profile, load_table
from pretrain.data.manifests import DatasetLayoutError, build_manifest
from tests.test_table2_e2e import cli


def write_folder(root: Path, n: int) -> list[str]:
    """n random PNGs, half in a sub-folder, plus files a loader must ignore (hidden, not images)."""
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        rel = Path("street" if i % 2 else ".", f"img{i:03d}.png")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(root / rel)
        names.append(str(Path(rel)))
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / ".hidden" / "skip.png")
    return sorted(names)


def test_folder_manifest_takes_every_image_at_any_depth(tmp_path: Path) -> None:
    names = write_folder(tmp_path, 10)
    manifest = build_manifest("folder", tmp_path)
    assert list(manifest.files) == names
    subset = build_manifest("folder", tmp_path, size=4, seed=1)
    assert len(subset.files) == 4 and set(subset.files) <= set(names)
    assert len(build_manifest("folder", tmp_path, size=64).files) == 10  # a profile's size caps a folder
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="no .jpg/.jpeg/.png images"):
        build_manifest("folder", tmp_path / "empty")


def test_folder_row_is_real_at_every_profile_and_its_root_is_in_the_key(tmp_path: Path) -> None:
    spec = tmp_path / "study.yaml"
    spec.write_text(
        "name: study\ntitle: mine\nkind: grid\npretrain: {method: mocov2, epochs: 400}\n"
        f"rows:\n  A: {{data: {{name: folder, root: {tmp_path / 'a'}}}}}\n"
        f"  B: {{data: {{name: folder, root: {tmp_path / 'b'}}}}}\n"
        "columns:\n  CIFAR10: {task: linear, data: {name: cifar10}}\n"
    )
    p = plan(load_table(str(spec)), load_profile("tiny"))
    a, b = (p.jobs[p.rows[r]].spec["data"] for r in ("A", "B"))
    assert a["source"] == "real" and a["size"] is None and a["root"].endswith("/a")
    assert p.rows["A"] != p.rows["B"]


def test_a_study_with_my_image_folder_runs_end_to_end(tmp_path: Path) -> None:
    images = tmp_path / "my_images"
    write_folder(images, 40)
    spec = tmp_path / "my_study.yaml"
    spec.write_text(
        "name: my_study\ntitle: my images vs IN-118K\nkind: grid\n"
        "pretrain: {method: mocov2, epochs: 400}\n"
        f"rows:\n  Mine: {{data: {{name: folder, root: {images}}}}}\n"
        "columns:\n  CIFAR10: {task: linear, data: {name: cifar10}}\n"
    )
    results = tmp_path / "results"
    out = cli("run", spec, "--profile", "smoke", "--results", results)
    assert "2 jobs: 0 cached, 2 run, 0 failed" in out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("| Mine"))
    assert float(row.split("|")[2].split()[0]) > 0  # a measured accuracy, not "—"
    (job,) = [json.loads(p.read_text()) for p in results.glob("jobs/pretrain-*/job.json")]
    assert job["spec"]["data"]["root"] == str(images)


def test_a_folder_row_without_its_root_says_what_to_write(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: s\ntitle: s\nkind: grid\npretrain: {method: mocov2, epochs: 400}\n"
        "rows:\n  Mine: {data: {name: folder}}\ncolumns:\n  CIFAR10: {data: {name: cifar10}}\n"
    )
    out = cli("run", spec, "--profile", "smoke", "--results", tmp_path / "r", check=False)
    assert out.returncode != 0
    assert "data: {name: folder, root: /path/to/your/images}" in out.stderr + out.stdout


def test_unknown_dataset_names_the_folder_option() -> None:
    with pytest.raises((HarnessError, ValueError), match="folder"):
        from pretrain.data import get_dataset

        get_dataset("foldr")
