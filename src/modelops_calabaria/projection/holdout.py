"""The forecast check: calibrate on the data up to a date, project, score against what came after.

:func:`truncate_job` is the job that sees only observations dated on or before
the hold-out date (what a calibration for the check runs on); :func:`held_back`
finds the observations after it in the full job and where they sit on the
projection's grid; :func:`score` compares them with the baseline projection:
the weighted interval score (:mod:`.wis`) and whether each falls in the 50 % and
95 % central intervals. A row target's date is the end of its period
(``start_date + step_days * (row + 1) - 1``), as on the grid.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelops_calabaria.errors import JobSpecError
from modelops_calabaria.job import CalibrationJob, job_from_dict
from modelops_calabaria.projection.grid import build_grids
from modelops_calabaria.projection.outputs import HUB_LEVELS
from modelops_calabaria.projection.run import Plan
from modelops_calabaria.projection.wis import coverage, wis
from modelops_calabaria.targets.evaluate import CompiledTarget


@dataclass(frozen=True)
class HeldBack:
    """One held-back observation: its target label, keys, date, grid point and value."""

    target: str
    keys: dict[str, str]
    date: str
    point: int
    value: float


def truncate_job(job: CalibrationJob, targets: Sequence[CompiledTarget], after: dt.date, start: dt.date,
                 step_days: int) -> CalibrationJob:
    """``job`` with every target's observations limited to those dated on or before ``after`` (data inline).

    Raises:
        JobSpecError: a target would keep no observation.
    """
    data = job.model_dump(mode="json", by_alias=True, exclude_none=True)
    grids = build_grids(targets, start, step_days, 0, None)
    for i, (t, g) in enumerate(zip(targets, grids)):
        keep = g.dates[g.obs_rows] <= np.datetime64(after, "D")
        if not keep.any():
            raise JobSpecError(f"target '{t.name}' has no observation on or before {after}", hint="pick a later hold-out date")
        table = t.observed.table
        if table is None:  # a row target: its rows and values
            index_col = job.targets[i].index_column or "row"
            table = {index_col: [int(x) for x in t.observed.index], **{c: [None if not np.isfinite(v) else float(v) for v in t.observed.values[:, j]]
                                                                       for j, c in enumerate(t.observed.columns)}}
            data["targets"][i]["index_column"] = index_col
        data["targets"][i]["data"] = {c: [v for v, k in zip(col, keep) if k] for c, col in table.items()}
        data["targets"][i].pop("value_columns", None)
        data["targets"][i]["value_columns"] = list(t.observed.columns)
    return job_from_dict(data, source=f"job {job.study} up to {after}", base_dir=job.base_dir)


def held_back(plan: Plan, truth: Sequence[CompiledTarget], after: dt.date, step_days: int) -> list[HeldBack]:
    """The observations of ``truth`` (the full job's targets) dated after ``after``, on the plan's grid.

    Raises:
        JobSpecError: a held-back observation falls outside the projected dates (project further).
    """
    by_name = {g.name: (gi, g) for gi, g in enumerate(plan.grids)}
    full = build_grids(truth, plan.start, step_days, 0, None)
    offsets = np.cumsum([0] + [g.points for g in plan.grids])
    out = []
    for t, fg in zip(truth, full):
        if t.name not in by_name:
            continue
        gi, g = by_name[t.name]
        where = {(str(d), *(g.keys[k][r] for k in g.keys)): r for r, d in enumerate(g.dates)}
        for i, row in enumerate(fg.obs_rows):
            date = fg.dates[row]
            if date <= np.datetime64(after, "D"):
                continue
            keys = {k: str(fg.keys[k][row]) for k in fg.keys}
            r = where.get((str(date), *keys.values()))
            if r is None:
                raise JobSpecError(f"held-back observation of '{t.name}' on {date} lies past the projection's last date",
                                   hint="project further (--until), or hold out less")
            for j in range(len(g.columns)):
                if np.isfinite(fg.obs_values[i, j]):
                    out.append(HeldBack(g.label(j), keys, str(date), int(offsets[gi] + r * len(g.columns) + j), float(fg.obs_values[i, j])))
    return out


def score(plan: Plan, values: np.ndarray, points: Sequence[HeldBack], after: dt.date) -> dict[str, Any]:
    """WIS and 50 % / 95 % coverage of the baseline projection at the held-back observations."""
    if not points:
        return {"after": str(after), "points": 0}
    idx = np.array([p.point for p in points])
    base = values[0].reshape(-1, values.shape[-1])[:, idx]  # (draws x replicates, points)
    q = np.quantile(base, HUB_LEVELS, axis=0).T  # (points, levels)
    y = np.array([p.value for p in points])
    w = wis(q, HUB_LEVELS, y)
    c50, c95 = coverage(q, HUB_LEVELS, y, 0.5), coverage(q, HUB_LEVELS, y, 0.95)
    per_target: dict[str, Any] = {}
    for name in dict.fromkeys(p.target for p in points):
        m = np.array([p.target == name for p in points])
        per_target[name] = {"points": int(m.sum()), "wis": float(w[m].mean()), "coverage_50": float(c50[m].mean()),
                            "coverage_95": float(c95[m].mean())}
    rows = [{"target": p.target, **p.keys, "date": p.date, "observed": p.value, "median": float(q[i, HUB_LEVELS.index(0.5)]),
             "lower_95": float(q[i, HUB_LEVELS.index(0.025)]), "upper_95": float(q[i, HUB_LEVELS.index(0.975)]),
             "wis": float(w[i]), "in_50": bool(c50[i]), "in_95": bool(c95[i])} for i, p in enumerate(points)]
    return {"after": str(after), "scenario": plan.scenarios[0][0], "points": len(points), "wis": float(w.mean()),
            "coverage_50": float(c50.mean()), "coverage_95": float(c95.mean()), "per_target": per_target, "rows": rows}

