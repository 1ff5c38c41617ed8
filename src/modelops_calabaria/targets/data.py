"""Observed data: read a CSV or Parquet file or an inline table into arrays.

Two forms:

- without ``on`` (the original form): an index column of whole numbers selects
  rows of the model output;
- with ``on``: named key columns (dates, numbers or labels), parsed once here,
  matched to the output's key columns on the worker (:mod:`.align`).

A blank / NA value cell is a gap: it is left out of the score. Blank key cells,
unparseable dates, repeated keys and fractional counts for a count likelihood
are errors. Every problem is a :class:`JobSpecError` naming the target's field
path and, for files, the file, row and column.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelops_calabaria.errors import JobSpecError
from modelops_calabaria.job import COUNT_SCORES, MAX_DATA_CELL, MAX_DATA_FILE_BYTES, TargetSpec
from modelops_calabaria.job.limits import MAX_EXACT_COUNT, MAX_INDEX
from modelops_calabaria.targets.align import KeyColumn, parse_key, time_key_of

PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class Observed:
    """One target's observations.

    Attributes:
        index: Whole numbers ≥ 0 (n,): rows of the model output to compare
            (the form without keys), or None.
        values: Observations (n, m), one column per value column; NaN is a gap.
        columns: The value column names (m).
        trials: Binomial denominators (n, 1), or None.
        keys: The parsed key columns (the form with ``on``), or None.
        present: (n, m) mask of the cells that are not gaps, or None when none is missing.
        table: The used columns as given (JSON-able, None for a gap): the form stored with the study.
        time_key: The key matched as-of / accumulated, or None.
        index_name: The index column's name in the data (the form without keys).
    """

    index: np.ndarray | None
    values: np.ndarray
    columns: tuple[str, ...]
    trials: np.ndarray | None = None
    keys: tuple[KeyColumn, ...] | None = None
    present: np.ndarray | None = None
    table: dict[str, list] | None = None
    time_key: str | None = None
    index_name: str = "index"

    def inline(self, trials_column: str | None) -> dict[str, Any]:
        """The target fields that carry this data inline (stored with the study): ``data``
        and, without keys, ``index_column`` / ``value_columns``. Gaps become None."""
        if self.table is not None:
            return {"data": self.table, "value_columns": list(self.columns)}
        table: dict[str, list] = {self.index_name: self.index.tolist()}  # type: ignore[union-attr]
        for j, col in enumerate(self.columns):
            table[col] = [None if math.isnan(v) else v for v in self.values[:, j].tolist()]
        if self.trials is not None and trials_column:
            table[trials_column] = [None if math.isnan(v) else v for v in self.trials[:, 0].tolist()]
        return {"data": table, "index_column": self.index_name, "value_columns": list(self.columns)}

    @property
    def gap_rows(self) -> int:
        """Rows with at least one gap."""
        return 0 if self.present is None else int((~self.present).any(axis=1).sum())


EXCERPT = 40  # characters of a cell or column name quoted in an error message


def excerpt(value: object, *, quote: bool = False) -> str:
    """A cell or name as a message shows it (text as is, other values as their repr), cut to
    EXCERPT characters (``quote``: always the repr): messages quote data, never much of it (every printed line is also redacted)."""
    text = value if isinstance(value, str) and not quote else repr(value)
    return text if len(text) <= EXCERPT else f"{text[:EXCERPT]}... ({len(text):,} characters)"


def _names(names: Sequence[object]) -> str:
    """Column names for a message: at most 10, each an excerpt."""
    shown = ", ".join(excerpt(n) for n in list(names)[:10])
    return shown + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def read_data_file(path: Path, where: str) -> bytes:
    """The bytes of an observed-data file, checked before it is opened: a regular file
    (not a FIFO, device, directory or socket, which could hang or never end), not empty
    (a kernel pseudo-file such as /proc/self/environ reports size 0), at most
    MAX_DATA_FILE_BYTES; at most that much is read even if the file grows.

    Raises:
        JobSpecError: missing, not a regular file, empty, too large or unreadable (one line).
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise JobSpecError(f"observed data file not found: {path}", problems=[(where, "the file does not exist")]) from None
    except OSError as e:
        raise JobSpecError(f"observed data file {path} cannot be read: {e.strerror or e}", problems=[(where, "check the path")]) from None
    if not stat.S_ISREG(info.st_mode):
        kind = ("a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode)
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "not a regular file")
        raise JobSpecError(f"observed data file {path} is {kind}", problems=[(where, "name a regular CSV or Parquet file")])
    if info.st_size == 0:
        raise JobSpecError(f"observed data file is empty: {path}",
                           problems=[(where, "a CSV file with a header row and data rows (kernel pseudo-files are refused)")])
    if info.st_size > MAX_DATA_FILE_BYTES:
        raise JobSpecError(f"observed data file {path} is {info.st_size:,} bytes, more than the limit of {MAX_DATA_FILE_BYTES:,}",
                           problems=[(where, "keep the rows the targets use (see 'Limits' in docs/reliability.md)")])
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_DATA_FILE_BYTES + 1)
    except OSError as e:
        raise JobSpecError(f"observed data file {path} cannot be read: {e.strerror or e}", problems=[(where, "check the file")]) from None
    if len(raw) > MAX_DATA_FILE_BYTES:
        raise JobSpecError(f"observed data file {path} is more than {MAX_DATA_FILE_BYTES:,} bytes",
                           problems=[(where, "keep the rows the targets use")])
    return raw


