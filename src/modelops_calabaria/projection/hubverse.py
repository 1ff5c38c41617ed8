"""The projection as a hubverse model-output file (quantile form), as forecast and scenario hubs take it.

Columns, in order: ``reference_date`` (the date the projection is made from: the
last observation, or the hold-out date), ``target`` (the job's target name; with
several value columns ``name/column``), ``horizon`` (periods after the reference
date, 1, 2, ...; a period is the target's spacing, a week for weekly data),
``target_end_date`` (the date the value is for), then the target's key columns
(``location``, ``age_group``, ...; blank for a target without that key),
``output_type`` (``quantile``), ``output_type_id`` (the level: the 23 hub levels
0.01, 0.025, 0.05, 0.1, ..., 0.9, 0.95, 0.975, 0.99), ``value``, and
``scenario_id`` (the scenario's name), as scenario hubs add it. Only projected
dates (horizon ≥ 1) are written. A hub names its files
``<reference_date>-<team>-<model>.csv``: rename the file when submitting.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

from modelops_calabaria.projection.outputs import HUB_LEVELS

FIXED_COLUMNS = ("reference_date", "target", "horizon", "target_end_date")
TAIL_COLUMNS = ("output_type", "output_type_id", "value", "scenario_id")


def hub_columns(keys: list[str]) -> list[str]:
    """The header: the fixed columns, the key columns, the output columns."""
    return [*FIXED_COLUMNS, *keys, *TAIL_COLUMNS]


def hub_csv(rows: Iterable[dict[str, Any]], keys: list[str], reference_date: str) -> str:
    """The hub file from :func:`~.outputs.quantile_rows` rows (projected dates only)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(hub_columns(keys))
    for row in rows:
        if row["horizon"] < 1:
            continue
        head = [reference_date, row["target"], row["horizon"], row["date"], *[row.get(k) or "" for k in keys]]
        for level in HUB_LEVELS:
            w.writerow([*head, "quantile", f"{level:g}", repr(round(row[f'q{level:g}'], 6)), row["scenario"]])
    return buf.getvalue()
