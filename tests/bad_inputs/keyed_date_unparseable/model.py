"""A daily model keyed by date (for bad-input cases)."""

import numpy as np


def daily(params, seed):
    days = np.arange("2024-01-01", "2024-03-01", dtype="datetime64[D]")
    t = np.arange(len(days), dtype=float)
    return {"cases": {"date": days.astype(str), "cases": params["amp"] * np.exp(-((t - 30.0) / 12.0) ** 2)}}


def by_region(params, seed):
    """Forgets the region column."""
    weeks = np.repeat(np.arange(4), 2)
    ages = np.tile(["0-17", "18+"], 4)
    return {"hosp": {"week": weeks, "age_group": ages, "hosp": np.full(8, params["amp"])}}
