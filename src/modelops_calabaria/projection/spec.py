"""``scenarios.yaml``: the baseline and the named scenarios of a projection (pydantic).

A scenario is an ordered list of *changes* to the parameters one draw carries
(its posterior or best-trial values plus the job's ``fixed``)::

    start_date: 2024-09-02          # date of model day 0 (else the targets' start_date)
    step_days: 7                    # days per row of an index target (week w = days 7w..7w+6)
    days_parameter: n_days          # set to the days simulated (null: the model decides its length)
    baseline:                       # applied to every scenario first (name: default "baseline")
      name: baseline
      changes: []
    scenarios:
      - name: distancing
        changes:
          - {parameter: beta, from: 2024-12-01, multiply: 0.7}        # a dated schedule
      - name: reporting
        changes:
          - {parameter: reporting_rate, value: 0.4}                   # a fixed value
      - name: steps
        changes:
          - {parameter: beta, steps: [[2024-11-01, 0.5], [2024-12-15, 0.6]]}

A change is one of:

- ``value``: the parameter takes this value (over the draw's, or a fixed one);
- ``multiply``: the parameter is multiplied by this factor;
- either of them with ``from`` and/or ``until`` (dates, ``until`` exclusive): only on
  those days, which makes the parameter a per-day *schedule*;
- ``steps``: a list of ``[date, value]``: from each date on, that value (before the
  first date the parameter keeps its value): a schedule.

**Composition and conflicts.** The baseline's changes apply first, then the
scenario's, one after the other in the order written. Each change acts on the
parameter as the previous ones left it: a ``value`` replaces it on its days (so
of two values for the same day, the later one wins); a ``multiply`` scales
whatever is there on its days (so factors compose). Writing the same parameter
twice is therefore allowed and means exactly this order.

A schedule reaches the model as a per-day array (element ``d`` = the value on
model day ``d``, ``n_days`` elements); the model must list the parameter in its
``schedulable`` attribute (docs/projections.md), else the projection is refused
before anything runs.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelops_calabaria.errors import JobSpecError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_SCENARIOS = 50
MAX_CHANGES = 100


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, populate_by_name=True)


class Change(_Spec):
    """One change to one parameter (see the module docstring)."""

    parameter: str = Field(min_length=1, description="the parameter changed (a searched or fixed parameter of the job)")
    value: float | str | None = Field(None, description="the value it takes (on the dated days, with from/until)")
    multiply: float | None = Field(None, description="the factor it is multiplied by (on the dated days, with from/until)")
    from_: dt.date | None = Field(None, alias="from", description="first day of the change (inclusive); a schedule")
    until: dt.date | None = Field(None, description="day the change ends (exclusive); a schedule")
    steps: list[tuple[dt.date, float]] | None = Field(None, description="[[date, value], ...]: from each date on, that value")

    @model_validator(mode="after")
    def _one_kind(self) -> Change:
        kinds = [k for k in ("value", "multiply", "steps") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of value, multiply or steps")
        if self.steps is not None:
            if self.from_ is not None or self.until is not None:
                raise ValueError("steps carry their own dates: leave out from/until")
            if not self.steps:
                raise ValueError("steps must hold at least one [date, value]")
            dates = [d for d, _ in self.steps]
            if dates != sorted(dates) or len(set(dates)) != len(dates):
                raise ValueError("steps must be in increasing date order, each date once")
        if self.from_ is not None and self.until is not None and self.until <= self.from_:
            raise ValueError(f"until ({self.until}) must be after from ({self.from_})")
        if isinstance(self.value, str) and (self.from_ is not None or self.until is not None):
            raise ValueError("a dated change needs a number")
        return self

    @property
    def dated(self) -> bool:
        """Whether the change makes the parameter a per-day schedule."""
        return self.steps is not None or self.from_ is not None or self.until is not None


class Scenario(_Spec):
    """A named list of changes."""

    name: str = Field(description="scenario name (letters, digits, _ . -); the scenario_id of the hub file")
    changes: list[Change] = Field(default_factory=list, max_length=MAX_CHANGES, description="applied in order")

    @model_validator(mode="after")
    def _name(self) -> Scenario:
        if not NAME.match(self.name):
            raise ValueError(f"name {self.name!r}: use letters, digits, _ . - (at most 64)")
        return self


class ScenarioSpec(_Spec):
    """The whole scenarios file."""

    start_date: dt.date | None = Field(None, description="date of model day 0 (default: the targets' start_date)")
    step_days: int = Field(7, ge=1, le=366, description="days per row of an index target (weekly outputs: 7)")
    days_parameter: str | None = Field("n_days", description="parameter set to the days simulated; null: left as it is")
    baseline: Scenario = Field(default_factory=lambda: Scenario(name="baseline"), description="applied first, to every scenario")
    scenarios: list[Scenario] = Field(default_factory=list, max_length=MAX_SCENARIOS, description="compared with the baseline")

    @model_validator(mode="after")
    def _unique(self) -> ScenarioSpec:
        names = [self.baseline.name] + [s.name for s in self.scenarios]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"scenario names must be unique (the baseline's included): {', '.join(dupes)}")
        return self

    def all(self) -> list[tuple[str, list[Change]]]:
        """(name, changes in order) of the baseline then each scenario; scenario changes follow the baseline's."""
        base = list(self.baseline.changes)
        return [(self.baseline.name, base)] + [(s.name, base + list(s.changes)) for s in self.scenarios]


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def spec_from_dict(data: Any, source: str) -> ScenarioSpec:
    """Validate a mapping into a ScenarioSpec, or raise JobSpecError naming each bad field."""
    if not isinstance(data, dict):
        raise JobSpecError(f"{source}: expected a mapping (start_date, baseline, scenarios), got {type(data).__name__}")
    try:
        return ScenarioSpec.model_validate(data)
    except ValidationError as e:
        problems = [(_loc(tuple(x for x in item["loc"] if x not in ("function-after",))) or "(top)",
                     item["msg"].removeprefix("Value error, ")) for item in e.errors()]
        raise JobSpecError(f"{source} is not a valid scenarios file:", problems=problems,
                           hint="see docs/projections.md for the scenarios file") from e


def load_spec(path: Path) -> ScenarioSpec:
    """Read and validate ``scenarios.yaml``.

    Raises:
        JobSpecError: missing or unreadable file, bad YAML, or an invalid spec (the field named).
    """
    if not path.is_file():
        raise JobSpecError(f"scenarios file not found: {path}", hint="pass --scenarios with a YAML file (docs/projections.md)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise JobSpecError(f"scenarios file {path} cannot be read as YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        data = {}
    return spec_from_dict(data, str(path))
