"""Each benchmark's --quick mode runs end to end and writes a JSON of the expected shape with sane figures."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.cli import main

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_quick(name: str, tmp_path: Path, *extra: str) -> dict:
    """python benchmarks/<name>.py --quick --out tmp_path; the JSON it wrote (recorded figures stay untouched)."""
    cmd = [
        sys.executable,
        str(BENCHMARKS / f"{name}.py"),
        "--quick",
        "--out",
        str(tmp_path),
        *extra,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads((tmp_path / f"{name}.json").read_text())
    assert out["machine"]["cores"] >= 1 and out["machine"]["torch"]
    assert out["settings"]["quick"] is True
    return out


def test_bench_pretrain_quick(tmp_path: Path) -> None:
    out = run_quick("bench_pretrain", tmp_path, "--threads", "1", "--workers", "1", "--repeats", "2")
    figures = out["figures"]
    assert out["settings"]["repeats"] == 2
    assert out["settings"]["steps"] > out["settings"]["warm_after"]  # a warm figure needs steps after warm-up
    for variant in ("mocov2", "multicrop"):
        f = figures[variant]
        runs = ("reference_fp32", "harness_fp32", "harness_bf16", "harness_bf16_channels_last")
        for key in (f"{run}{when}_img_s" for run in runs for when in ("", "_warm")):  # cold: the epoch
            assert f[key] > 0 and math.isfinite(f[key]), (variant, key, f)
            assert len(f[f"{key}_runs"]) == 2 and f[key] == statistics.median(f[f"{key}_runs"])
        for loop in ("bf16", "bf16_channels_last"):  # the median over repeats of each repeat's ratio
            for when in ("", "_warm"):
                ratios = [h / r for h, r in zip(f[f"harness_{loop}{when}_img_s_runs"],
                                                f[f"reference_fp32{when}_img_s_runs"])]  # fmt: skip
                assert f[f"speedup_{loop}{when}_runs"] == ratios
                assert f[f"speedup_{loop}{when}"] == statistics.median(ratios)
    check = figures["bf16_numerics"]
    bf16_runs = (check["loss_bf16"], check["loss_bf16_channels_last"])
    assert all(len(c) == out["settings"]["check_epochs"] for c in (check["loss_fp32"], *bf16_runs))
    assert all(0 < v < 20 for c in (check["loss_fp32"], *bf16_runs) for v in c)  # InfoNCE ~ ln(1 + K)
    gaps = [abs(a - b) / a for run in bf16_runs for a, b in zip(check["loss_fp32"], run)]
    assert (
        check["max_rel_gap"] == max(gaps) < 0.1
    )  # the full run states its tolerance (2%); one step is noisier
    assert check["within_tolerance"] == (check["max_rel_gap"] <= check["tolerance"])


def test_bench_linear_quick(tmp_path: Path) -> None:
    out = run_quick("bench_linear", tmp_path)
    f = out["figures"]["10_classes"]
    assert set(f["runs"]) == {"sklearn_1t", "harness_1t", "harness_path_1t"}
    for run in f["runs"].values():
        assert run["s"] > 0 and 0 <= run["best_index"] < 45 and 10.0 < run["test"] <= 100.0, run
    assert f["speedup"] == f["best_sklearn_s"] / f["best_harness_s"]
    # the protocol's claim: the same selected value, or test accuracy within 0.3 points of scikit-learn's
    assert f["same_selection"] or f["test_gap"] <= 0.3, f


def test_bench_orchestration_quick(tmp_path: Path) -> None:
    out = run_quick("bench_orchestration", tmp_path)
    f, s = out["figures"], out["settings"]
    assert f["cells"] == s["rows"] * s["columns"]
    assert f["jobs_per_table"] == s["rows"] * (
        s["columns"] + 1
    )  # a pretraining per row, a transfer per cell
    assert f["results_in_store"] == s["tables"] * f["jobs_per_table"]
    assert f["rendered_chars"] > 0
    assert f["render_per_table_s"] == f["render_all_tables_s"] / s["tables"]
    timed = [f[key] for key in ("plan_s", "status_s", "render_all_tables_s")]  # the verdict, never a time check
    assert min(timed) > 0 and f["target_met"] == (max(timed) <= f["target_s"]), f


def test_bench_scaling_quick(tmp_path: Path) -> None:
    out = run_quick("bench_scaling", tmp_path, "--threads", "1")
    figures, s = out["figures"], out["settings"]
    sizes = {"pretrain_images": s["images"], "pretrain_n_small": s["n_small"], "linear_dim": s["dims"],
             "linear_classes": s["classes"], "planner_cells": s["cells"]}  # fmt: skip
    assert set(figures) == set(sizes)
    for name, f in figures.items():
        assert f["sizes"] == sizes[name]
        for key, seconds in f["seconds"].items():
            assert len(seconds) == len(f["sizes"]), (name, key)
            assert all(0 < t < math.inf for t in seconds), (name, key, seconds)
        # the extra cost of small crops over none can be noise in one quick step: no exponent then
        for key, e in f["exponent"].items():
            assert (e is None and name == "pretrain_n_small") or math.isfinite(e), (name, key, e)
    epoch = figures["pretrain_images"]
    assert epoch["steps"] == [n // s["batch"] for n in s["images"]]
    assert epoch["seconds"]["epoch"] == [k * epoch["step_s"] for k in epoch["steps"]]
    assert figures["pretrain_n_small"]["relative"][0] == 1.0
    rows = [max(1, c // 25) for c in s["cells"]]  # a pretraining per row, a transfer per cell
    assert figures["planner_cells"]["jobs"] == [c + r for c, r in zip(s["cells"], rows)]


def test_bench_gpu_quick(tmp_path: Path) -> None:
    """The GPU benchmark's code on whatever device there is: the reference loop, the harness's tensor and
    worker paths, peak memory where there is a GPU, and the bf16 check."""
    out = run_quick("bench_gpu", tmp_path)
    f, s = out["figures"], out["settings"]
    cuda = out["machine"]["gpu"] is not None
    assert f["device"] == (out["machine"]["gpu"] if cuda else "cpu")
    assert f["reference_fp32"]["images_per_s"] > 0 and f["reference_fp32"]["workers"] == s["workers"]
    variants = ["tensor_fp32", "tensor_bf16", "tensor_bf16_channels_last"]
    variants += [f"workers{w}_bf16" for w in s["workers_grid"]]
    for name in variants:
        v = f[name]
        assert v["images_per_s"] > 0 and v["speedup"] == v["images_per_s"] / f["reference_fp32"]["images_per_s"]
        assert (v["peak_memory_gib"] > 0) if cuda else v["peak_memory_gib"] is None, (name, v)
    assert f["best"] == max(variants, key=lambda n: f[n]["images_per_s"])
    check = f["bf16_numerics"]
    assert len(check["loss_fp32"]) == len(check["loss_bf16"]) == s["check_epochs"]
    assert check["within_tolerance"] == (check["max_rel_gap"] <= check["tolerance"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the full benchmark would run")
def test_bench_gpu_without_a_gpu_says_so(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_gpu.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "no CUDA device here" in done.stderr and "--quick" in done.stderr
    assert not (tmp_path / "bench_gpu.json").exists()


def test_bench_command_names_the_closest_benchmark(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "orchestrat", "--quick"])
    assert exit_.value.code == 2
    assert "Did you mean 'orchestration'" in capsys.readouterr().err
