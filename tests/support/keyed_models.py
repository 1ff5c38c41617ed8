"""Models with keyed outputs for tests/test_keyed.py (loaded by file path on the workers).

Each returns the expected value of its observations (deterministic): the data in
tests/data/keyed/ were drawn around these means at known parameters by
tests/data/keyed/generate.py, so a calibration must find those parameters.
"""

from __future__ import annotations

import numpy as np

START = np.datetime64("2024-01-01")
DAYS = 182
AGES = ("0-17", "18-64", "65+")
REGIONS = ("north", "south")
POPULATION = {("0-17", "north"): 30_000, ("18-64", "north"): 90_000, ("65+", "north"): 25_000,
              ("0-17", "south"): 20_000, ("18-64", "south"): 70_000, ("65+", "south"): 30_000}
SEVERITY_BY_AGE = {"0-17": 0.2, "18-64": 1.0, "65+": 4.0}


def daily_wave(params, seed):
    """Daily expected cases of one epidemic wave, keyed by ISO date (2024-01-01 + day)."""
    t = np.arange(DAYS, dtype=float)
    dates = (START + np.arange(DAYS)).astype(str)
    return {"cases": {"date": dates, "cases": params["amp"] * np.exp(-(((t - params["peak"]) / 20.0) ** 2))}}


def weekly_frame(params, seed):
    """The same wave summed by week number (week w: days 7w..7w+6), as a pandas DataFrame."""
    import pandas as pd

    daily = daily_wave(params, seed)["cases"]["cases"]
    weekly = daily[: DAYS // 7 * 7].reshape(-1, 7).sum(axis=1)
    return {"cases": pd.DataFrame({"week": np.arange(len(weekly)), "cases": weekly})}


def hospital(params, seed):
    """Weekly admissions by age group and region: population x severity x age factor x growth around week 10."""
    weeks = np.arange(20)
    rows = [(w, a, r) for w in weeks for a in AGES for r in REGIONS]
    week = np.array([w for w, _, _ in rows])
    age = np.array([a for _, a, _ in rows])
    region = np.array([r for _, _, r in rows])
    pop = np.array([POPULATION[(a, r)] for _, a, r in rows], dtype=float)
    factor = np.array([SEVERITY_BY_AGE[a] for _, a, _ in rows])
    mean = pop * params["severity"] * 1e-4 * factor * np.exp(params["growth"] * (week - 10))  # centred: growth and severity decorrelated
    return {"admissions": {"week": week, "age_group": age, "region": region, "admissions": mean}}


def weekly_prevalence(params, seed):
    """Prevalence (a fraction) reported every 7 days, keyed by day number since the start date."""
    day = np.arange(0, DAYS, 7)
    p = params["pmax"] / (1.0 + np.exp(-params["k"] * (day - 70.0)))
    return {"prevalence": {"date": day, "prevalence": p}}
