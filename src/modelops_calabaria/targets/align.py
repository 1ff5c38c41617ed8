"""Match a model output's rows to observed rows on named keys, vectorised.

An observed table has key columns (``date``, ``week``, ``age_group``, ...) and
value columns. A model output is normalised to the same shape: a mapping of
column → array, a pandas DataFrame (its named index becomes key columns), or
a bare array (its row number is the time key). :class:`Aligner` then picks,
for every observed row, the simulated value:

- ``exact``: the output row with the same keys;
- ``backward``: the last output row at or before the observed time (the model
  step containing it), ``forward``: the first at or after it, ``nearest``:
  the closer of the two; all within the observed row's group (the other keys);
- ``accumulate``: the sum of the output rows in the observed interval
  ``(t - period, t]`` (daily model, weekly data dated by the week's last day).

Value columns are matched by name; when the data and the output each have a
single value column, they are compared whatever their names.

Every key is turned into a comparable array once: dates into days since
1970-01-01 (float), numbers into floats, labels into strings. Matching is
``np.unique`` + ``np.searchsorted`` over integer codes, never a Python loop per
row, and the row indices are cached: a model that returns the same key
columns every replicate (the usual case) pays one ``np.array_equal`` per key
instead of the search.

A key that matches no output row, duplicate output rows or a missing key
column raise :class:`AlignmentError` naming the target and the key. Pure
functions and plain numpy: this runs on the Dask workers.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelops_calabaria.errors import SimulationError

EPOCH = np.datetime64("1970-01-01", "D")
TIME_NAMES = frozenset({"date", "day", "days", "week", "weeks", "time", "t", "step", "month", "year"})
_ISO_DATE = re.compile(r"^\d{4}[-./]\d{2}[-./]\d{2}")
# Year-first dates with '.' or '/' (starsim writes 2025.01.01): unambiguous, read as ISO 8601.
_YEAR_FIRST = re.compile(r"^(\d{4})([./])(\d{2})\2(\d{2})(?=$|[T ])")


def iso_date(value: Any) -> Any:
    """``2025.01.01`` or ``2025/01/01`` as ``2025-01-01`` (other values unchanged)."""
    if isinstance(value, str):
        return _YEAR_FIRST.sub(r"\1-\3-\4", value.strip(), count=1)
    return value


class AlignmentError(SimulationError):
    """The model output cannot be matched to a target's observed keys (a structural
    problem: the same for every parameter set, so the dry run reports it as bad input)."""


@dataclass(frozen=True)
class KeyColumn:
    """One observed key column, parsed.

    Attributes:
        name: Column name (the same name must exist in the model output).
        kind: ``date`` (values: days since 1970-01-01), ``number`` or ``label`` (strings).
        values: The parsed values, one per observed row.
    """

    name: str
    kind: str
    values: np.ndarray


def date_days(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """ISO 8601 dates (strings, ``datetime.date``, ``datetime64``) as float days since 1970-01-01.

    Raises:
        ValueError: a value is not a date (the message names it).
    """
    arr = np.asarray(values)
    if not np.issubdtype(arr.dtype, np.datetime64):
        parsed = None
        if arr.dtype.kind in "US":  # vectorised ISO 8601 parsing; the loop below only finds the culprit
            for unit in ("datetime64[D]", "datetime64[s]"):
                try:
                    parsed = arr.astype(unit)
                    break
                except (TypeError, ValueError):
                    continue
        if parsed is None:
            items = [iso_date(v) for v in arr.tolist()]
            for v in items:
                try:
                    np.datetime64(v)
                except (TypeError, ValueError):
                    raise ValueError(f"{str(v)[:40]!r} is not a date (YYYY-MM-DD, or YYYY.MM.DD / YYYY/MM/DD)") from None
            parsed = np.array([np.datetime64(v) for v in items])
        arr = parsed
    return (arr.astype("datetime64[D]") - EPOCH).astype(np.int64).astype(float)


def parse_key(name: str, cells: Sequence[Any]) -> KeyColumn:
    """Parse one observed key column (no blanks): numbers, else dates if any cell looks
    like one (then every cell must be a date), else labels.

    Raises:
        ValueError: ``(row, message)``-style text: ``"data row 3: '2024-13-01' is not ..."``.
    """
    if all(isinstance(c, (datetime.date, np.datetime64)) for c in cells):
        return KeyColumn(name, "date", date_days(list(cells)))
    try:
        numbers = np.array([float(c) for c in cells], dtype=float)
        if np.isfinite(numbers).all():
            return KeyColumn(name, "number", numbers)
    except (TypeError, ValueError):
        pass
    if any(isinstance(c, (datetime.date, np.datetime64)) or _ISO_DATE.match(str(c)) for c in cells):
        for row, cell in enumerate(cells):
            try:
                np.datetime64(cell if isinstance(cell, (datetime.date, np.datetime64)) else iso_date(str(cell)))
            except (TypeError, ValueError):
                raise ValueError(f"data row {row + 1}: {str(cell)[:40]!r} is not a date (YYYY-MM-DD, or YYYY.MM.DD / YYYY/MM/DD)") from None
        return KeyColumn(name, "date", date_days([c if isinstance(c, (datetime.date, np.datetime64)) else iso_date(str(c)) for c in cells]))
    return KeyColumn(name, "label", np.array([str(c) for c in cells], dtype=object))


def time_key_of(keys: Sequence[KeyColumn], explicit: str | None) -> tuple[str | None, list[str]]:
    """The time key of a keyed target: ``explicit``, else the one date key or time-named key.

    Returns ``(time key or None, every candidate)``; the caller rejects zero or several
    candidates for an as-of or accumulate match.
    """
    if explicit is not None:
        return explicit, [explicit]
    candidates = [k.name for k in keys if k.kind == "date" or k.name.lower() in TIME_NAMES]
    return (candidates[0] if len(candidates) == 1 else None), candidates


def output_table(raw: Any, time_key: str | None, value_columns: Sequence[str], where: str) -> dict[str, np.ndarray]:
    """Normalise one model output to ``{column: 1-D array}``.

    A DataFrame's named index levels become columns; a 1-D array is one value
    column indexed by row number (the time key); a 2-D array has one column per
    observed value column, in order.
    """
    if hasattr(raw, "columns") and hasattr(raw, "reset_index"):  # pandas DataFrame, duck-typed
        if any(n is not None for n in getattr(raw.index, "names", [None])):
            raw = raw.reset_index()
        return {str(c): np.asarray(raw[c].to_numpy()) for c in raw.columns}
    if isinstance(raw, Mapping):
        table = {str(c): np.asarray(v) for c, v in raw.items()}
        lengths = {len(v) for v in table.values() if v.ndim == 1}
        if any(v.ndim != 1 for v in table.values()) or len(lengths) > 1:
            raise AlignmentError(f"{where}: every column of a table output must be 1-D and of one length, "
                                 f"got {({c: v.shape for c, v in table.items()})}")
        return table
    arr = np.asarray(raw.to_numpy() if hasattr(raw, "to_numpy") else raw)
    if time_key is None:
        raise AlignmentError(f"{where}: the output is a bare array but the target's keys need named columns: "
                             "return a mapping {column: array} or a DataFrame holding the key columns")
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[1] != len(value_columns):
        raise AlignmentError(f"{where}: an array output needs one column per observed value column "
                             f"({', '.join(value_columns)}), got shape {arr.shape}")
    table = {time_key: np.arange(arr.shape[0], dtype=float)}
    table.update({c: arr[:, j] for j, c in enumerate(value_columns)})
    return table


def _codes(obs: Sequence[np.ndarray], model: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One int64 code per row over several key columns, comparable between the two sides.

    Equal codes mean equal keys in every column. After each column the combined codes are
    re-ranked densely (0 .. rows - 1), so a code never exceeds (n + m)^2 whatever the
    number of key columns or of distinct values per column: multiplying raw ranks would
    overflow int64 (5 keys of 65,536 values) and silently match the wrong row.
    """
    n = len(obs[0]) if obs else 0
    m = len(model[0]) if model else 0
    code = np.zeros(n + m, dtype=np.int64)
    for o, mm in zip(obs, model):
        uniq, inverse = np.unique(np.concatenate([o, mm]), return_inverse=True)
        combined = code * np.int64(len(uniq)) + inverse.astype(np.int64)  # both < n + m: no overflow
        _, code = np.unique(combined, return_inverse=True)
        code = code.astype(np.int64).reshape(-1)
    return code[:n], code[n:]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two key columns are identical (a byte comparison: fast for strings too)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "O":
        return bool(np.array_equal(a, b))
    return bool(np.array_equal(np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8)))


