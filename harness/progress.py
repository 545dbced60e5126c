"""Live progress of a run: one line per finished job, and a live status line for the running one.

On a terminal the status line is redrawn in place; elsewhere (CI, log files) it is printed at most
every `quiet_s` seconds so logs stay short. Given the jobs still to run, each finished line ends with
the job time left, estimated from the jobs finished so far (see `cost_class`): one process runs jobs
one after another, so locally that is the time to the end (with N jobs at once, about 1/N of it, also
printed); on SLURM, the serial work still queued.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from collections.abc import Iterable
from typing import TextIO

from harness.planner import Job


def cost_class(job: Job) -> tuple[tuple, float]:
    """(class, units): jobs of one class cost about the same per unit. Pretraining: a method with
    its number of small crops, per step (epochs x the steps of an epoch) when the spec gives the
    data's size (Table S1's 8x pretraining costs 8 of the 1x one), else per epoch, the two kept
    apart (a paper-profile row on a whole dataset has no size); a transfer job: its task on its
    target, per job. The first two fields name the kin classes (a task on other targets) of a
    class not seen yet."""
    spec = job.spec
    if job.kind == "pretrain":
        small = (spec.get("aug") or {}).get("n_small", 0)
        epochs = max(spec.get("epochs") or 1, 1)
        images, batch = (spec.get("data") or {}).get("size"), spec.get("batch_size")
        if images and batch:
            return ("pretrain", spec.get("method"), small, "step"), float(epochs * max(images // batch, 1))
        return ("pretrain", spec.get("method"), small, "epoch"), float(epochs)
    return (job.kind, spec.get("task"), (spec.get("data") or {}).get("name")), 1.0


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


class TimeLeft:
    """Job time still to run, from the jobs finished so far: each pending job at its class's median
    cost per unit (cost_class; the median, so that one job slowed by a pause or a busy machine does
    not skew its class); a class not seen yet at its kin's mean job (its task on other targets, its
    method with other crops), else at the mean finished job."""

    def __init__(self) -> None:
        self._cost: dict[tuple, list[tuple[float, float]]] = {}  # class -> [(seconds, units)] finished

    def add(self, job: Job, seconds: float) -> None:
        cls, units = cost_class(job)
        self._cost.setdefault(cls, []).append((seconds, units))

    def __call__(self, pending: Iterable[Job]) -> float | None:
        """Seconds for `pending`; None before any job finished."""
        if not self._cost:
            return None
        return sum(self.job(job) or 0.0 for job in pending)

    def job(self, job: Job) -> float | None:
        """Seconds for one job; None before any job finished."""
        if not self._cost:
            return None
        cls, units = cost_class(job)
        if done := self._cost.get(cls):
            return statistics.median(seconds / n for seconds, n in done) * units
        kin = [c for k, c in self._cost.items() if k[:2] == cls[:2]] or list(self._cost.values())
        return statistics.mean(seconds for c in kin for seconds, _ in c)


def time_left_line(left: float) -> str:
    return f"~{_duration(left)} of jobs left"


class Reporter:
    def __init__(
        self,
        total: int,
        stream: TextIO | None = None,
        quiet_s: float = 30.0,
        pending: list[Job] | None = None,
        at_once: int = 1,
    ):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.total = total
        self.index = 0
        self.quiet_s = quiet_s
        self._started: dict[str, float] = {}
        self._last_line = 0.0
        self._slurm_seen: dict[str, str] = {}
        self._pending = {job.key: job for job in pending or []}  # to run: for the time-left estimate
        self._time_left = TimeLeft()
        self.at_once = at_once  # jobs run at once (a parallel local run): the wall time left is about 1 / at_once

    # -- events -----------------------------------------------------------------------------

    def cached(self, job: Job) -> None:
        self._pending.pop(job.key, None)
        self._line(f"= {job.name}  (cached)")

    def start(self, job: Job) -> None:
        self._started[job.key] = time.time()
        self._status(f"> {job.name} ...", force=True)

    def progress(self, job: Job, info: dict) -> None:
        self._status(self._running_text(job, info))

    def running(self, jobs: list[tuple[Job, dict | None]]) -> None:
        """The status line for jobs running at once (a parallel local run), each with its last progress."""
        self._status(" | ".join(self._running_text(job, info or {}) for job, info in jobs))

    def _running_text(self, job: Job, info: dict) -> str:
        now = time.time()
        return f"> {job.name}  {describe(info)}  {now - self._started.get(job.key, now):.0f} s"

    def finished(self, job: Job, result: dict) -> None:
        wall = result.get("wall_s")
        summary = f"{result['value']:.2f}" if "value" in result else ""
        if "loss_history" in result and result["loss_history"]:
            summary = f"loss {result['loss_history'][-1]:.3f}"
        started = self._started.get(job.key)
        seconds = wall if wall is not None else None if started is None else time.time() - started
        if self._pending.pop(job.key, None) is not None and seconds is not None:
            self._time_left.add(job, seconds)
        text = f"+ {job.name}  {summary}  {wall:.1f} s" if wall is not None else f"+ {job.name}"
        self._line(text + self._left())

    def failed(self, job: Job, reason: str) -> None:
        self._pending.pop(job.key, None)
        self._line(f"! {job.name}  FAILED: {reason}")

    def blocked(self, job: Job, by: Job) -> None:
        self._pending.pop(job.key, None)
        self._line(f"x {job.name}  blocked by failed '{by.name}'")

    def time_left(self) -> float | None:
        """Seconds of job time still to run (TimeLeft); None before a job finished."""
        return self._time_left(self._pending.values())

    def estimate(self, job: Job) -> float | None:
        """Seconds `job` should take, from the jobs finished so far (TimeLeft.job); None before any."""
        return self._time_left.job(job)

    def _left(self) -> str:
        left = self.time_left() if self._pending else None
        if left is None:
            return ""
        wall = f", ~{_duration(left / self.at_once)} at {self.at_once} at once" if self.at_once > 1 else ""
        return f"  · {time_left_line(left)}{wall}"

    def submitted(self, job: Job, slurm_id: str) -> None:
        self._line(f"^ {job.name}  submitted as SLURM job {slurm_id}", count=False)

    def attached(self, job: Job, slurm_id: str) -> None:
        self._line(f"^ {job.name}  already queued as SLURM job {slurm_id}: following it", count=False)

    def slurm_state(self, job: Job, state: str, progress: dict | None) -> None:
        detail = f"  {describe(progress)}" if progress else ""
        self._status(f"~ {job.name}  {state}{detail}")

    # -- output -----------------------------------------------------------------------------

    def _line(self, text: str, count: bool = True) -> None:
        if count:
            self.index += 1
            text = f"[{self.index}/{self.total}] {text}"
        if self.tty:
            text = "\r\033[K" + text
        print(text, file=self.stream, flush=True)

    def _status(self, text: str, force: bool = False) -> None:
        now = time.time()
        if self.tty:
            width = shutil.get_terminal_size().columns - 1  # a wrapped line cannot be redrawn in place
            print(f"\r\033[K{text[:width]}", end="", file=self.stream, flush=True)
        elif force or now - self._last_line > self.quiet_s:
            print(f"  {text}", file=self.stream, flush=True)
            self._last_line = now


def describe(info: dict) -> str:
    """'epoch 3/10 step 12/31 loss 6.120 412 img/s' from a progress report (epoch and step are 1-based, as every
    job reports them: pretrain/train.py, transfer/dense.py, transfer/lincls.py)."""
    parts = []
    if "epoch" in info:
        parts.append(f"epoch {info['epoch']}/{info.get('epochs', info.get('of', '?'))}")
    if "step" in info:
        parts.append(f"step {info['step']}/{info.get('steps', '?')}")
    if "loss" in info:
        parts.append(f"loss {info['loss']:.3f}")
    if "images_per_s" in info:
        parts.append(f"{info['images_per_s']:.0f} img/s")
    if "stage" in info:
        parts.append(str(info["stage"]))
    return " ".join(parts)
