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


def _simulate(p_transmit: float, p_recover: float, seed: int, n: int, days: int, contacts: float,
              initial_infected: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    state = np.zeros(n, dtype=np.int8)  # 0 S, 1 I, 2 R
    state[rng.choice(n, initial_infected, replace=False)] = 1
    age_mixing = rng.random(n)  # each person's contact propensity (heterogeneous mixing)
    daily = np.zeros(days)
    for day in range(days):
        infectious = np.flatnonzero(state == 1)  # no early exit: every day costs about the same
        # Contacts of the infectious, weighted by each person's propensity: a draw per person-day.
        met = rng.integers(0, n, size=rng.poisson(contacts * infectious.size))
        met = met[(state[met] == 0) & (rng.random(met.size) < age_mixing[met] * 2.0)]
        hit = np.unique(met[rng.random(met.size) < p_transmit])
        recover = infectious[rng.random(infectious.size) < p_recover]
        state[hit] = 1
        state[recover] = 2
        # Everyone's daily status check (the per-agent work that makes an ABM cost what it does).
        _ = np.count_nonzero(rng.random(n) < age_mixing)
        daily[day] = hit.size
    return daily.reshape(-1, 7).sum(axis=1)


def ibm_sir(params, seed):
    """Weekly new infections of an individual-based SIR (``population`` people, default 200000)."""
    started = time.thread_time()
    weekly = _simulate(float(params["p_transmit"]), float(params["p_recover"]), int(seed),
                       int(params.get("population", 200_000)), int(params.get("n_days", 84)),
                       float(params.get("contacts", 8.0)), int(params.get("initial_infected", 50)))
    log = os.environ.get(LOG_ENV)
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{time.thread_time() - started:.6f}\n".encode())
        finally:
            os.close(fd)
    return {"incidence": weekly}


ibm_sir.outputs = ("incidence",)
