"""One test model, every output form: for tests/test_matrix.py (loaded by file path on the workers).

The truth: daily hospital admissions by age group and region over 30 weeks from
2024-01-01 (a Monday; weeks end on Sundays), a wave of height ``scale`` peaking on
day ``peak``. :func:`long_table` is that truth (or a Poisson draw around it) as a
long table at the grain a target asks for; :func:`pack` puts a long table into one
output *form* (1-D array, 2-D array, mapping of columns, DataFrame with a
DatetimeIndex, DataFrame with a MultiIndex). :func:`model` reads from its fixed
parameters which grain, keys and form to return, so one model serves every
(target form, output form) pair of the matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

START = np.datetime64("2024-01-01")
WEEKS = 30
DAYS = 7 * WEEKS
AGES = {"0-17": 0.25, "18-64": 1.0, "65+": 3.0}
REGIONS = {"north": 1.0, "south": 0.5}
TRUE = {"scale": 40.0, "peak": 100.0}
RANGES = {"scale": (10.0, 120.0), "peak": (60.0, 150.0)}
OUTPUT_FORMS = ("array1d", "array2d", "mapping", "frame_dates", "frame_multiindex")


def daily_mean(scale: float, peak: float) -> np.ndarray:
    """Expected daily admissions of the whole population at factor 1, (DAYS,)."""
    t = np.arange(DAYS, dtype=float)
    return 0.2 + scale * np.exp(-(((t - peak) / 25.0) ** 2))


def long_table(params: dict[str, Any], seed: int | None, *, grain: str, time: str, groups: tuple[str, ...],
               columns: tuple[str, ...] = ("admissions",)) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(keys, values): the truth at ``params`` as a long table, a Poisson draw when ``seed`` is not None.

    grain: ``daily`` or ``weekly`` (weekly rows are dated by the week's Sunday, or
    numbered 0..29). time: ``date`` (datetime64), ``day`` (day number since START),
    ``week`` (week number) or ``row`` (the same as week / day: the row number).
    groups: any of ``age_group``, ``region``. columns: value columns; with several,
    column j is the age group j (wide, one column per age group; groups then empty).
    """
    rng = None if seed is None else np.random.default_rng(seed)
    base = daily_mean(float(params["scale"]), float(params["peak"]))
    if grain == "weekly":
        base = base.reshape(WEEKS, 7).sum(axis=1)
        stamps = START + np.timedelta64(6, "D") + 7 * np.arange(WEEKS).astype("timedelta64[D]")
    else:
        stamps = START + np.arange(DAYS).astype("timedelta64[D]")
    n = len(base)
    combos: list[tuple[str, ...]] = [()]
    for g in groups:
        labels = AGES if g == "age_group" else REGIONS
        combos = [(*c, lab) for c in combos for lab in labels]
    keys: dict[str, list] = {"time": [], **{g: [] for g in groups}}
    rows: list[list[float]] = []
    for i in range(n):
        for combo in combos:
            factor = 1.0
            for g, lab in zip(groups, combo):
                factor *= (AGES if g == "age_group" else REGIONS)[lab]
                keys[g].append(lab)
            keys["time"].append(i)
            if len(columns) > 1:
                rows.append([base[i] * f for f in list(AGES.values())[: len(columns)]])
            else:
                rows.append([base[i] * factor])
    mean = np.array(rows, dtype=float)
    values = mean if rng is None else rng.poisson(mean).astype(float)
    step = np.array(keys.pop("time"))
    time_values = {"date": stamps[step], "day": (stamps[step] - START).astype(int).astype(float),
                   "week": step.astype(float), "row": step.astype(float)}[time]
    out_keys = {("date" if time in ("date", "day") else "week"): time_values,
                **{g: np.array(v, dtype=object) for g, v in keys.items()}}
    return out_keys, {c: values[:, j] for j, c in enumerate(columns)}


def pack(form: str, keys: dict[str, np.ndarray], values: dict[str, np.ndarray]) -> Any:
    """A long table in one output form (see OUTPUT_FORMS), as a model author would write it (a form
    that cannot hold the keys loses them: the service must then refuse the output)."""
    import pandas as pd

    names = list(keys)
    time_key = names[0]
    if form == "array1d":  # the first value column; keys are lost (a target that needs them must refuse it)
        return next(iter(values.values()))
    if form == "array2d":
        return np.column_stack(list(values.values()))
    if form == "mapping":
        t = keys[time_key]
        shown = t.astype(str) if np.issubdtype(t.dtype, np.datetime64) else t  # ISO strings, as a model writes them
        return {time_key: shown, **{k: v for k, v in keys.items() if k != time_key}, **values}
    if form == "frame_dates":
        t = keys[time_key]
        if not np.issubdtype(t.dtype, np.datetime64):
            t = START + t.astype(int).astype("timedelta64[D]")  # day numbers as dates
        index = pd.DatetimeIndex(t.astype("datetime64[ns]"), name="date")
        return pd.DataFrame({**{k: v for k, v in keys.items() if k != time_key}, **values}, index=index)
    if form == "frame_multiindex":
        arrays = [pd.DatetimeIndex(v.astype("datetime64[ns]")) if np.issubdtype(v.dtype, np.datetime64) else v
                  for v in keys.values()]
        return pd.DataFrame(values, index=pd.MultiIndex.from_arrays(arrays, names=names))
    raise ValueError(f"unknown output form {form!r}")


def model(params: dict[str, Any], seed: int) -> dict[str, Any]:
    """The test model: admissions at the grain, keys and in the form its fixed parameters name."""
    groups = tuple(g for g in str(params.get("groups", "")).split(",") if g)
    columns = tuple(c for c in str(params.get("columns", "admissions")).split(",") if c)
    keys, values = long_table(params, seed, grain=params["grain"], time=params["time"], groups=groups, columns=columns)
    return {"admissions": pack(params["form"], keys, values)}
