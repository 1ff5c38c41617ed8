"""pydantic validation errors as (field path, message) pairs a user can act on.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from modelops_calabaria.job.calibration import CalibrationJob
from modelops_calabaria.job.options import (
    ExecutionSpec,
    PosteriorSpec,
    PruningSpec,
    RampSpec,
    ReevaluateSpec,
    ReportSpec,
    SamplerSpec,
    StopSpec,
)
from modelops_calabaria.job.parameters import ParameterSpec, PriorSpec
from modelops_calabaria.job.targets import ScoreSpec, TargetSpec

SPECS: tuple[type[BaseModel], ...] = (CalibrationJob, ParameterSpec, ScoreSpec, TargetSpec, StopSpec, SamplerSpec, ExecutionSpec,
                                      PriorSpec, PosteriorSpec, ReportSpec, ReevaluateSpec, RampSpec, PruningSpec)
_FIELD_NAMES = sorted(set().union(*(m.model_fields for m in SPECS)))

_YAML11_BOOLEANS = frozenset({"yes", "no", "on", "off", "y", "n"})
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none"})


def format_loc(loc: tuple[Any, ...]) -> str:
    """Render a pydantic error location as ``targets[0].score``.

    Union member tags are dropped: generic ones (``dict[str,list[...]]``) and a
    plain type name closing the location after a list index or ``data``
    (``targets[0].data.cases[1].float``). Names a user chose (``strength``) stay.
    """
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        part = str(part)
        if part.startswith("function-") or "[" in part:
            continue
        if part in _UNION_TAGS and i == len(loc) - 1 and i > 0 and (isinstance(loc[i - 1], int) or loc[i - 1] == "data"):
            continue
        out += f".{part}" if out else part
    return out or "(job)"


def validation_problems(err: ValidationError) -> list[tuple[str, str]]:
    """Convert a pydantic ValidationError into ``(field path, message)`` pairs."""
    problems: list[tuple[str, str]] = []
    path_or_table: set[str] = set()  # the 'path' branch of a data field: dropped when the table branch got further
    for item in err.errors(include_url=False):
        msg = item["msg"].removeprefix("Value error, ")
        loc = tuple(item["loc"])
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _FIELD_NAMES, n=1) if loc else []
            guess = f"did you mean '{close[0]}'? " if close else ""
            msg = f"unknown field ({guess}check its spelling; `calabaria schema` lists the fields)"
        elif item["type"] == "literal_error":
            msg = f"{msg} (got {item.get('input')!r})"
        elif isinstance(item.get("input"), bool) and item["type"] in ("int_type", "float_type"):
            msg = f"expected a number, got the boolean {str(item['input']).lower()} (true/false is not a number)"
        elif isinstance(item.get("input"), str) and item["input"].strip().lower() in _YAML11_BOOLEANS and item["type"] in (
                "int_type", "float_type", "bool_type", "bool_parsing"):
            wanted = "true or false" if item["type"].startswith("bool") else "a number"
            msg = (f"expected {wanted}, got {item['input']!r}: a boolean in YAML 1.1, text in YAML 1.2 "
                   "(which job files follow); write " + ("true or false" if wanted != "a number" else "the number"))
        elif isinstance(item.get("input"), str) and item["type"] in ("int_type", "float_type"):
            msg = f"{msg}, got the string {item['input']!r} (write numbers without quotes)"
        elif item["type"] in ("less_than_equal", "greater_than_equal", "too_long") and loc and loc[0] != "targets":
            msg = f"{msg} (a limit of the service: see 'Limits' in docs/reliability.md)"
        elif item["type"] == "parameter_spec":
            loc = (*loc, (item.get("ctx") or {}).get("field", ""))
        elif item["type"] == "string_type" and loc[-2:] == ("data", "str"):
            msg = "expected a CSV file path or an inline table {column: [numbers, ...]}"
            path_or_table.add(format_loc(loc))
        problems.append((format_loc(loc), msg))
    # A union field reports one error per branch: keep one per path.
    paths = [loc for loc, _ in problems]
    seen: dict[str, str] = {}
    for loc, msg in problems:
        if loc in path_or_table and any(other.startswith(loc + ".") for other in paths):
            continue
        seen.setdefault(loc, msg)
    return list(seen.items())
