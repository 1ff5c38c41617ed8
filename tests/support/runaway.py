"""Models that outlive their ``timeout_s``, for the runaway-model tests (loaded by file path).

Both hang when ``a > hang_above`` (fixed parameter, default 1.6: 20% of [0, 2]) and
otherwise return what ``linear`` returns. A hanging call first writes a marker file
``<marker_dir>/<pid>-<thread id>`` (when ``marker_dir`` is given), so a test can find
the process that holds the abandoned thread.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np


def _linear(params):
    t = np.arange(3, dtype=float)
    return {"y": params["a"] * t + params["b"]}


def _mark(params) -> None:
    if params.get("marker_dir"):
        (Path(params["marker_dir"]) / f"{os.getpid()}-{threading.get_native_id()}").touch()


def spins(params, seed):
    """Busy-loops forever in pure Python (a runaway CPU-bound model) when a > hang_above."""
    if params["a"] > float(params.get("hang_above", 1.6)):
        _mark(params)
        n = 0
        while True:
            n += 1
    return _linear(params)


def sleeps(params, seed):
    """Sleeps ``hang_s`` (default 3600 s) when a > hang_above: hangs without using the CPU."""
    if params["a"] > float(params.get("hang_above", 1.6)):
        _mark(params)
        time.sleep(float(params.get("hang_s", 3600)))
    return _linear(params)


spins.outputs = sleeps.outputs = ("y",)