def _show(value: Any, kind: str) -> str:
    if kind == "date" and np.isfinite(value):
        return str(EPOCH + np.timedelta64(int(round(value)), "D"))
    if kind == "number":
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class Aligner:
    """How one keyed target picks simulated rows; built once from the observed keys."""

    target: str
    output: str
    keys: tuple[KeyColumn, ...]
    match: str
    time_key: str | None
    start_day: float | None  # days since 1970 of model day 0 (start_date)
    period: float | None
    value_columns: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_cache", None)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = None  # row indices are per process; never shipped
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def _where(self) -> str:
        return f"target '{self.target}': output '{self.output}'"

    def _model_key(self, key: KeyColumn, column: np.ndarray) -> np.ndarray:
        if key.kind == "label":
            return column.astype(str).astype(object)
        if key.kind == "date":
            if np.issubdtype(column.dtype, np.number):
                if self.start_day is None:
                    raise AlignmentError(f"{self._where}: key '{key.name}' holds numbers but the data holds dates: "
                                         "set the target's start_date (the date of model day 0), or return dates")
                return self.start_day + column.astype(float)
            try:
                return date_days(column)
            except ValueError as e:
                raise AlignmentError(f"{self._where}: key '{key.name}': {e}") from None
        try:
            return column.astype(float)
        except (TypeError, ValueError):
            raise AlignmentError(f"{self._where}: key '{key.name}' holds numbers in the data but "
                                 f"{column.dtype} values in the output") from None

    def simulated(self, raw: Any) -> np.ndarray:
        """The simulated values at the observed rows, shape (n, m).

        Raises:
            AlignmentError: a key column or value column is missing, output rows repeat
                a key, or an observed key matches no output row (the message names it).
            SimulationError: a selected value is NaN or infinite.
        """
        table = output_table(raw, self.time_key, self.value_columns, self._where)
        missing = [k.name for k in self.keys if k.name not in table]
        if missing:
            raise AlignmentError(f"{self._where} has no key column '{missing[0]}' (it has: {', '.join(table)})")
        value_columns = list(self.value_columns)
        absent = [c for c in value_columns if c not in table]
        others = [c for c in table if c not in {k.name for k in self.keys}]
        if absent and len(value_columns) == 1 and len(others) == 1:
            value_columns = others  # one value column each side: compared whatever their names
        elif absent:
            raise AlignmentError(f"{self._where} has no value column '{absent[0]}' (it has: {', '.join(table)})")
        raw_keys = [table[k.name] for k in self.keys]
        cache = self._cache  # type: ignore[attr-defined]
        if cache is not None and all(_same(a, b) for a, b in zip(cache[0], raw_keys)):
            rows = cache[1]  # the same key columns as last time: the same rows
        else:
            rows = self._rows([self._model_key(k, col) for k, col in zip(self.keys, raw_keys)])
            object.__setattr__(self, "_cache", ([col.copy() for col in raw_keys], rows))
        values = np.column_stack([np.asarray(table[c], dtype=float) for c in value_columns])
        if self.match == "accumulate":
            order, lo, hi = rows
            csum = np.vstack([np.zeros((1, values.shape[1])), np.cumsum(values[order], axis=0)])
            sim = csum[hi] - csum[lo]
            bad = ~np.isfinite(values[order]).all(axis=1)
            if bad.any():
                raise SimulationError(f"{self._where} has NaN or infinite values")
        else:
            sim = values[rows]
        if not np.isfinite(sim).all():
            raise SimulationError(f"{self._where} has NaN or infinite values at observed rows")
        return sim

    # -- row selection: index arrays from the parsed keys of both sides -----------------

    def _describe(self, row: int, keys: Sequence[KeyColumn] | None = None) -> str:
        return ", ".join(f"{k.name}={_show(k.values[row], k.kind)}" for k in (keys or self.keys))

    def _rows(self, model_keys: list[np.ndarray]) -> Any:
        obs = [k.values for k in self.keys]
        if self.match == "exact":
            return self._exact(obs, model_keys)
        t_pos = [k.name for k in self.keys].index(self.time_key)  # type: ignore[arg-type]
        group_obs = [v for i, v in enumerate(obs) if i != t_pos]
        group_model = [v for i, v in enumerate(model_keys) if i != t_pos]
        return self._asof(group_obs, group_model, obs[t_pos], model_keys[t_pos])

    def _exact(self, obs: list[np.ndarray], model: list[np.ndarray]) -> np.ndarray:
        code_o, code_m = _codes(obs, model)
        order = np.argsort(code_m, kind="stable")
        sorted_m = code_m[order]
        dup = np.flatnonzero(sorted_m[1:] == sorted_m[:-1])
        if dup.size:
            row = int(order[dup[0]])
            shown = ", ".join(f"{k.name}={_show(v[row], k.kind)}" for k, v in zip(self.keys, model))
            raise AlignmentError(f"{self._where} has several rows with key {shown}: keys must be unique")
        pos = np.clip(np.searchsorted(sorted_m, code_o), 0, max(len(sorted_m) - 1, 0))
        found = sorted_m[pos] == code_o if len(sorted_m) else np.zeros(len(code_o), dtype=bool)
        if not found.all():
            row = int(np.flatnonzero(~found)[0])
            raise AlignmentError(f"{self._where}: observed key {self._describe(row)} matches no output row "
                                 f"({(~found).sum()} of {len(found)} observed rows unmatched)")
        return order[pos]

    def _asof(self, g_obs: list[np.ndarray], g_model: list[np.ndarray], t_obs: np.ndarray, t_model: np.ndarray) -> Any:
        n, m = len(t_obs), len(t_model)
        if g_obs:
            code_o, code_m = _codes(g_obs, g_model)
        else:
            code_o, code_m = np.zeros(n, dtype=np.int64), np.zeros(m, dtype=np.int64)
        period = self.period
        if self.match == "accumulate" and period is None:
            gaps = np.diff(np.unique(t_obs))
            period = float(gaps.min()) if gaps.size else math.nan
            if not np.isfinite(period):
                raise AlignmentError(f"target '{self.target}': accumulate needs at least two observed times "
                                     "to infer the interval length: set 'period'")
        universe = [t_obs, t_model] + ([t_obs - period] if self.match == "accumulate" else [])
        uniq, inverse = np.unique(np.concatenate(universe), return_inverse=True)
        rank_o, rank_m = inverse[:n], inverse[n:n + m]
        width = np.int64(len(uniq))
        comp_m = code_m * width + rank_m
        order = np.argsort(comp_m, kind="stable")
        comp_sorted, g_sorted, t_sorted = comp_m[order], code_m[order], t_model[order]
        dup = np.flatnonzero(comp_sorted[1:] == comp_sorted[:-1])
        if dup.size:
            row = int(order[dup[0]])
            shown = ", ".join(f"{k.name}={_show(v[row], k.kind)}" for k, v in zip(self.keys, self._model_order(g_model, t_model)))
            raise AlignmentError(f"{self._where} has several rows with key {shown}: keys must be unique")
        steps = np.diff(np.unique(t_model))
        step = float(steps.min()) if steps.size else math.inf
        comp_o = code_o * width + rank_o
        first = np.searchsorted(g_sorted, code_o, side="left")
        last = np.searchsorted(g_sorted, code_o, side="right") - 1
        no_group = first > last
        if no_group.any():
            row = int(np.flatnonzero(no_group)[0])
            raise AlignmentError(f"{self._where}: observed key {self._describe(row)} matches no output row "
                                 f"(no output rows for its group)")
        if self.match == "accumulate":
            rank_start = inverse[n + m:]
            hi = np.searchsorted(comp_sorted, comp_o, side="right")
            lo = np.searchsorted(comp_sorted, code_o * width + rank_start, side="right")
            outside = (t_sorted[first] > t_obs - period + step) | (t_sorted[last] < t_obs)
            self._reject(outside, "is not covered by the output's rows (the interval starts before its first row or ends after its last)")
            return order, lo, hi
        back = np.searchsorted(comp_sorted, comp_o, side="right") - 1
        fwd = np.searchsorted(comp_sorted, comp_o, side="left")
        back_ok = (back >= first) & (back <= last)
        fwd_ok = (fwd >= first) & (fwd <= last)
        back_c, fwd_c = np.clip(back, 0, m - 1), np.clip(fwd, 0, m - 1)
        if self.match == "backward":
            pick, ok = back_c, back_ok & (t_obs - t_sorted[back_c] < step)
        elif self.match == "forward":
            pick, ok = fwd_c, fwd_ok & (t_sorted[fwd_c] - t_obs < step)
        else:  # nearest; a tie takes the earlier row
            d_back = np.where(back_ok, t_obs - t_sorted[back_c], np.inf)
            d_fwd = np.where(fwd_ok, t_sorted[fwd_c] - t_obs, np.inf)
            pick = np.where(d_back <= d_fwd, back_c, fwd_c)
            ok = np.minimum(d_back, d_fwd) <= step
        self._reject(~ok, f"has no output row {self.match} of it within one output step")
        return order[pick]

    def _model_order(self, g_model: list[np.ndarray], t_model: np.ndarray) -> list[np.ndarray]:
        out, groups = [], iter(g_model)
        for k in self.keys:
            out.append(t_model if k.name == self.time_key else next(groups))
        return out

    def _reject(self, bad: np.ndarray, what: str) -> None:
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise AlignmentError(f"{self._where}: observed key {self._describe(row)} {what} "
                                 f"({int(bad.sum())} of {len(bad)} observed rows)")
