"""Observed data: read a CSV file or an inline table into aligned arrays.

Every problem is a :class:`JobSpecError` naming the target's field path and,
for files, the file, row and column.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelops_calabaria.errors import JobSpecError
from modelops_calabaria.job import COUNT_SCORES, TargetSpec


@dataclass(frozen=True)
class Observed:
    """One target's observations.

    Attributes:
        index: Whole numbers ≥ 0 (n,): rows of the model output to compare.
        values: Observations (n, m), one column per value column.
        columns: The value column names (m).
        trials: Binomial denominators (n, 1), or None.
    """

    index: np.ndarray
    values: np.ndarray
    columns: tuple[str, ...]
    trials: np.ndarray | None = None


def _read_csv(path: Path, where: str) -> dict[str, list[str]]:
    if not path.is_file():
        raise JobSpecError(f"observed data file not found: {path}", problems=[(where, "the file does not exist")])
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header or not any(h.strip() for h in header):
                raise JobSpecError(f"observed data file is empty: {path}", problems=[(where, "no header row")])
            header = [h.strip() for h in header]
            unnamed = [str(i + 1) for i, h in enumerate(header) if not h]
            repeated = sorted({h for h in header if h and header.count(h) > 1})
            if unnamed or repeated:
                what = f"no name for column(s) {', '.join(unnamed)} (a trailing comma?)" if unnamed else f"repeated column name(s) {', '.join(repeated)}"
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
    except (UnicodeDecodeError, csv.Error, OSError) as e:
        unicode = isinstance(e, UnicodeDecodeError)
        reason = f"not UTF-8 text ({e.reason} at byte {e.start})" if unicode else str(e)
        raise JobSpecError(f"observed data file {path} cannot be read: {reason}",
                           problems=[(where, "save it as a UTF-8 CSV file" if unicode else "make it a readable CSV file")]) from e
    return columns


def _numeric(values: Sequence[object], column: str, source: str, where: str) -> np.ndarray:
    out = np.empty(len(values), dtype=float)
    for row, cell in enumerate(values):
        try:
            x = float(cell) if cell not in (None, "") else math.nan  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise JobSpecError(
                f"{source}: column '{column}', data row {row + 1}: {cell!r} is not a number",
                problems=[(where, "every observed cell must be numeric")],
            ) from None
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
        table: Mapping[str, Sequence[object]] = _read_csv(path, where)
    else:
        source, table = f"inline data of target '{target.name}'", target.data
        lengths = {len(v) for v in table.values()}
        if len(lengths) > 1:
            raise JobSpecError(f"{source}: columns have different lengths {sorted(lengths)}", problems=[(where, "every column needs the same number of values")])
    names = list(table)
    if len(names) < 2:
        raise JobSpecError(f"{source}: needs an index column and at least one value column, found {names}", problems=[(where, "add the columns")])
    index_col = target.index_column or names[0]
    trials_col = target.score.trials_column
    value_cols = target.value_columns or [c for c in names if c not in (index_col, trials_col)]
    wanted = [index_col, *value_cols, *([trials_col] if trials_col else [])]
    missing = [c for c in wanted if c not in table]
    if missing:
        raise JobSpecError(
            f"{source}: missing column(s) {', '.join(missing)}; it has {', '.join(names)}",
            problems=[(where, "name existing columns in index_column / value_columns / trials_column")],
        )
    if not value_cols:
        raise JobSpecError(f"{source}: no value column left besides the index", problems=[(where, "add a value column")])
    n_rows = len(table[index_col])
    if n_rows == 0:
        raise JobSpecError(f"{source}: has no data rows", problems=[(where, "observed data must not be empty")])
    index = _numeric(table[index_col], index_col, source, where)
    if (index < 0).any() or (index != np.round(index)).any():
        raise JobSpecError(f"{source}: index column '{index_col}' must hold whole numbers >= 0", problems=[(where, "index values select rows of the model output (e.g. week 0, 1, ...)")])
    if len(set(index.tolist())) != len(index):
        raise JobSpecError(f"{source}: index column '{index_col}' has repeated values", problems=[(where, "one row per index value")])
    values = np.column_stack([_numeric(table[c], c, source, where) for c in value_cols])
    trials = _numeric(table[trials_col], trials_col, source, where).reshape(-1, 1) if trials_col else None
    kind = target.score.kind
    if kind in COUNT_SCORES and (values < 0).any():
        col, row = _first(values < 0, value_cols)
        raise JobSpecError(
            f"{source}: negative count in column '{col}', data row {row + 1}, but score {kind} needs counts >= 0",
            problems=[(where, "fix the data, or use a least-squares or normal_nll score")],
        )
    if trials is not None:
        if (trials < 0).any() or (values > trials).any():
            raise JobSpecError(f"{source}: {kind} needs 0 <= value <= '{trials_col}' in every row", problems=[(where, "successes cannot exceed the denominator")])
    return Observed(index=index.astype(np.int64), values=values, columns=tuple(value_cols), trials=trials)


def _first(mask: np.ndarray, cols: Sequence[str]) -> tuple[str, int]:
    row, col = np.argwhere(mask)[0]
    return cols[int(col)], int(row)
