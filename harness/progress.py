"""Live progress of a run: one line per finished job, and a live status line for the running one.

On a terminal the status line is redrawn in place; elsewhere (CI, log files) it is printed at most
every `quiet_s` seconds so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from harness.planner import Job


class Reporter:
    def __init__(self, total: int, stream: TextIO | None = None, quiet_s: float = 30.0):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.total = total
        self.index = 0
        self.quiet_s = quiet_s
        self._started: dict[str, float] = {}
        self._last_line = 0.0
        self._slurm_seen: dict[str, str] = {}

    # -- events -----------------------------------------------------------------------------

    def cached(self, job: Job) -> None:
        self._line(f"= {job.name}  (cached)")

    def start(self, job: Job) -> None:
        self._started[job.key] = time.time()
        self._status(f"> {job.name} ...", force=True)

    def progress(self, job: Job, info: dict) -> None:
        elapsed = time.time() - self._started.get(job.key, time.time())
        self._status(f"> {job.name}  {describe(info)}  {elapsed:.0f} s")

    def finished(self, job: Job, result: dict) -> None:
        wall = result.get("wall_s")
        summary = f"{result['value']:.2f}" if "value" in result else ""
        if "loss_history" in result and result["loss_history"]:
            summary = f"loss {result['loss_history'][-1]:.3f}"
        self._line(f"+ {job.name}  {summary}  {wall:.1f} s" if wall is not None else f"+ {job.name}")

    def failed(self, job: Job, reason: str) -> None:
        self._line(f"! {job.name}  FAILED: {reason}")

    def blocked(self, job: Job, by: Job) -> None:
        self._line(f"x {job.name}  blocked by failed '{by.name}'")

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
            print(f"\r\033[K{text[:150]}", end="", file=self.stream, flush=True)
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
