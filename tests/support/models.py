"""Models for tests, loaded by file path on the Dask workers ("path/models.py:name")."""

from __future__ import annotations

import math
import time

import numpy as np


def linear(params, seed):
    """y[t] = a * t + b (deterministic): scores can be computed by hand."""
    t = np.arange(3, dtype=float)
    return {"y": params["a"] * t + params["b"], "z": np.array([params["a"] + params["b"]])}


linear.outputs = ("y", "z")


def noisy_linear(params, seed):
    """linear plus seeded noise: replicates differ, trials with equal seeds agree."""
    rng = np.random.default_rng(seed)
    out = linear(params, seed)
    out["y"] = out["y"] + rng.normal(0, 0.1, size=3)
    return out


def echo(params, seed):
    """Returns its own parameters and seed: catches any mix-up of results between trials."""
    return {"a": np.array([params["a"]]), "b": np.array([params["b"]]), "seed": np.array([float(seed)])}


def raises_above(params, seed):
    """Raises when a > 1.6 (20% of [0, 2])."""
    if params["a"] > 1.6:
        raise ValueError(f"unstable for a={params['a']:.3f}")
    return linear(params, seed)


def nan_above(params, seed):
    """Returns NaN when a > 1.6."""
    out = linear(params, seed)
    if params["a"] > 1.6:
        out["y"] = out["y"] * math.nan
    return out


def always_fails(params, seed):
    raise RuntimeError("broken model: missing input file")


def hangs_above(params, seed):
    """Sleeps 30 s when a > 1.6, otherwise as linear."""
    if params["a"] > 1.6:
        time.sleep(30)
    return linear(params, seed)


def slow(params, seed):
    """linear after sleeping `delay` seconds (fixed parameter, default 0.2)."""
    time.sleep(float(params.get("delay", 0.2)))
    return linear(params, seed)


def flaky(params, seed):
    """Fails the first attempt for each (trial parameters, seed), then works (needs marker_dir)."""
    import hashlib
    from pathlib import Path

    key = hashlib.sha1(f"{params['a']!r}-{params['b']!r}-{seed}".encode()).hexdigest()
    marker = Path(params["marker_dir"]) / key
    if not marker.exists():
        marker.touch()
        raise OSError("flaky first attempt: transient I/O error")
    return linear(params, seed)


def gated(params, seed):
    """linear, but the replicate whose seed is `gated_seed` first waits (at most 60 s) for the file `gate`."""
    from pathlib import Path

    if seed == int(params.get("gated_seed", -1)):
        deadline = time.monotonic() + 60
        while not Path(params["gate"]).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    return linear(params, seed)


def timed(params, seed):
    """slow, recording when it ran: appends ``start end a b`` (wall-clock seconds, the trial's
    parameters) to ``log_dir``/runs."""
    import os

    start = time.time()
    time.sleep(float(params.get("delay", 0.2)))
    end = time.time()
    with open(os.path.join(params["log_dir"], "runs"), "a") as f:
        f.write(f"{start!r} {end!r} {params['a']!r} {params['b']!r}\n")
    return linear(params, seed)
