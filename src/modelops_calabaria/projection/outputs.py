"""A projection's numbers: series, quantiles, summaries, paired differences, and the long table (pure).

Values arrive as one array ``(scenarios, draws, replicates, points)`` (run.collect).
A *series* is one value column of one target for one group of its keys
(``age_group=65+``), its points in date order. Quantiles are taken over the
``draws × replicates`` samples of each point. Summaries run over the projected
dates only (after the reference date): per sample, the peak (largest value), its
date, and the cumulative total; reported as the median and the 2.5-97.5 %
interval over samples. Paired differences against the baseline are taken per
sample, draw ``d`` replicate ``r`` of each scenario against the same of the
baseline (the same seeds: common random numbers), so their intervals carry
the scenario's effect, not the noise of two unrelated runs.

The long table here is a private converter: it goes when the shared
``targets/longform.py`` can write any model output as a long table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelops_calabaria.projection.grid import TargetGrid
from modelops_calabaria.projection.run import Plan

# The 23 quantile levels of the forecast hubs (FluSight, COVID-19 and scenario hubs).
HUB_LEVELS = (0.01, 0.025, *[round(0.05 * k, 2) for k in range(1, 20)], 0.975, 0.99)
INTERVAL = (0.025, 0.5, 0.975)


@dataclass(frozen=True)
class Series:
    """One value column of one target for one key group, in date order."""

    grid: int
    col: int
    target: str  # the label it reports under (name, or name/column)
    output: str
    keys: dict[str, str]
    rows: np.ndarray  # grid rows, by date
    points: np.ndarray  # indices into the points axis
    dates: np.ndarray  # datetime64[D]
    step_days: int

    @property
    def title(self) -> str:
        return self.target + "".join(f", {k}={v}" for k, v in self.keys.items())


def series_of(plan: Plan) -> list[Series]:
    """Every series of the plan's grids, in grid, column and group order."""
    out = []
    offset = 0
    for gi, g in enumerate(plan.grids):
        m = len(g.columns)
        names = list(g.keys)
        groups = list(dict.fromkeys(zip(*(g.keys[k] for k in names)))) if names else [()]
        for j in range(m):
            for group in groups:
                mask = np.ones(len(g.dates), dtype=bool)
                for k, v in zip(names, group):
                    mask &= g.keys[k] == v
                rows = np.flatnonzero(mask)
                rows = rows[np.argsort(g.dates[rows], kind="stable")]
                out.append(Series(gi, j, g.label(j), g.output, dict(zip(names, group)), rows, offset + rows * m + j,
                                  g.dates[rows], g.step_days))
        offset += g.points
    return out


def observed_of(grid: TargetGrid, s: Series) -> tuple[np.ndarray, np.ndarray]:
    """(dates, values) of the observations of one series (gaps left out)."""
    pos = {int(r): i for i, r in enumerate(s.rows)}
    keep = [i for i, r in enumerate(grid.obs_rows) if int(r) in pos and np.isfinite(grid.obs_values[i, s.col])]
    rows = [pos[int(grid.obs_rows[i])] for i in keep]
    return s.dates[rows], grid.obs_values[keep, s.col]


def horizons(s: Series, reference: dt.date) -> np.ndarray:
    """Periods after the reference date of each point (0 or less: not projected)."""
    days = (s.dates - np.datetime64(reference, "D")).astype(int)
    return np.ceil(days / s.step_days).astype(int)


def samples(values: np.ndarray, scenario: int, s: Series) -> np.ndarray:
    """(draws × replicates, dates) samples of one series under one scenario."""
    v = values[scenario][:, :, s.points]
    return v.reshape(-1, v.shape[-1])


def _interval(x: np.ndarray) -> list[float]:
    return [float(v) for v in np.quantile(x, INTERVAL)]


