"""The points a projection reports: each target's observed rows, extended past the data.

A target by row number (``index_column``) reports rows ``0 .. last``; row ``r`` is
dated by the end of its period, ``start_date + r * step_days + step_days - 1``
(week ``w`` of a weekly output ends on day ``7w + 6``). A target keyed on a date
reports every observed date and the dates after the last one, one period apart
(the target's ``period``, else the smallest spacing of its dates), for every group
of its other keys (``age_group``, ``location``, ...).

The simulation service returns scalars, never outputs; each point is asked for as
a probe target whose "score" is the simulated value there (:class:`GridProbe`, as
``reporting/simulate.py`` does for the report's fit). The probes of one target
share one alignment per replicate (:class:`SharedAlignment`), so a target of
``n`` points costs one alignment, not ``n``.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelops_calabaria.errors import JobSpecError
from modelops_calabaria.targets.align import EPOCH, Aligner, KeyColumn
from modelops_calabaria.targets.data import Observed
from modelops_calabaria.targets.evaluate import CompiledTarget


class SharedAlignment:
    """The last alignment of one output per thread, shared by the probes of one target."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._local = threading.local()

    def get(self, outputs: Mapping[str, Any], align: Callable[[Mapping[str, Any]], np.ndarray]) -> np.ndarray:
        local = self._local
        if getattr(local, "outputs", None) is not outputs:  # identity: the same replicate's outputs
            local.sim = align(outputs)
            local.outputs = outputs
        return local.sim


@dataclass(frozen=True)
class GridProbe(CompiledTarget):
    """One projection point as a target: its replicate "score" is the simulated value at ``(row, col)``."""

    row: int = 0
    col: int = 0
    shared: SharedAlignment = field(default_factory=SharedAlignment)

    def align(self, outputs: Mapping[str, Any]) -> np.ndarray:
        return self.shared.get(outputs, lambda o: CompiledTarget.align(self, o))

    def loss(self, sim: np.ndarray, outputs: Mapping[str, Any] | None = None) -> float:
        return float(sim[self.row, self.col])


@dataclass(frozen=True)
class TargetGrid:
    """One target's projection points: rows (dates × groups) × value columns.

    ``obs_rows``/``obs_values``: the observed rows of the target mapped onto the grid
    (NaN where a cell is a gap), for the figures and the forecast check.
    """

    name: str
    output: str
    columns: tuple[str, ...]
    dates: np.ndarray  # datetime64[D], one per row
    keys: dict[str, np.ndarray]  # the other key columns, one string per row
    step_days: int
    probes: tuple[GridProbe, ...]
    obs_rows: np.ndarray
    obs_values: np.ndarray

    @property
    def points(self) -> int:
        return len(self.dates) * len(self.columns)

    def label(self, col: int) -> str:
        """The target name a value column reports under (``name`` alone for one column)."""
        return self.name if len(self.columns) == 1 else f"{self.name}/{self.columns[col]}"


def _days(date: dt.date) -> float:
    return float((np.datetime64(date, "D") - EPOCH).astype(int))


def _as_date64(days: np.ndarray) -> np.ndarray:
    return EPOCH + np.round(days).astype("int64").astype("timedelta64[D]")


def _probes(t: CompiledTarget, observed: Observed, aligner: Aligner | None) -> tuple[GridProbe, ...]:
    shared = SharedAlignment()
    n, m = observed.values.shape
    return tuple(GridProbe(f"{t.name}[{i},{j}]", t.output, observed, t.score, "mean_of_scores", 0.0,
                           aligner=aligner, row=i, col=j, shared=shared) for i in range(n) for j in range(m))


