"""Models that misbehave at the process level, for tests/test_processes*.py (loaded by file path).

Each returns ``linear``'s output (``y = a * t + b``) when it behaves. Fixed parameters
choose the misbehaviour:

- ``exits``: sleeps ``delay`` (default 0.25 s), then, when ``a > exit_above`` (default
  1.6: 20% of [0, 2]), ends its process the way ``how`` says: ``os_exit`` (``os._exit(code)``),
  ``sys_exit`` (``sys.exit(code)``), ``sigterm`` / ``sigkill`` (a signal to itself).
- ``spins``: busy-loops forever in pure Python from its first call (a model that never ends).
- ``forks``: starts a grandchild that sleeps ``sleep_s`` (default 3600 s) and is orphaned
  (double fork), writing its pid to ``<marker_dir>/<pid>``, then returns.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np


def _linear(params):
    t = np.arange(3, dtype=float)
    return {"y": params["a"] * t + params["b"]}


def exits(params, seed):
    time.sleep(float(params.get("delay", 0.25)))
    if params["a"] > float(params.get("exit_above", 1.6)):
        how, code = params.get("how", "os_exit"), int(params.get("code", 7))
        if how == "os_exit":
            os._exit(code)
        if how == "sys_exit":
            sys.exit(code)
        os.kill(os.getpid(), signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
        time.sleep(60)  # the signal arrives
    return _linear(params)


def spins(params, seed):
    n = 0
    while True:
        n += 1


def forks(params, seed):
    marker_dir = Path(params["marker_dir"])
    child = os.fork()
    if child == 0:  # the child forks the sleeper and exits at once: the sleeper is orphaned
        try:
            if os.fork() == 0:
                (marker_dir / str(os.getpid())).touch()
                time.sleep(float(params.get("sleep_s", 3600)))
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(list(marker_dir.iterdir())) == 0:
        time.sleep(0.01)
    return _linear(params)


exits.outputs = spins.outputs = forks.outputs = ("y",)