def _read_parquet(path: Path, where: str, name: str) -> dict[str, list[object]]:
    raw = read_data_file(path, where)
    if raw[:4] != b"PAR1":
        raise JobSpecError(f"target '{name}': {path} is not a Parquet file (it does not start with the PAR1 marker); "
                           f"save it as Parquet, or as CSV with a .csv name ({where})")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(pa.BufferReader(raw))
        names = [str(c) for c in parquet.schema_arrow.names]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:  # checked before reading: pyarrow refuses to read them, or the last would win
            raise JobSpecError(f"target '{name}': {path} has repeated column name(s) {', '.join(excerpt(n) for n in repeated)}",
                               problems=[(where, "give every column a unique name")])
        table = parquet.read()
    except JobSpecError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise JobSpecError(f"target '{name}': {path} cannot be read as Parquet: {excerpt(str(e))} ({where})") from None
    try:
        return {str(c): table.column(i).to_pylist() for i, c in enumerate(table.column_names)}
    except (OverflowError, ValueError, pa.ArrowException) as e:  # a timestamp beyond year 9999, ...
        raise JobSpecError(f"target '{name}': {path} holds a value Python cannot represent: {excerpt(str(e))}",
                           problems=[(where, "dates must lie within years 1 to 9999")]) from None


def _read_csv(path: Path, where: str) -> dict[str, list[str]]:
    raw = read_data_file(path, where)
    try:
        text = raw.decode("utf-8-sig")
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise JobSpecError(f"observed data file is empty: {path}", problems=[(where, "no header row")])
        header = [h.strip() for h in header]
        unnamed = [str(i + 1) for i, h in enumerate(header) if not h]
        repeated = sorted({h for h in header if h and header.count(h) > 1})
        if unnamed or repeated:
            what = (f"no name for column(s) {', '.join(unnamed[:10])} (a trailing comma?)" if unnamed
                    else f"repeated column name(s) {', '.join(excerpt(r) for r in repeated[:10])}")
            raise JobSpecError(f"{path}: header row has {what}", problems=[(where, "give every column a unique name")])
        columns: dict[str, list[str]] = {h: [] for h in header}
        for lineno, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise JobSpecError(
                    f"{path}, line {lineno}: {len(row)} cells but the header has {len(header)}",
                    problems=[(where, "every row needs one cell per column")],
                )
            for h, cell in zip(header, row):
                columns[h].append(cell.strip())
    except (UnicodeDecodeError, csv.Error) as e:
        unicode = isinstance(e, UnicodeDecodeError)
        reason = f"not UTF-8 text ({e.reason} at byte {e.start})" if unicode else excerpt(str(e)).strip("'\"")
        raise JobSpecError(f"observed data file {path} cannot be read: {reason}",
                           problems=[(where, "save it as a UTF-8 CSV file" if unicode else
                                      f"make it a readable CSV file (a cell holds at most {MAX_DATA_CELL:,} characters)")]) from None
    return columns


_NA = frozenset({"", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "."})


