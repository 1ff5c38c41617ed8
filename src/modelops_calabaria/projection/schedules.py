"""Turn a scenario's changes into the parameters one simulation receives (pure).

A parameter stays a number until a dated change touches it; from then on it is a
per-day array of ``n_days`` values (element ``d``: model day ``d``, the day
``start_date + d``). :func:`check_changes` rejects, before anything runs, a change
the model cannot receive: an unknown parameter, a multiplication of a parameter
that has no value, a date outside the simulated days, a schedule on a parameter
the model does not declare ``schedulable``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from modelops_calabaria.errors import JobSpecError
from modelops_calabaria.projection.spec import Change


def schedulable_of(run: Callable[..., Any]) -> tuple[str, ...] | None:
    """The parameters a model accepts as per-day schedules (its ``schedulable`` attribute), None if undeclared.

    Looked up on the callable (a function; ``functools.wraps`` copies it onto the
    loader's wrapper), then on the object a ``simulate`` method is bound to.
    """
    for obj in (run, getattr(run, "__wrapped__", None), getattr(getattr(run, "__wrapped__", run), "__self__", None)):
        names = getattr(obj, "schedulable", None) if obj is not None else None
        if names is not None:
            return (names,) if isinstance(names, str) else tuple(names)
    return None


def _day(start: dt.date, date: dt.date) -> int:
    return (date - start).days


def check_changes(scenarios: Sequence[tuple[str, Sequence[Change]]], known: Iterable[str], with_value: Iterable[str],
                  schedulable: tuple[str, ...] | None, model: str, start: dt.date, n_days: int) -> None:
    """Raise JobSpecError (naming the scenario and change) for a change that cannot be applied.

    ``known``: parameters the job has (searched, fixed, and the model's schedulable ones);
    ``with_value``: those that carry a value in every draw (searched and fixed).
    """
    known, with_value = set(known), set(with_value)
    end = start + dt.timedelta(days=n_days)
    for name, changes in scenarios:
        for i, c in enumerate(changes):
            where = f"scenario '{name}', change {i + 1} ({c.parameter})"
            if c.parameter not in known:
                raise JobSpecError(f"{where}: not a parameter of this job",
                                   hint=f"use one of: {', '.join(sorted(known))}; or add it to the job's fixed")
            has_value = c.parameter in with_value or any(p.parameter == c.parameter and not p.dated and p.value is not None
                                                         for p in changes[:i])
            if (c.multiply is not None or c.dated) and not has_value:
                raise JobSpecError(f"{where}: {'multiply' if c.multiply is not None else 'a dated change'} needs the value "
                                   "it starts from, and the job gives it none",
                                   hint="add it to the job's fixed, or set a value in an earlier change")
            if c.dated and (schedulable is None or c.parameter not in schedulable):
                declared = "declares no schedulable parameters" if schedulable is None else f"accepts schedules for {', '.join(schedulable) or 'none'}"
                raise JobSpecError(f"{where}: a dated change needs a model that accepts a per-day schedule for it; "
                                   f"model {model} {declared}",
                                   hint="set model.schedulable = ('beta', ...) and read an array (docs/projections.md), or drop the dates")
            dates = [d for d, _ in c.steps] if c.steps else [d for d in (c.from_, c.until) if d is not None]
            for d in dates:
                if not start <= d <= end:
                    raise JobSpecError(f"{where}: date {d} is outside the simulated days {start} .. {end - dt.timedelta(days=1)}",
                                       hint="move the date, or project further (--until / --horizon)")


def apply_changes(params: Mapping[str, Any], changes: Sequence[Change], start: dt.date, n_days: int) -> dict[str, Any]:
    """``params`` with ``changes`` applied in order (see :mod:`.spec` for the conflict rule).

    Dated changes turn a parameter into a float array of ``n_days`` values.
    """
    out = dict(params)
    for c in changes:
        cur = out.get(c.parameter)
        if c.dated:
            series = np.full(n_days, np.nan) if cur is None else np.broadcast_to(np.asarray(cur, dtype=float), (n_days,)).copy()
            if c.steps is not None:
                for date, value in c.steps:
                    series[max(0, _day(start, date)):] = value
            else:
                lo = 0 if c.from_ is None else max(0, _day(start, c.from_))
                hi = n_days if c.until is None else min(n_days, _day(start, c.until))
                if c.value is not None:
                    series[lo:hi] = float(c.value)
                else:
                    series[lo:hi] *= float(c.multiply)  # type: ignore[arg-type]
            out[c.parameter] = series
        elif c.value is not None:
            out[c.parameter] = c.value
        else:
            out[c.parameter] = (np.asarray(cur, dtype=float) * c.multiply) if np.ndim(cur) else float(cur) * float(c.multiply)  # type: ignore[arg-type]
    return out
