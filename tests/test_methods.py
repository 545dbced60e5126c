"""SimCLR and SwAV against references written from their papers, two processes against one, and
`method=` through the harness (issue 8: the study beyond MoCo-v2)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from harness.cli import main
from harness.errors import HarnessError
from harness.planner import plan
from harness.spec import load_profile, load_table
from pretrain.methods import METHODS, frozen_parameters, method_config, method_defaults
from pretrain.simclr import nt_xent
from pretrain.swav import sinkhorn, swapped_prediction
from pretrain.train import _build, pretrain
from tests.test_pretrain_variants import step_and_mean_loss

# ----------------------------------------------------------------------------- references


def sinkhorn_algorithm_1(scores: torch.Tensor, eps: float = 0.05, niters: int = 3) -> torch.Tensor:
    """SwAV appendix, Algorithm 1 (Sinkhorn-Knopp), line by line."""
    Q = torch.exp(scores / eps).T
    Q /= Q.sum()
    K, B = Q.shape
    r, c = torch.ones(K, dtype=Q.dtype) / K, torch.ones(B, dtype=Q.dtype) / B
    for _ in range(niters):
        u = Q.sum(dim=1)
        Q *= (r / u).unsqueeze(1)
        Q *= (c / Q.sum(dim=0)).unsqueeze(0)
    return (Q / Q.sum(dim=0, keepdim=True)).T


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR Algorithm 1: l(i, j) over all 2N ordered positive pairs, negatives every k != i."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = torch.stack([z[i] @ z[k] / tau for k in range(2 * n) if k != i])
        total = total - (z[i] @ z[j] / tau - torch.logsumexp(sims, 0))
    return total / (2 * n)


def test_sinkhorn_equals_algorithm_1_and_is_doubly_stochastic() -> None:
    scores = F.normalize(torch.randn(24, 16, dtype=torch.float64), dim=1)  # B x K cosines
    codes = sinkhorn(scores, 0.05, 3)
    torch.testing.assert_close(codes, sinkhorn_algorithm_1(scores), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(codes.sum(1), torch.ones(24, dtype=torch.float64))  # each sample
    assert (codes.sum(0) / (24 / 16) - 1).abs().max() < 0.5  # 3 iterations: roughly equal
    converged = sinkhorn(scores, 0.05, 200)  # doubly stochastic: B / K per prototype
    torch.testing.assert_close(converged.sum(0), torch.full((16,), 24 / 16, dtype=torch.float64))
    assert not torch.allclose(codes, F.softmax(scores / 0.05, 1), atol=1e-3)  # not a softmax


def test_nt_xent_equals_the_reference_with_2n_minus_2_negatives() -> None:
    z1, z2 = torch.randn(2, 6, 5, dtype=torch.float64)
    for tau in (0.1, 0.5):
        assert nt_xent(z1, z2, tau).item() == pytest.approx(
            nt_xent_reference(z1, z2, tau).item(), abs=1e-10
        )
    # the positive is the other view: swapping the images of view 2 raises the loss
    assert nt_xent(z1, z1, 0.1) < nt_xent(z1, z1.roll(1, 0), 0.1)


def test_swapped_prediction_predicts_each_large_code_from_every_other_crop() -> None:
    scores = list(torch.randn(4, 3, 5, dtype=torch.float64))  # 2 large + 2 small crops
    codes = [F.softmax(torch.randn(3, 5, dtype=torch.float64), 1) for _ in range(2)]
    expected = 0.0
    for s in range(2):
        for t in range(4):
            if t != s:
                expected += -(codes[s] * F.log_softmax(scores[t] / 0.1, 1)).sum(1).mean() / 3
    assert swapped_prediction(scores, codes, 0.1).item() == pytest.approx(expected.item() / 2)


# ----------------------------------------------------------------------------- methods


def test_each_method_has_its_published_defaults_and_loud_errors() -> None:
    assert {"mocov1", "mocov2", "simclr", "swav", "random"} <= set(METHODS)
    v1, simclr, swav = (method_defaults(m) for m in ("mocov1", "simclr", "swav"))
    assert (v1["moco"]["head"], v1["moco"]["tau"], v1["aug"]["blur_p"]) == ("linear", 0.07, 0.0)
    assert simclr["aug"]["crop_scale"] == [0.08, 1.0] and simclr["aug"]["jitter"][0] == 0.8
    assert "moco" not in simclr and "moco" not in swav
    assert (swav["swav"]["epsilon"], swav["swav"]["sinkhorn_iterations"]) == (0.05, 3)
    assert (swav["aug"]["size"], swav["aug"]["n_small"]) == (160, 4)
    assert method_config("swav", {}).aug.small_side == 96  # 2 x 160 + 4 x 96
    with pytest.raises(ValueError, match="simclr.tau"):
        method_config("simclr", {"simclr.tau": 0})
    with pytest.raises(ValueError, match="two views"):
        method_config("simclr", {"aug.n_small": 4})
    with pytest.raises(ValueError, match="did you mean 'swav.epsilon'"):
        method_config("swav", {"swav.epsilonn": 0.1})
    with pytest.raises(ValueError, match="Did you mean 'swav'"):
        method_config("swv", {})


def tiny_config(method: str, **kw):
    sizes = {
        "simclr": {"simclr.arch": "resnet18", "simclr.dim": 8},
        "swav": {"swav.arch": "resnet18", "swav.dim": 8, "swav.n_prototypes": 6,
                 "swav.queue_length": 16, "swav.queue_start_epoch": 0, "aug.size": 16,
                 "aug.small_size": 8, "aug.n_small": 2},
    }[method]  # fmt: skip
    base = {"aug.size": 16, "batch_size": 8, "epochs": 1, "lr": 0.05, "threads": 1}
    return method_config(method, {**base, **sizes, **kw})


DATA = torch.randint(0, 256, (17, 3, 24, 24), dtype=torch.uint8,
                     generator=torch.Generator().manual_seed(0))  # fmt: skip


@pytest.mark.parametrize("method", ["simclr", "swav"])
def test_one_epoch_trains_and_swav_freezes_its_prototypes(method: str, tmp_path: Path) -> None:
    cfg = tiny_config(method)
    model, _ = _build(cfg, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = pretrain(cfg, DATA, tmp_path)  # 2 steps
    assert len(out["loss_curve"]) == 1 and math.isfinite(out["loss_curve"][0])
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    assert not torch.equal(state["backbone.conv1.weight"], before["backbone.conv1.weight"])
    if method == "swav":  # epoch 0: no step, only the renormalisation onto the unit sphere
        w = state["prototypes.weight"]
        torch.testing.assert_close(w, F.normalize(before["prototypes.weight"], dim=1))
        assert state["queue"].abs().sum(-1).gt(0).all()  # 2 batches of 8 fill 16 rows per crop
        assert frozen_parameters(model, 1) == []


def test_swav_prototypes_take_their_first_step_after_the_frozen_epoch(tmp_path: Path) -> None:
    """Epoch 1 is the prototypes' first optimiser step (no momentum buffer yet, beside parameters that have one):
    the optimiser must take it (fused SGD refused such a mixed state with a TypeError)."""
    cfg = tiny_config("swav", epochs=2)
    model, _ = _build(cfg, torch.device("cpu"))
    initial = F.normalize(model.prototypes.weight.detach().clone(), dim=1)
    out = pretrain(cfg, DATA, tmp_path)
    assert len(out["loss_curve"]) == 2 and all(math.isfinite(v) for v in out["loss_curve"])
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    assert not torch.allclose(state["prototypes.weight"], initial)  # moved in epoch 1


def test_swav_resumes_after_the_frozen_epoch_from_a_fused_sgd_checkpoint(tmp_path: Path) -> None:
    """A checkpoint written by an optimiser with fused SGD (an older harness) resumes with the kernel the run
    chooses now: the optimiser state dict must not bring `fused` back (the prototypes' first step would fail)."""
    one = tiny_config("swav", epochs=1)
    pretrain(one, DATA, tmp_path)
    blob = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    for group in blob["optimizer"]["param_groups"]:
        group["fused"] = True  # as written before SwAV runs stopped using fused SGD
    torch.save(blob, tmp_path / "checkpoint.pt")
    (tmp_path / "checkpoint.sha256").unlink()  # the edited file has a new digest
    out = pretrain(tiny_config("swav", epochs=2), DATA, tmp_path)
    assert len(out["loss_curve"]) == 2 and all(math.isfinite(v) for v in out["loss_curve"])


# ----------------------------------------------------------------------------- processes


def _worker(rank: int, size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        torch.save(_run_steps(rank, size), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _run_steps(rank: int, size: int) -> dict:
    """3 steps of SimCLR and of SwAV (queue on from step 1) on a global batch of 8, rank r holding
    rows r::size, via the training code's _build (DDP on 2 processes). BN in eval mode: batch
    statistics are per process (SwAV's SyncBN needs CUDA), everything else must agree."""
    results = {}
    for method in ("simclr", "swav"):
        model, opt = _build(tiny_config(method), torch.device("cpu"))
        model.eval()  # BN on its running statistics
        gen = torch.Generator().manual_seed(3)
        losses = []
        for step in range(3):
            a, p = torch.randn(2, 8, 3, 16, 16, generator=gen)
            small = torch.randn(2, 8, 3, 8, 8, generator=gen)[:, rank::size].flatten(0, 1)
            views = [p[rank::size]] + ([small] if method == "swav" else [])
            loss = model(a[rank::size], views, epoch=1)
            losses.append(step_and_mean_loss(loss, opt, size))
        inner = model.module if size > 1 else model
        results[method] = {"losses": losses, "conv1": inner.backbone.conv1.weight.detach().clone()}
    return results


def test_two_processes_equal_one_process_on_the_same_global_batch(tmp_path: Path) -> None:
    port = 29500 + (os.getpid() + 500) % 1000
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    one = _run_steps(0, 1)
    for rank in range(2):
        blob = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for method, ref in one.items():
            assert blob[method]["losses"] == pytest.approx(ref["losses"], rel=1e-5), method
            torch.testing.assert_close(blob[method]["conv1"], ref["conv1"], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- harness


def keys(table: str, **overrides) -> tuple[set[str], dict[str, str]]:
    p = plan(load_table(table), load_profile("smoke"), overrides)
    return set(p.jobs), p.rows


def test_method_override_switches_every_trained_row_and_shares_nothing() -> None:
    moco, moco_rows = keys("table2")
    swav, swav_rows = keys("table2", method="swav")
    assert not moco & swav  # every pretraining and transfer key differs
    assert keys("table2", method="mocov2")[0] == moco  # the explicit default plans the same jobs
    assert keys("table2", **{"pretrain.method": "swav"})[0] == swav
    p = plan(load_table("table2"), load_profile("smoke"), {"method": "simclr"})
    spec = next(j.spec for j in p.jobs.values() if j.kind == "pretrain")
    assert spec["method"] == "simclr" and "moco" not in spec  # the profile's moco.* is not its
    assert spec["simclr"]["arch"] == "resnet18" and spec["aug"]["crop_scale"] == [0.08, 1.0]
    _, rows = keys("table4", method="swav")
    assert rows["Rand. init."] == keys("table4")[1]["Rand. init."]  # untrained: one backbone
    assert rows["+m"] == rows["+CC"]  # a MoCo-only ablation row is the row before it for SwAV
    with pytest.raises(ValueError, match="Did you mean 'swav'"):
        keys("table2", method="swv")
    with pytest.raises(HarnessError, match="simclr.tau"):
        keys("table2", **{"method": "simclr", "pretrain.simclr.tauu": 0.2})


def test_methods_table_shares_table2_jobs_and_runs_through_the_harness(tmp_path, capsys) -> None:
    methods, rows = keys("methods")
    table2 = keys("table2")[0]
    moco = {k for r, k in rows.items() if r.startswith("MoCo-v2") and r != "MoCo-v2 BDD100K"}
    assert len(moco) == 4 and moco <= table2  # the MoCo-v2 rows are Table 2's jobs
    assert len(set(rows.values())) == 15 and len(methods & table2) == 4 + 4 * 2  # and their cells
    args = ["run", "methods", "--profile", "smoke", "--rows", "SwAV COCO", "--columns", "CIFAR10"]
    assert main([*args, "--results", str(tmp_path)]) == 0  # multi-crop, queue, frozen prototypes
    assert "| SwAV COCO |" in capsys.readouterr().out
    row = dict(
        zip(*(line.split(",") for line in (tmp_path / "methods.csv").read_text().splitlines()))
    )
    assert row["status"] == "done" and 0 <= float(row["value"]) <= 100