def _numeric(values: Sequence[object], column: str, source: str, where: str, *, gaps: bool = False) -> np.ndarray:
    out = np.empty(len(values), dtype=float)
    for row, cell in enumerate(values):
        if gaps and (cell is None or (isinstance(cell, str) and cell.strip() in _NA)):
            out[row] = math.nan
            continue
        try:
            x = float(cell) if cell not in (None, "") else math.nan  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise JobSpecError(
                f"{source}: column '{excerpt(column)}', data row {row + 1}: {excerpt(cell, quote=True)} is not a number",
                problems=[(where, "every observed cell must be numeric")],
            ) from None
        if gaps and math.isnan(x):
            out[row] = x
            continue
        if not math.isfinite(x):
            raise JobSpecError(
                f"{source}: column '{column}', data row {row + 1} is empty, NaN or infinite",
                problems=[(where, "fill or drop the row: missing observations are not allowed")],
            )
        out[row] = x
    return out


def load_observed(target: TargetSpec, base_dir: Path, where: str) -> Observed:
    """Load and check one target's observed data.

    Args:
        target: The target spec.
        base_dir: Directory relative CSV paths are resolved against.
        where: Field path used in messages, e.g. ``targets[0].data``.
    """
    if isinstance(target.data, str):
        path = Path(target.data)
        path = path if path.is_absolute() else base_dir / path
        source = str(path)
        if path.suffix.lower() in PARQUET_SUFFIXES:
            table: Mapping[str, Sequence[object]] = _read_parquet(path, where, target.name)
        else:
            table = _read_csv(path, where)
    else:
        source, table = f"inline data of target '{target.name}'", target.data
        lengths = {len(v) for v in table.values()}
        if len(lengths) > 1:
            raise JobSpecError(f"{source}: columns have different lengths {sorted(lengths)}", problems=[(where, "every column needs the same number of values")])
    if target.columns:
        table = _renamed(table, target.columns, source, where)
    names = list(table)
    if target.on is not None:
        return _load_keyed(target, table, source, where)
    if len(names) < 2:
        raise JobSpecError(f"{source}: needs an index column and at least one value column, found {names}", problems=[(where, "add the columns")])
    index_col = target.index_column or names[0]
    trials_col = target.score.trials_column
    value_cols = target.value_columns or [c for c in names if c not in (index_col, trials_col)]
    wanted = [index_col, *value_cols, *([trials_col] if trials_col else [])]
    missing = [c for c in wanted if c not in table]
    if missing:
        raise JobSpecError(
            f"{source}: missing column(s) {_names(missing)}; it has {_names(names)}",
            problems=[(where, "name existing columns in index_column / value_columns / trials_column")],
        )
    if not value_cols:
        raise JobSpecError(f"{source}: no value column left besides the index", problems=[(where, "add a value column")])
    n_rows = len(table[index_col])
    if n_rows == 0:
        raise JobSpecError(f"{source}: has no data rows", problems=[(where, "observed data must not be empty")])
    index = _numeric(table[index_col], index_col, source, where)
    bad = (index < 0) | (index != np.round(index)) | (index > MAX_INDEX) | np.signbit(index)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise JobSpecError(f"{source}: index column {excerpt(index_col)}, data row {row + 1}: {excerpt(table[index_col][row])} "
                           f"is not a whole number from 0 to {MAX_INDEX:,}",
                           problems=[(where, "index values select rows of the model output (e.g. week 0, 1, ...)")])
    if len(set(index.tolist())) != len(index):
        raise JobSpecError(f"{source}: index column '{index_col}' has repeated values", problems=[(where, "one row per index value")])
    values = np.column_stack([_numeric(table[c], c, source, where, gaps=True) for c in value_cols])
    trials = _numeric(table[trials_col], trials_col, source, where, gaps=True).reshape(-1, 1) if trials_col else None
    values, present = _check_values(target, values, value_cols, trials, source, where)
    return Observed(index=index.astype(np.int64), values=values, columns=tuple(value_cols), trials=trials, present=present,
                    index_name=str(index_col))


