"""Any model output as one long table: key columns and one value column.

A model output comes in several forms (``docs/models.md``). :func:`to_long`
turns each into the same long table, one row per (key, value column) cell:

=============================================  =============================================
output form                                    key columns of the long table
=============================================  =============================================
1-D array / list (n,)                          ``index`` (row number 0..n-1)
2-D array (n, m)                               ``index``, ``column`` (value column name)
mapping ``{column: 1-D array}``                its key columns (below), + ``column`` if m > 1
pandas DataFrame, RangeIndex                   as the mapping of its columns
pandas DataFrame, DatetimeIndex / named index  the index (named ``date`` / its name) + columns
pandas DataFrame, MultiIndex                   every level (its name, else ``level_<i>``)
pandas Series                                  its index, one value column (the Series name)
=============================================  =============================================

Which columns of a mapping / DataFrame are keys: the names in ``key_columns``
(e.g. a target's ``on``), every column that is not numeric (labels, dates,
ISO date strings), and numeric columns named like time (``date``, ``day``,
``week``, ``t``, ...). The other columns are value columns. A table with no
key column at all gets ``index`` (row number), as an array does.

Contract of the result (:class:`LongTable`):

- ``keys``: ordered ``{name: 1-D array}``, all of length N (rows of the long
  table). Dates are ``datetime64[D]``, numbers ``float64``, labels ``object``
  arrays of ``str``; ``kinds[name]`` says which (``date``/``number``/``label``).
- ``values``: ``float64`` (N,), NaN where the output holds NaN / None.
- ``column``: the key naming the value column (``"column"``) when the output
  has several value columns, else None (the single value column's name is
  ``value_name``).
- rows are in the output's row order, value columns interleaved per row
  (row 0 col a, row 0 col b, row 1 col a, ...).

Pure (numpy only). pandas objects are recognised duck-typed (``columns`` and
``reset_index`` for a DataFrame, ``index`` and ``to_numpy`` for a Series):
pandas is not imported here, and it is not a dependency of the service.

Raises :class:`LongFormError` (a ValueError) naming the output for a shape it
cannot read (a 3-D array, columns of different lengths, a non-numeric value
column where a number is needed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LongFormError", "LongTable", "TIME_NAMES", "as_key", "to_long"]

TIME_NAMES = frozenset({"date", "day", "days", "week", "weeks", "time", "t", "step", "month", "year"})
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
COLUMN_KEY = "column"


class LongFormError(ValueError):
    """A model output whose shape cannot be read as a table (the message names the output)."""


@dataclass(frozen=True)
class LongTable:
    """One output as a long table (see the module docstring for the contract)."""

    keys: dict[str, np.ndarray]
    kinds: dict[str, str]
    values: np.ndarray
    value_name: str
    column: str | None = None
    value_columns: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def time_key(self) -> str | None:
        """The one date key, else the one time-named key, else None."""
        dates = [k for k, kind in self.kinds.items() if kind == "date"]
        if len(dates) == 1:
            return dates[0]
        named = [k for k in self.keys if k.lower() in TIME_NAMES or k == "index"]
        return named[0] if len(named) == 1 else None

    def records(self) -> dict[str, list[Any]]:
        """Plain columns for CSV / Parquet / JSON: keys (dates as ISO strings, whole
        numbers as int), then ``value_name`` (None for NaN)."""
        out: dict[str, list[Any]] = {}
        for name, arr in self.keys.items():
            kind = self.kinds[name]
            if kind == "date":
                out[name] = [str(v) for v in arr.astype("datetime64[D]")]
            elif kind == "number":
                whole = np.isfinite(arr).all() and bool((arr == np.round(arr)).all())
                out[name] = [int(v) for v in arr] if whole else arr.tolist()
            else:
                out[name] = [str(v) for v in arr]
        out[self.value_name] = [None if v != v else float(v) for v in self.values.tolist()]
        return out


def _is_frame(raw: Any) -> bool:
    return hasattr(raw, "columns") and hasattr(raw, "reset_index") and hasattr(raw, "index")


def _is_series(raw: Any) -> bool:
    return not _is_frame(raw) and hasattr(raw, "index") and hasattr(raw, "to_numpy") and hasattr(raw, "name")


def as_key(values: Any) -> tuple[np.ndarray, str]:
    """One key column as a comparable array and its kind (``date``, ``number``, ``label``)."""
    arr = np.asarray(values.to_numpy() if hasattr(values, "to_numpy") else values)
    if np.issubdtype(arr.dtype, np.datetime64):
        return arr.astype("datetime64[D]"), "date"
    if arr.dtype.kind in "biuf":
        return arr.astype(float), "number"
    if arr.dtype.kind == "O" and len(arr) and all(hasattr(v, "isoformat") and hasattr(v, "year") for v in arr):
        return np.array([np.datetime64(v.isoformat()[:10]) for v in arr], dtype="datetime64[D]"), "date"
    text = arr.astype(str)
    if len(text) and all(_ISO_DATE.match(v) for v in text):
        try:
            return text.astype("datetime64[D]"), "date"
        except (TypeError, ValueError):
            pass
    if arr.dtype.kind == "O":
        try:
            as_float = arr.astype(float)
            if len(as_float) and not np.isnan(as_float).all():
                return as_float, "number"
        except (TypeError, ValueError):
            pass
    return text.astype(object), "label"


def _numeric(values: Any, where: str, column: str) -> np.ndarray:
    arr = np.asarray(values.to_numpy() if hasattr(values, "to_numpy") else values)
    try:
        return np.array([np.nan if v is None else v for v in arr.tolist()], dtype=float) if arr.dtype.kind == "O" else arr.astype(float)
    except (TypeError, ValueError):
        raise LongFormError(f"{where}: value column '{column}' is not numeric ({arr.dtype})") from None


def _frame_columns(raw: Any) -> dict[str, Any]:
    """A DataFrame's columns, its index levels first when they carry keys (named, dates, or several)."""
    index = raw.index
    names = list(getattr(index, "names", [None]))
    multi = hasattr(index, "levels") and hasattr(index, "get_level_values")  # a MultiIndex, of any depth
    dated = not multi and np.issubdtype(np.asarray(index).dtype, np.datetime64)
    if multi:
        levels = {str(n) if n is not None else f"level_{i}": index.get_level_values(i) for i, n in enumerate(names)}
    elif names[0] is not None or dated:
        levels = {str(names[0]) if names[0] is not None else "date": index}
    else:
        levels = {}
    cols = {}
    for c in raw.columns:
        name = "_".join(str(p) for p in c) if isinstance(c, tuple) else str(c)
        cols[name] = raw[c]
    return {**levels, **cols}