def index_grid(t: CompiledTarget, start: dt.date, step_days: int, horizon: int | None, until: dt.date | None) -> TargetGrid:
    """The grid of a target by row number: rows 0 .. last observed + horizon (or up to ``until``)."""
    index = t.observed.index
    assert index is not None
    last = int(index.max())
    end0 = _days(start) + step_days - 1
    if until is not None:
        rows = int((_days(until) - end0) // step_days) + 1
    else:
        rows = last + 1 + int(horizon or 0)
    rows = max(rows, last + 1)
    observed = Observed(np.arange(rows), np.zeros((rows, len(t.observed.columns))), t.observed.columns)
    dates = _as_date64(end0 + step_days * np.arange(rows, dtype=float))
    values = np.where(t.observed.present, t.observed.values, np.nan) if t.observed.present is not None else t.observed.values
    return TargetGrid(t.name, t.output, t.observed.columns, dates, {}, step_days, _probes(t, observed, None),
                      np.asarray(index, dtype=int), np.asarray(values, dtype=float))


def keyed_grid(t: CompiledTarget, horizon: int | None, until: dt.date | None, default_step: int) -> TargetGrid:
    """The grid of a target keyed on a date: observed dates, then one period apart, × the groups of its other keys."""
    obs, aligner = t.observed, t.aligner
    assert obs.keys is not None and aligner is not None
    time = next((k for k in obs.keys if k.name == obs.time_key), None)
    if time is None or time.kind != "date":
        raise JobSpecError(f"target '{t.name}': a projection extends a target past its data along a date key, "
                           f"and this one has {'no time key' if time is None else f'time key {time.name!r} of numbers'}",
                           hint="key the data on dates (with start_date when the model counts days), or use index_column")
    times = np.unique(time.values)
    step = aligner.period or (float(np.diff(times).min()) if times.size > 1 else float(default_step))
    last = float(times.max())
    if until is not None:
        extra = int((_days(until) - last) // step)
    else:
        extra = int(horizon or 0)
    times = np.concatenate([times, last + step * np.arange(1, max(extra, 0) + 1)])
    others = [k for k in obs.keys if k.name != time.name]
    if others:
        combos = list(dict.fromkeys(zip(*(k.values.tolist() for k in others))))
    else:
        combos = [()]
    n = len(times) * len(combos)
    t_col = np.repeat(times, len(combos))
    group_cols = [np.array([c[j] for _ in times for c in combos], dtype=others[j].values.dtype) for j in range(len(others))]
    grid_keys = []
    for k in obs.keys:
        values = t_col if k is time else group_cols[others.index(k)]
        grid_keys.append(KeyColumn(k.name, k.kind, values))
    observed = Observed(None, np.zeros((n, len(obs.columns))), obs.columns, keys=tuple(grid_keys), time_key=time.name)
    grid_aligner = Aligner(aligner.target, aligner.output, tuple(grid_keys), aligner.match, aligner.time_key,
                           aligner.start_day, aligner.period, aligner.value_columns)
    position = {(float(tv), *c): i for i, (tv, c) in enumerate((tv, c) for tv in times for c in combos)}
    obs_rows = np.array([position[(float(time.values[i]), *(k.values[i] for k in others))] for i in range(len(obs.values))])
    values = np.where(obs.present, obs.values, np.nan) if obs.present is not None else obs.values
    keys = {k.name: np.array([str(v) for v in col]) for k, col in zip(others, group_cols)}
    return TargetGrid(t.name, t.output, obs.columns, _as_date64(t_col), keys, int(round(step)),
                      _probes(t, observed, grid_aligner), obs_rows, np.asarray(values, dtype=float))


def build_grids(targets: Sequence[CompiledTarget], start: dt.date, step_days: int, horizon: int | None,
                until: dt.date | None) -> tuple[TargetGrid, ...]:
    """Every target's grid (raises JobSpecError for a target a projection cannot extend)."""
    return tuple(keyed_grid(t, horizon, until, step_days) if t.aligner is not None else index_grid(t, start, step_days, horizon, until)
                 for t in targets)


def days_needed(grids: Sequence[TargetGrid], start: dt.date) -> int:
    """Model days from ``start`` through the last date of every grid (whole weeks)."""
    last = max(int((g.dates.max() - np.datetime64(start, "D")).astype(int)) for g in grids) + 1
    return -(-last // 7) * 7


def last_observed(grids: Sequence[TargetGrid]) -> dt.date:
    """The latest date with an observation, over every target."""
    dates = [g.dates[g.obs_rows].max() for g in grids if len(g.obs_rows)]
    return max(dates).astype(dt.date)