def summaries(plan: Plan, values: np.ndarray) -> list[dict[str, Any]]:
    """Per scenario and series, over the projected dates: peak size, peak date, cumulative total
    (median, 2.5 %, 97.5 %); and for each non-baseline scenario, the paired difference to the
    baseline of the cumulative total (baseline minus scenario: averted) and of the peak date (days of delay)."""
    rows = []
    for s in series_of(plan):
        future = horizons(s, plan.reference_date) > 0
        if not future.any():
            continue
        dates = s.dates[future]
        base = samples(values, 0, s)[:, future]
        for k, (name, _) in enumerate(plan.scenarios):
            x = samples(values, k, s)[:, future]
            peak_at = x.argmax(axis=1)
            peak_day = (dates[peak_at] - np.datetime64(plan.reference_date, "D")).astype(int)
            row = {"scenario": name, "target": s.target, "output": s.output, **s.keys,
                   "peak": _interval(x.max(axis=1)),
                   "peak_date": [str(np.datetime64(plan.reference_date, "D") + int(round(v))) for v in np.quantile(peak_day, INTERVAL)],
                   "cumulative": _interval(x.sum(axis=1))}
            if k > 0:
                base_day = (dates[base.argmax(axis=1)] - np.datetime64(plan.reference_date, "D")).astype(int)
                row["averted"] = _interval(base.sum(axis=1) - x.sum(axis=1))
                row["peak_delay_days"] = _interval((peak_day - base_day).astype(float))
            rows.append(row)
    return rows


def quantile_rows(plan: Plan, values: np.ndarray, levels: tuple[float, ...] = HUB_LEVELS) -> Iterator[dict[str, Any]]:
    """One row per scenario, series point: keys, date, horizon, and each level's quantile (``q<level>``)."""
    for s in series_of(plan):
        h = horizons(s, plan.reference_date)
        for k, (name, _) in enumerate(plan.scenarios):
            q = np.quantile(samples(values, k, s), levels, axis=0)
            for i in range(len(s.dates)):
                yield {"scenario": name, "target": s.target, "output": s.output, **s.keys, "date": str(s.dates[i]),
                       "horizon": int(h[i]), **{f"q{lv:g}": float(q[j, i]) for j, lv in enumerate(levels)}}


def key_columns(plan: Plan) -> list[str]:
    """The key columns of every target, first seen first (``age_group``, ``location``, ...)."""
    return list(dict.fromkeys(k for g in plan.grids for k in g.keys))


def long_table(plan: Plan, values: np.ndarray) -> dict[str, np.ndarray]:
    """The long form: scenario, draw, replicate, target, output, date, key columns, value (one row per simulated point)."""
    S, D, R, _ = values.shape
    keys = key_columns(plan)
    cols: dict[str, list[np.ndarray]] = {c: [] for c in ("scenario", "draw", "replicate", "target", "output", "date", *keys, "value")}
    for s in series_of(plan):
        n = len(s.points)
        block = S * D * R
        cols["scenario"].append(np.repeat(np.array([name for name, _ in plan.scenarios], dtype=object), D * R * n))
        cols["draw"].append(np.tile(np.repeat(np.arange(D), R * n), S))
        cols["replicate"].append(np.tile(np.repeat(np.arange(R), n), S * D))
        cols["target"].append(np.full(block * n, s.target, dtype=object))
        cols["output"].append(np.full(block * n, s.output, dtype=object))
        cols["date"].append(np.tile(s.dates, block))
        for k in keys:
            cols[k].append(np.full(block * n, s.keys.get(k), dtype=object))
        cols["value"].append(values[:, :, :, s.points].reshape(-1))
    return {c: np.concatenate(v) if v else np.array([]) for c, v in cols.items()}


def write_parquet(path: Any, table: dict[str, np.ndarray]) -> None:
    """Write the long table as Parquet (pyarrow), atomically."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for name, col in table.items():
        if name == "date":
            arrays[name] = pa.array(col.astype("datetime64[D]"), type=pa.date32())
        elif col.dtype == object:
            arrays[name] = pa.array(col.tolist(), type=pa.string())
        else:
            arrays[name] = pa.array(col)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(pa.table(arrays), tmp)
    os.replace(tmp, path)