def to_long(raw: Any, *, name: str = "value", key_columns: Sequence[str] = (), value_columns: Sequence[str] = (),
            index_name: str = "index") -> LongTable:
    """One model output as a :class:`LongTable`.

    Args:
        raw: The output, in any form of the module table.
        name: The output's name: the value column's name when there is one, and the
            name used in messages.
        key_columns: Columns that are keys even when numeric (a target's ``on``).
        value_columns: Names for the columns of a 2-D array (default ``<name>_<j>``),
            or the value columns to keep of a table (default: every non-key column).
        index_name: The name of the row-number key of an array (a target's index column).

    Raises:
        LongFormError: a shape that is not a table (the message names ``name``).
    """
    where = f"output '{name}'"
    if _is_frame(raw):
        return _from_columns(_frame_columns(raw), name, key_columns, value_columns, index_name, where)
    if _is_series(raw):
        index = raw.index
        key = str(index.name) if getattr(index, "name", None) is not None else (
            "date" if np.issubdtype(np.asarray(index).dtype, np.datetime64) else index_name)
        vname = str(raw.name) if raw.name is not None else name
        return _from_columns({key: index, vname: raw.to_numpy()}, name, (*key_columns, key), value_columns, index_name, where)
    if isinstance(raw, Mapping):
        return _from_columns({str(k): v for k, v in raw.items()}, name, key_columns, value_columns, index_name, where)
    arr = np.asarray(raw)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim == 1:
        values = _numeric(arr, where, name)
        return LongTable({index_name: np.arange(len(values), dtype=float)}, {index_name: "number"}, values, name,
                         value_columns=(name,))
    if arr.ndim != 2:
        raise LongFormError(f"{where}: an array output must be 1-D or 2-D, got shape {arr.shape}")
    n, m = arr.shape
    cols = list(value_columns) if len(value_columns) == m else ([name] if m == 1 else [f"{name}_{j}" for j in range(m)])
    values = _numeric(arr, where, name).reshape(-1)
    if m == 1:
        return LongTable({index_name: np.arange(n, dtype=float)}, {index_name: "number"}, values, cols[0], value_columns=tuple(cols))
    keys = {index_name: np.repeat(np.arange(n, dtype=float), m), COLUMN_KEY: np.tile(np.array(cols, dtype=object), n)}
    return LongTable(keys, {index_name: "number", COLUMN_KEY: "label"}, values, name, COLUMN_KEY, tuple(cols))


def _from_columns(table: dict[str, Any], name: str, key_columns: Sequence[str], value_columns: Sequence[str],
                  index_name: str, where: str) -> LongTable:
    arrays = {c: (v.to_numpy() if hasattr(v, "to_numpy") else np.asarray(v)) for c, v in table.items()}
    bad = {c: np.shape(v) for c, v in arrays.items() if np.ndim(v) != 1}
    lengths = {len(v) for v in arrays.values() if np.ndim(v) == 1}
    if bad or len(lengths) > 1:
        raise LongFormError(f"{where}: every column of a table output must be 1-D and of one length, "
                            f"got {({c: np.shape(v) for c, v in arrays.items()})}")
    n = lengths.pop() if lengths else 0
    keys: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    values: dict[str, np.ndarray] = {}
    wanted_keys = set(key_columns)
    for c, v in arrays.items():
        numeric = np.asarray(v).dtype.kind in "biuf"
        is_key = c in wanted_keys or c.lower() in TIME_NAMES or not numeric
        if value_columns and c in value_columns:
            is_key = False
        if is_key:
            keys[c], kinds[c] = as_key(v)
        elif not value_columns or c in value_columns:
            values[c] = _numeric(v, where, c)
    if not values:
        raise LongFormError(f"{where}: no numeric value column besides its keys ({', '.join(arrays)})")
    if not keys:
        keys[index_name], kinds[index_name] = np.arange(n, dtype=float), "number"
    cols = list(values)
    if len(cols) == 1:
        return LongTable(keys, kinds, values[cols[0]], cols[0], value_columns=tuple(cols))
    m = len(cols)
    long_keys = {k: np.repeat(v, m) for k, v in keys.items()}
    long_keys[COLUMN_KEY] = np.tile(np.array(cols, dtype=object), n)
    kinds = {**kinds, COLUMN_KEY: "label"}
    stacked = np.column_stack([values[c] for c in cols]).reshape(-1)
    return LongTable(long_keys, kinds, stacked, name, COLUMN_KEY, tuple(cols))
