"""How torch's (and faiss's) OpenMP threads wait at a barrier: sleep, not spin, on a busy machine.

torch's CPU wheels run every parallel op on GNU OpenMP (MKL and oneDNN included).
By default a thread that reaches the end of its share of an op spins (up to
``GOMP_SPINCOUNT`` = 300,000 iterations) waiting for the others before it sleeps.
On a machine to itself that saves a wake-up; on a busy one the thread it waits
for has often been descheduled by another process, so the spinner burns its own
time slice doing nothing, op after op. Measured on this project's 2-core machine
with other jobs running (load 12-20), 27 training steps of a tiny model
(``benchmarks/bench_train.py --load`` measures it properly):

| waiting | wall s | CPU s |
|---|---|---|
| spin (default, 2 threads) | 84-104 | 27-37 |
| ``GOMP_SPINCOUNT=100000`` | 100 | 33 |
| ``GOMP_SPINCOUNT=10000`` | 33 | 8 |
| ``GOMP_SPINCOUNT=1000`` | 14 | 3.6 |
| ``OMP_WAIT_POLICY=PASSIVE`` | 6-11 | 2.5-2.9 |
| one thread | 7 | 2.3 |

libgomp reads these variables once, when it is loaded (with torch), so they can
only be chosen before torch is imported: :func:`prefer_passive_waiting` is called
by the commands that run models, first thing. A user's own setting always wins.
"""

from __future__ import annotations

import os
from pathlib import Path
import sys
from typing import MutableMapping

WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
_OPENMP_USERS = ("torch", "faiss", "onnxruntime")


def prefer_passive_waiting(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a wait policy; True when it will take effect.

    It takes effect only in a process that has not loaded an OpenMP runtime yet (torch,
    faiss, onnxruntime); after that it changes nothing and returns False.
    """
    env = os.environ if environ is None else environ
    if any(name in env for name in WAIT_VARIABLES):
        return False
    if environ is None and any(name in sys.modules for name in _OPENMP_USERS):
        return False
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def available_cpus() -> int:
    """CPUs this process may really use: its affinity mask and any cgroup (container) CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)
