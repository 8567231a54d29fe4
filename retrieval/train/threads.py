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

A few steps are a noisy sample, and a wrong choice is held for the whole hold: single
runs of bench_train.py --load made 0.38x of their quiet speed with two threads held
where one thread made 0.53x. So the held count keeps being timed: when its recent
median is clearly slower than another count's in the last probes, the hold ends early
and all are measured again. A close call (the runner-up within ``close`` of the
fastest) is held a third as long, since its probes may have been the unlucky ones.
The trainer also asks for a new round when its own load changes: the first epoch's
image decoding stops once the pixels are cached.

Only for runs with a time budget: a different thread count can change the rounding
of a matrix product, and a run of a fixed number of epochs is expected to give the
same model every time (a run with a time budget never did: its step count depends on
the machine).
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from typing import Callable

import torch


class ThreadTuner:
    """Probe each candidate thread count for ``probe_steps`` steps, hold the fastest, re-probe.

    Call :meth:`before_step` before each optimizer step and :meth:`after_step` with its
    wall time (data wait included: what a time budget buys is steps per second). While
    holding, the last ``2 * probe_steps`` steps are timed; a median more than ``slack``
    slower than another count's probe median ends the hold; a choice whose runner-up was
    within ``close`` is held ``hold_seconds / 3``. :meth:`remeasure` ends the hold on request.
    """

    def __init__(self, max_threads: int, probe_steps: int = 3, hold_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic,
                 set_threads: Callable[[int], None] = torch.set_num_threads, slack: float = 0.15,
                 close: float = 0.2) -> None:
        self.candidates = sorted({max(1, max_threads), max(1, max_threads // 2), 1}, reverse=True)
        self.probe_steps = max(1, probe_steps)
        self.hold_seconds = hold_seconds
        self.slack = slack
        self.close = close
        self.clock = clock
        self._set = set_threads
        self.current = self.candidates[0]
        self.choices: list[int] = []  # the count chosen after each round of probes
        # What each round measured and why it ended, for the training log: {"ms": {count: median},
        # "chose": count, "held_ms": the held steps' median when a slower hold ended early}.
        self.rounds: list[dict[str, object]] = []
        self._times: dict[int, list[float]] = {}
        self._probe_index = 0
        self._skip = 1  # the first step after a change pays for starting the threads
        self._hold_until: float | None = None
        self._held: deque[float] = deque(maxlen=2 * self.probe_steps)  # the held count's recent steps
        self._rival = float("inf")  # the fastest other count's median in the last probes
        self._applied = False
        self._apply(self.candidates[0])

    @property
    def probing(self) -> bool:
        return self._hold_until is None

    def before_step(self) -> None:
        if self._hold_until is not None and self.clock() >= self._hold_until:
            self.remeasure()  # the load may have changed

    def remeasure(self) -> None:
        """End the hold: a new round of probes starts, the held count first (the best guess)."""
        if self._hold_until is None:
            return  # already measuring
        self._hold_until = None
        order = [self.current] + [c for c in self.candidates if c != self.current]
        self.candidates = order
        self._probe_index, self._times = 0, {}
        self._apply(order[0])

    def after_step(self, seconds: float) -> None:
        if len(self.candidates) == 1:
            return
        if not self.probing:
            self._held.append(seconds)
            held = statistics.median(self._held) if len(self._held) == self._held.maxlen else 0.0
            if held > (1 + self.slack) * self._rival:
                if self.rounds:
                    self.rounds[-1]["held_ms"] = round(held * 1000, 1)
                self.remeasure()  # the choice was a noisy one, or the load changed
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
        medians = {c: statistics.median(t) for c, t in self._times.items()}
        best = min(medians, key=medians.__getitem__)
        self.choices.append(best)
        self.rounds.append({"ms": {c: round(m * 1000, 1) for c, m in medians.items()}, "chose": best})
        self._apply(best)
        self._skip = 0  # a hold times every step: a switch's slow first step is one step of the window
        self._held.clear()
        self._rival = min((m for c, m in medians.items() if c != best), default=float("inf"))
        close_call = self._rival <= (1 + self.close) * medians[best]
        self._hold_until = self.clock() + (self.hold_seconds / 3 if close_call else self.hold_seconds)

    def _apply(self, threads: int) -> None:
        if threads != self.current or not self._applied:
            self._set(threads)
            self._skip = 1
        self._applied = True
        self.current = threads
