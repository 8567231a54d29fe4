"""Choosing torch's intra-op thread count by measurement while training on a CPU under a time budget.

Every parallel op ends at a barrier where its threads wait for the slowest. On a
machine to itself that costs little; beside other busy processes the slowest thread
is often descheduled, and every op waits for it to get a core back. Measured on two
cores with two busy competitors (benchmarks/bench_train.py --load 2, docs/training.md),
two threads made 0.21x their quiet speed, well below the fair share of 0.5. Fewer
threads wait at fewer barriers but get a smaller share of the CPU; which wins depends
on the model and on the load, and the load changes. So the tuner measures: it runs a
few steps with each candidate count (all CPUs, half, one), keeps the fastest for
``hold_seconds``, then measures again.

Only for runs with a time budget: a different thread count can change the rounding
of a matrix product, and a run of a fixed number of epochs is expected to give the
same model every time (a run with a time budget never did: its step count depends on
the machine).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


class ThreadTuner:
    """Probe each candidate thread count for ``probe_steps`` steps, hold the fastest, re-probe.

    Call :meth:`before_step` before each optimizer step and :meth:`after_step` with its
    wall time (data wait included: what a time budget buys is steps per second).
    """

    def __init__(self, max_threads: int, probe_steps: int = 3, hold_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic,
                 set_threads: Callable[[int], None] = torch.set_num_threads) -> None:
        self.candidates = sorted({max(1, max_threads), max(1, max_threads // 2), 1}, reverse=True)
        self.probe_steps = max(1, probe_steps)
        self.hold_seconds = hold_seconds
        self.clock = clock
        self._set = set_threads
        self.current = self.candidates[0]
        self.choices: list[int] = []  # the count chosen after each round of probes
        self._times: dict[int, list[float]] = {}
        self._probe_index = 0
        self._skip = 1  # the first step after a change pays for starting the threads
        self._hold_until: float | None = None
        self._applied = False
        self._apply(self.candidates[0])

    @property
    def probing(self) -> bool:
        return self._hold_until is None

    def before_step(self) -> None:
        if self._hold_until is not None and self.clock() >= self._hold_until:
            self._hold_until = None  # the load may have changed: measure again, best guess first
            order = [self.current] + [c for c in self.candidates if c != self.current]
            self.candidates = order
            self._probe_index, self._times = 0, {}
            self._apply(order[0])

    def after_step(self, seconds: float) -> None:
        if not self.probing or len(self.candidates) == 1:
            return
        if self._skip:
            self._skip -= 1
            return
        times = self._times.setdefault(self.current, [])
        times.append(seconds)
        if len(times) < self.probe_steps:
            return
        self._probe_index += 1
        if self._probe_index < len(self.candidates):
            self._apply(self.candidates[self._probe_index])
            return
        best = min(self._times, key=lambda c: statistics.median(self._times[c]))
        self.choices.append(best)
        self._apply(best)
        self._skip = 0  # holding: nothing more is measured until the next round
        self._hold_until = self.clock() + self.hold_seconds

    def _apply(self, threads: int) -> None:
        if threads != self.current or not self._applied:
            self._set(threads)
            self._skip = 1
        self._applied = True
        self.current = threads
