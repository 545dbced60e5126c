"""The progress lines' estimate of the job time left (a full tiny `run all` is ~3 hours on 2 cores)."""

from __future__ import annotations

import io

import pytest

from harness.planner import make_job
from harness.progress import Reporter, cost_class


def pretrain(epochs: int, method: str = "mocov2", n_small: int = 0, images: int | None = None):
    data = {"name": "in118k"} | ({"size": images} if images else {})
    spec = {"method": method, "epochs": epochs, "aug": {"n_small": n_small}, "data": data, "batch_size": 128}
    return make_job("pretrain", f"pretrain {method} {epochs} {n_small} {images}", spec)


def transfer(task: str, target: str, i: int):
    return make_job("transfer", f"{task} {target} {i}", {"task": task, "data": {"name": target}, "i": i})


def test_time_left_scales_each_class_by_its_finished_jobs() -> None:
    short, long, mc = pretrain(10), pretrain(20), pretrain(10, n_small=4)
    cifar = [transfer("linear", "cifar10", i) for i in range(3)]
    svm, pets, cached, doomed = (transfer("svm", "voc07", 0), transfer("linear", "pets", 0),
                                 transfer("linear", "pets", 1), transfer("depth", "nyud", 0))  # fmt: skip
    jobs = [short, long, mc, *cifar, svm, pets, cached, doomed]
    out = io.StringIO()
    reporter = Reporter(len(jobs), stream=out, pending=jobs)
    assert reporter.time_left() is None  # nothing finished: no basis for an estimate

    reporter.cached(cached)  # was never to run: costs nothing
    reporter.finished(short, {"wall_s": 120.0, "loss_history": [6.8]})
    # 12 s per pretraining epoch: the 20-epoch run 240 s; the multi-crop run at its method's mean job
    # (120 s); the linear, svm and depth jobs (no kin finished yet) at the mean job (120 s)
    assert reporter.time_left() == 240 + 7 * 120
    assert out.getvalue().splitlines()[-1].endswith("· ~18 min of jobs left")

    reporter.finished(cifar[0], {"wall_s": 9.0, "value": 44.3})
    # cifar10 jobs 9 s; pets at its task's mean (9 s); svm and depth at the mean job (120 + 9) / 2
    assert reporter.time_left() == 240 + 120 + 2 * 9 + 9 + 2 * 64.5
    reporter.failed(doomed, "boom")  # neither runs nor counts towards the estimate
    assert reporter.time_left() == 240 + 120 + 2 * 9 + 9 + 64.5
    reporter.finished(transfer("linear", "food", 0), {"wall_s": 3.0, "value": 1.0})
    assert reporter.time_left() == 240 + 120 + 2 * 9 + 9 + 64.5  # not this run's job: no change

    reporter.finished(cifar[1], {"wall_s": 7.0, "value": 1.0})  # cifar10: (9 + 7) / 2 = 8 s a job
    assert reporter.time_left() == pytest.approx(240 + 120 + 8 + 8 + (120 + 9 + 7) / 3)
    for job in (pets, long, mc, cifar[2]):
        reporter.finished(job, {"wall_s": 1.0, "value": 1.0})
    assert reporter.time_left() == pytest.approx((120 + 9 + 7 + 4 * 1) / 7)  # svm: no kin
    reporter.finished(svm, {"wall_s": 5.0, "value": 1.0})
    assert reporter.time_left() == 0.0
    assert "jobs left" not in out.getvalue().splitlines()[-1]  # the last line: nothing left to estimate


def test_cost_classes() -> None:
    assert cost_class(pretrain(20)) == (("pretrain", "mocov2", 0, "epoch"), 20.0)
    assert cost_class(pretrain(10, n_small=4))[0] != cost_class(pretrain(10))[0]  # multi-crop costs more
    assert cost_class(pretrain(0, method="random"))[1] == 1.0  # Rand. init.: no epochs, one unit
    # with the data's size, per step: Table S1's 8x pretraining (32K images) is 8 of the 1x one
    assert cost_class(pretrain(10, images=4000)) == (("pretrain", "mocov2", 0, "step"), 10.0 * 31)
    assert cost_class(pretrain(10, images=32000))[1] == 10.0 * 250
    assert cost_class(pretrain(1, images=100))[1] == 1.0  # fewer images than a batch: one step an epoch
    # a run on a whole dataset (no size in its spec) is costed per epoch, never against per-step runs
    assert cost_class(pretrain(10))[0][:2] == cost_class(pretrain(10, images=4000))[0][:2]  # kin
    assert cost_class(pretrain(10))[0] != cost_class(pretrain(10, images=4000))[0]
    assert cost_class(transfer("linear", "cifar10", 0))[0] == cost_class(transfer("linear", "cifar10", 1))[0]
    assert cost_class(transfer("linear", "pets", 0))[0] != cost_class(transfer("linear", "cifar10", 0))[0]


def test_the_status_line_of_jobs_running_at_once_shows_each() -> None:
    out = io.StringIO()
    jobs = [pretrain(10), pretrain(10, n_small=4)]
    reporter = Reporter(2, stream=out, quiet_s=0.0, pending=jobs)
    for job in jobs:
        reporter.start(job)
    reporter.running([(jobs[0], {"epoch": 3, "epochs": 10, "loss": 6.5}), (jobs[1], None)])
    line = out.getvalue().splitlines()[-1]
    assert f"> {jobs[0].name}  epoch 3/10 loss 6.500" in line and f" | > {jobs[1].name}" in line


def test_with_jobs_at_once_the_time_left_is_also_given_as_wall_time() -> None:
    out = io.StringIO()
    jobs = [pretrain(10), pretrain(20), pretrain(30)]  # one class, per epoch: 60 s an epoch, 50 epochs left
    reporter = Reporter(3, stream=out, pending=jobs, at_once=2)
    reporter.start(jobs[0])
    reporter.finished(jobs[0], {"wall_s": 600.0, "loss_history": [6.5]})
    assert out.getvalue().rstrip().endswith("~50 min of jobs left, ~25 min at 2 at once")
