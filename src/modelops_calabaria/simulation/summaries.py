"""A sweep's summaries of one simulation's outputs: one number per ``SummarySpec`` (pure; on the worker).

An output is read as a series over its first axis: a 1-D array as is; a 2-D array
summed over its columns; a table (``{column: values}`` or a DataFrame) by its
``column`` (default: its only numeric column that is not a time key). ``peak_time``
is the row of the peak, or its time key's value for a table with one (dates as days
since 1970-01-01); ``at`` takes a row number, or a date matched in a table's date key.

Raises SimulationError (the replicate fails, with the summary's name) for a missing
output or column, an empty series, a row or date it does not have, or a non-finite result.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelops_calabaria.errors import SimulationError
from modelops_calabaria.job import SummarySpec

TIME_KEYS = ("date", "day", "days", "week", "weeks", "time", "t", "step")


def _table(raw: Any) -> dict[str, np.ndarray] | None:
    if hasattr(raw, "columns") and hasattr(raw, "to_dict"):  # a DataFrame, without importing pandas
        return {str(c): np.asarray(raw[c]) for c in raw.columns}
    if isinstance(raw, Mapping):
        return {str(k): np.asarray(v) for k, v in raw.items()}
    return None


def _numeric(values: np.ndarray) -> bool:
    return values.dtype.kind in "iuf"


def _series(spec: SummarySpec, raw: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(values over rows, time key values or None)."""
    table = _table(raw)
    if table is None:
        arr = np.asarray(raw, dtype=float)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim > 2:
            raise SimulationError(f"summary '{spec.label}': output '{spec.output}' has {arr.ndim} dimensions (1 or 2 summarised)")
        return (arr.sum(axis=1) if arr.ndim == 2 else arr), None
    time_name = next((k for k in table if k.lower() in TIME_KEYS), None)
    if spec.column is not None:
        if spec.column not in table:
            raise SimulationError(f"summary '{spec.label}': output '{spec.output}' has no column '{spec.column}' (it has: {', '.join(table)})")
        column = spec.column
    else:
        numeric = [k for k, v in table.items() if k != time_name and _numeric(v)]
        if len(numeric) != 1:
            raise SimulationError(f"summary '{spec.label}': output '{spec.output}' has {len(numeric)} value columns "
                                  f"({', '.join(numeric)}): name one with 'column'")
        column = numeric[0]
    times = None
    if time_name is not None:
        t = table[time_name]
        times = t.astype("datetime64[D]").astype("int64").astype(float) if t.dtype.kind in "MOU" else np.asarray(t, dtype=float)
    return np.asarray(table[column], dtype=float), times


def _date_days(value: datetime.date) -> float:
    return float((value - datetime.date(1970, 1, 1)).days)


def summary(spec: SummarySpec, outputs: Mapping[str, Any]) -> float:
    """One summary of one simulation's outputs."""
    if spec.output not in outputs:
        raise SimulationError(f"summary '{spec.label}': model returned no output '{spec.output}' "
                              f"(it returned: {', '.join(map(str, outputs)) or 'nothing'})")
    values, times = _series(spec, outputs[spec.output])
    if values.size == 0:
        raise SimulationError(f"summary '{spec.label}': output '{spec.output}' is empty")
    stat = spec.stat
    if stat == "final":
        out = values[-1]
    elif stat == "peak":
        out = values.max()
    elif stat == "peak_time":
        row = int(np.argmax(values))
        out = times[row] if times is not None else row
    elif stat == "sum":
        out = values.sum()
    elif stat == "mean":
        out = values.mean()
    else:
        out = _at(spec, values, times)
    out = float(out)
    if not math.isfinite(out):
        raise SimulationError(f"summary '{spec.label}' of output '{spec.output}' is {out}")
    return out


def _at(spec: SummarySpec, values: np.ndarray, times: np.ndarray | None) -> float:
    at = spec.at
    if isinstance(at, datetime.date):
        if times is None:
            raise SimulationError(f"summary '{spec.label}': 'at' is a date but output '{spec.output}' has no date key")
        hit = np.flatnonzero(times == _date_days(at))
        if hit.size == 0:
            raise SimulationError(f"summary '{spec.label}': output '{spec.output}' has no row dated {at.isoformat()}")
        return float(values[hit[0]])
    assert isinstance(at, int)
    if at >= values.size:
        raise SimulationError(f"summary '{spec.label}': row {at} asked, output '{spec.output}' has {values.size}")
    return float(values[at])


def summarize(specs: Sequence[SummarySpec], outputs: Mapping[str, Any]) -> dict[str, float]:
    """Every summary of one simulation, by name."""
    return {s.label: summary(s, outputs) for s in specs}
