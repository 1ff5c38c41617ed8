"""A CPU-bound individual-based SIR model, written as a user's model module.

Loaded by the service as ``cpu_model.py:ibm_sir`` (a path relative to the job file),
and imported by the plain Optuna script of ``cpu_per_trial.py`` as an ordinary module.
About 0.2 s of one core per replicate on the benchmark machine (numpy, one thread).

Each run appends its own thread CPU-seconds to the file named by the environment
variable ``CPU_MODEL_LOG`` (one line per run, ``O_APPEND``: whole lines from many
processes), so that a benchmark can split a run's CPU into simulation and the rest.
"""

from __future__ import annotations

import os
import time

import numpy as np

LOG_ENV = "CPU_MODEL_LOG"


def _simulate(p_transmit: float, p_recover: float, seed: int, n: int, days: int, contacts: int,
              initial_infected: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    state = np.zeros(n, dtype=np.int8)  # 0 S, 1 I, 2 R
    state[rng.choice(n, initial_infected, replace=False)] = 1
    daily = np.zeros(days)
    for day in range(days):
        # Every person meets ``contacts`` people drawn from everyone, every day: the work is
        # the same whatever the parameters, so both ways of a benchmark simulate alike.
        met = rng.integers(0, n, size=(n, contacts))
        infectious_met = (state[met] == 1).sum(axis=1)
        p_infection = 1.0 - (1.0 - p_transmit) ** infectious_met
        new = (state == 0) & (rng.random(n) < p_infection)
        recover = (state == 1) & (rng.random(n) < p_recover)
        state[new] = 1
        state[recover] = 2
        daily[day] = new.sum()
    return daily.reshape(-1, 7).sum(axis=1)


def ibm_sir(params, seed):
    """Weekly new infections of an individual-based SIR (``population`` people, default 30000;
    ``contacts`` per person per day, default 4; ``n_days`` 84)."""
    started = time.thread_time()
    weekly = _simulate(float(params["p_transmit"]), float(params["p_recover"]), int(seed),
                       int(params.get("population", 30_000)), int(params.get("n_days", 84)),
                       int(params.get("contacts", 4)), int(params.get("initial_infected", 20)))
    log = os.environ.get(LOG_ENV)
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{time.thread_time() - started:.6f}\n".encode())
        finally:
            os.close(fd)
    return {"incidence": weekly}


ibm_sir.outputs = ("incidence",)