def _check_values(target: TargetSpec, values: np.ndarray, value_cols: Sequence[str], trials: np.ndarray | None,
                  source: str, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Count checks on the present cells; a row whose denominator is blank is a gap too."""
    if trials is not None:
        zero = trials[:, 0] == 0  # a blank (NaN) denominator is a gap, not 0
        if zero.any():
            row = int(np.flatnonzero(zero)[0])
            raise JobSpecError(f"{source}: column {excerpt(target.score.trials_column)}, data row {row + 1}: a denominator of 0; "
                               f"{target.score.kind} needs denominators >= 1 (a row of 0 trials observes nothing: leave its cells blank)",
                               problems=[(where, "fix the denominator or blank the row")])
        values = np.where(np.isnan(trials), np.nan, values)
    present = ~np.isnan(values)
    if not present.any():
        raise JobSpecError(f"target '{target.name}': every observed value is blank ({source})",
                           problems=[(where, "a target needs at least one observation")])
    kind = target.score.kind
    filled = np.where(present, values, 0.0)
    filled_trials = np.where(np.isnan(trials), 0.0, trials) if trials is not None else None
    if kind in COUNT_SCORES:
        for cells, names in ((filled, value_cols), (filled_trials, [target.score.trials_column])):
            if cells is not None and (np.abs(cells) >= MAX_EXACT_COUNT).any():
                col, row = _first(np.abs(cells) >= MAX_EXACT_COUNT, names)  # type: ignore[arg-type]
                raise JobSpecError(f"target '{target.name}': column {excerpt(col)}, data row {row + 1}: a count at or beyond 2^53 "
                                   f"({MAX_EXACT_COUNT:,}), which a float does not hold exactly ({source})",
                                   problems=[(where, "counts must be whole numbers a float holds exactly")])
        fractional = filled != np.round(filled)
        if fractional.any():
            col, row = _first(fractional, value_cols)
            raise JobSpecError(f"target '{target.name}': column '{col}', data row {row + 1}: {values[row, list(value_cols).index(col)]:g} "
                               f"is not a whole number, but {kind} needs counts ({source}): round the data or use normal_nll / sse")
        if filled_trials is not None and (filled_trials != np.round(filled_trials)).any():
            row = int(np.flatnonzero(filled_trials[:, 0] != np.round(filled_trials[:, 0]))[0])
            raise JobSpecError(f"target '{target.name}': column '{target.score.trials_column}', data row {row + 1}: "
                               f"{trials[row, 0]:g} is not a whole number, but {kind} needs whole denominators ({source})")  # type: ignore[index]
    _count_checks(target, filled, value_cols, filled_trials, source, where)
    return values, (None if present.all() else present)


def _count_checks(target: TargetSpec, values: np.ndarray, value_cols: Sequence[str], trials: np.ndarray | None,
                  source: str, where: str) -> None:
    kind = target.score.kind
    trials_col = target.score.trials_column
    if kind in COUNT_SCORES and (values < 0).any():
        col, row = _first(values < 0, value_cols)
        raise JobSpecError(
            f"{source}: negative count in column '{col}', data row {row + 1}, but score {kind} needs counts >= 0",
            problems=[(where, "fix the data, or use a least-squares or normal_nll score")],
        )
    if trials is not None:
        if (values > trials).any():
            raise JobSpecError(f"{source}: {kind} needs 0 <= value <= '{trials_col}' in every row", problems=[(where, "successes cannot exceed the denominator")])


def _load_keyed(target: TargetSpec, table: Mapping[str, Sequence[object]], source: str, where: str) -> Observed:
    """The form with ``on``: parse the keys, check they are unique, keep blanks as gaps."""
    keys_named = list(target.on or [])
    names = list(table)
    trials_col = target.score.trials_column
    value_cols = target.value_columns or [c for c in names if c not in (*keys_named, trials_col)]
    missing = [c for c in (*keys_named, *value_cols, *([trials_col] if trials_col else [])) if c not in table]
    if missing:
        raise JobSpecError(
            f"target '{target.name}': {source} has no column {excerpt(missing[0])} (it has {_names(names)})",
            problems=[(where, "name existing columns in on / value_columns / trials_column")],
        )
    if not value_cols:
        raise JobSpecError(f"target '{target.name}': {source} has no value column besides the keys", problems=[(where, "add a value column")])
    n_rows = len(table[keys_named[0]])
    if n_rows == 0:
        raise JobSpecError(f"{source}: has no data rows", problems=[(where, "observed data must not be empty")])
    keys = []
    for name in keys_named:
        cells = list(table[name])
        blank = [i for i, c in enumerate(cells) if c is None or (isinstance(c, str) and c.strip() in _NA)]
        if blank:
            raise JobSpecError(f"target '{target.name}': key '{name}', data row {blank[0] + 1} is blank ({source}); "
                               "every row needs all its keys: fill the key or drop the row")
        try:
            keys.append(parse_key(name, cells))
        except ValueError as e:
            raise JobSpecError(f"target '{target.name}': key '{name}', {e} ({source}); fix the value or the column") from None
    key_table = np.rec.fromarrays([k.values for k in keys], names=[f"k{i}" for i in range(len(keys))]) if keys else None
    if key_table is not None:
        _, first, counts = np.unique(key_table, return_index=True, return_counts=True)
        if (counts > 1).any():
            row = int(first[np.flatnonzero(counts > 1)[0]])
            shown = ", ".join(f"{k.name}={excerpt(table[k.name][row])}" for k in keys)
            raise JobSpecError(f"target '{target.name}': key {shown} appears in {int(counts.max())} rows of {source}; "
                               "keep one row per key (or add the key column that tells them apart to 'on')")
    time_key, candidates = time_key_of(keys, target.time_key)
    match = target.match or "exact"
    if match != "exact" and time_key is None:
        which = (f"keys {' and '.join(candidates)} are both time keys" if len(candidates) > 1
                 else "none of its keys is a date or named date/day/week/time/t")
        raise JobSpecError(f"target '{target.name}': match '{match}' aligns on one time key, but {which} "
                           f"({', '.join(keys_named)}); name it with time_key, or use match: exact")
    if target.start_date is not None and not any(k.kind == "date" for k in keys):
        raise JobSpecError(f"target '{target.name}': start_date is set but no key holds dates",
                           problems=[(where, "start_date anchors model day numbers to the data's dates")])
    values = np.column_stack([_numeric(table[c], c, source, where, gaps=True) for c in value_cols])
    trials = _numeric(table[trials_col], trials_col, source, where, gaps=True).reshape(-1, 1) if trials_col else None
    values, present = _check_values(target, values, value_cols, trials, source, where)
    stored: dict[str, list] = {}
    for name in (*keys_named, *value_cols, *([trials_col] if trials_col else [])):
        cells = list(table[name])
        stored[name] = [_jsonable(c) for c in cells]
    return Observed(index=None, values=values, columns=tuple(value_cols), trials=trials, keys=tuple(keys),
                    present=present, table=stored, time_key=time_key)


def _renamed(table: Mapping[str, Sequence[object]], mapping: Mapping[str, str], source: str,
             where: str) -> dict[str, Sequence[object]]:
    """``table`` with its columns renamed by ``mapping`` (a target's ``columns``), checked first."""
    field = where.rsplit(".", 1)[0] + ".columns" if where.endswith(".data") else f"{where}.columns"
    missing = [k for k in mapping if k not in table]
    if missing:
        close = difflib.get_close_matches(missing[0], list(table), n=1)
        guess = f" (did you mean '{close[0]}'?)" if close else ""
        raise JobSpecError(f"{source}: no column '{missing[0]}' to rename{guess}; its columns are {', '.join(map(str, table))}",
                           problems=[(field, "name columns the data has")])
    kept = [c for c in table if c not in mapping]
    clash = sorted(set(kept) & set(mapping.values()))
    if clash:
        raise JobSpecError(f"{source}: renaming would give two columns named '{clash[0]}' (the data already has one)",
                           problems=[(field, "rename or drop the data's own column of that name")])
    return {mapping.get(c, c): v for c, v in table.items()}


def _jsonable(cell: object) -> object:
    if cell is None or (isinstance(cell, str) and cell.strip() in _NA):
        return None
    if isinstance(cell, (int, float, str, bool)):
        return cell.strip() if isinstance(cell, str) else cell
    if hasattr(cell, "isoformat"):
        return cell.isoformat()  # type: ignore[union-attr]
    return str(cell)


def _first(mask: np.ndarray, cols: Sequence[str]) -> tuple[str, int]:
    row, col = np.argwhere(mask)[0]
    return cols[int(col)], int(row)
