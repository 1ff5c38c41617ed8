"""Synthetic models for the benchmarks, loaded by the service by file path.

Entrypoints (give them to a job as ``/abs/path/benchmarks/synthetic.py:<name>``):

- ``sleepy(params, seed)``: sleeps a lognormal duration, then returns ``{"y": 3 floats}``.
  Sleeping releases the GIL, so many of these share one core: use it to measure
  how well the coordinator keeps Dask slots busy (many threads per worker).
- ``cpu(params, seed)``: the same duration burnt as CPU (a numpy loop, measured in
  thread CPU time, so a contended core makes it last longer in wall time, as a real
  model would). Use with process workers, one thread each, slots = cores.
- ``instant(params, seed)``: returns at once: coordination-only runs.

Parameters: ``x0``, ``x1`` in [0, 1] (searched) and ``mean_sim`` (fixed, seconds).

Duration of one replicate::

    a        = (x0 + x1) / 2
    median   = mean_sim * exp(0.5 * (a - 0.5)) / NORM * exp(-SIGMA**2 / 2)
    duration = median * exp(SIGMA * N(0, 1))            (lognormal, SIGMA = 0.5)

``NORM`` = E[exp(0.5 (a - 0.5))] for x0, x1 uniform on [0, 1], and the
``exp(-SIGMA**2/2)`` factor makes the lognormal noise mean 1, so the mean
duration over the search space is ``mean_sim`` (TPE concentrates its samples,
so a run's mean is within a few percent of it). The draw is seeded from
(seed, x0, x1): the service gives every trial the same replicate seeds (common
random numbers), and a seed alone would give every trial the same 5 durations.

Output: ``y = [1 + 2 (x0 - 0.5), 2 + 2 (x1 - 0.3), 3 + (x0 - x1 - 0.2)] + N(0, 0.05)``,
scored against observed ``y = [1, 2, 3]`` (sse): minimum near x0 = 0.5, x1 = 0.3.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

SIGMA = 0.5
SLOPE = 0.5
# E[exp(SLOPE * (a - 0.5))] for a = (x0 + x1) / 2, x0, x1 ~ U(0, 1) independent:
# = (E[exp(SLOPE/2 * (u - 0.5))])^2 with E[exp(k (u - 0.5))] = sinh(k/2) / (k/2).
_K = SLOPE / 2
NORM = (math.sinh(_K / 2) / (_K / 2)) ** 2
OBSERVED = (1.0, 2.0, 3.0)


def _rng(params: Mapping[str, Any], seed: int) -> np.random.Generator:
    x0, x1 = float(params["x0"]), float(params["x1"])
    return np.random.default_rng([int(seed), int(x0 * 2**31), int(x1 * 2**31)])


def duration(params: Mapping[str, Any], rng: np.random.Generator) -> float:
    """One replicate's lognormal duration in seconds (mean over the space = ``mean_sim``)."""
    mean_sim = float(params.get("mean_sim", 0.06))
    a = (float(params["x0"]) + float(params["x1"])) / 2
    median = mean_sim * math.exp(SLOPE * (a - 0.5)) / NORM * math.exp(-SIGMA**2 / 2)
    return median * math.exp(SIGMA * rng.standard_normal())


def _outputs(params: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    x0, x1 = float(params["x0"]), float(params["x1"])
    y = np.array([1 + 2 * (x0 - 0.5), 2 + 2 * (x1 - 0.3), 3 + (x0 - x1 - 0.2)])
    return {"y": y + rng.normal(0.0, 0.05, size=3)}


def sleepy(params: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Sleep a lognormal duration (releases the GIL), then return ``y``."""
    rng = _rng(params, seed)
    time.sleep(duration(params, rng))
    return _outputs(params, rng)


def cpu(params: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Burn a lognormal amount of CPU time (thread CPU seconds) in a numpy loop, then return ``y``."""
    rng = _rng(params, seed)
    need = duration(params, rng)
    a = rng.standard_normal(2048)
    start = time.thread_time()
    while time.thread_time() - start < need:  # element-wise only: no BLAS threads
        a = np.sin(a) + 0.1
    return _outputs(params, rng)


def instant(params: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Return at once: the trial costs only coordination (ask, Dask round trip, tell)."""
    return _outputs(params, _rng(params, seed))


for _fn in (sleepy, cpu, instant):
    _fn.outputs = ("y",)  # type: ignore[attr-defined]


if __name__ == "__main__":  # quick self-check of the duration normalisation
    r = np.random.default_rng(0)
    xs = r.random((200_000, 2))
    mean = np.mean([duration({"x0": a, "x1": b, "mean_sim": 1.0}, r) for a, b in xs[:50_000]])
    print(f"mean duration over the space with mean_sim=1: {mean:.4f} (NORM={NORM:.6f})")
