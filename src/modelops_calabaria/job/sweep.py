"""A sweep: a fixed design of parameter points run and kept, for sensitivity analysis (docs/sensitivity.md).

``calabaria sweep JOB.yaml`` runs every point of the ``sweep`` block's design
``replicates`` times on the calibration wire and keeps the ``summaries`` of the
model's outputs (and each target's loss) per point and replicate.
"""

from __future__ import annotations

import datetime
import math
import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from modelops_calabaria.job._base import _Spec
from modelops_calabaria.job.limits import MAX_REPLICATES

POINT_ATTR = "sweep_point"  # user attr of a sweep's trial: its row of the design
SUMMARIES_ATTR = "sweep_summaries"  # user attr of a sweep's COMPLETE trial: {summary: value per replicate}
MAX_SUMMARIES = 100
MAX_SWEEP_POINTS = 1_000_000  # design rows: each one is a trial of the study
SUMMARY_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")

Stat = Literal["final", "peak", "peak_time", "sum", "mean", "at"]


class SummarySpec(_Spec):
    """One number kept from one model output per simulation.

    The output is read as a series over its first axis (a 2-D output is summed over
    its columns first; a table with keys takes its ``column``). ``final``: the last
    value; ``peak``: the largest; ``peak_time``: the row of the largest (its ``time``
    key for a table with one); ``sum``, ``mean``; ``at``: the value at row ``at`` (a
    whole number) or at the date ``at`` (a table with a date key).
    """

    output: str = Field(min_length=1, description="the model output summarised")
    stat: Stat = Field(default="final", description="final | peak | peak_time | sum | mean | at")
    at: int | Annotated[datetime.date, Field(strict=False)] | None = Field(default=None, description="stat at: the row (a whole number) or date (ISO) whose value is kept")
    column: str | None = Field(default=None, min_length=1, description="a table output: the value column summarised (default: its only numeric non-key column)")
    name: str | None = Field(default=None, min_length=1, max_length=100, description="the summary's name in sweep.parquet and the indices (default: <output>_<stat>)")

    @model_validator(mode="after")
    def _check(self) -> SummarySpec:
        if (self.stat == "at") != (self.at is not None):
            raise ValueError("stat: at needs 'at' (a row or a date)" if self.stat == "at" else f"'at' is only for stat: at, not {self.stat}")
        if isinstance(self.at, int) and self.at < 0:
            raise ValueError(f"'at' must be a row >= 0 (got {self.at})")
        if self.name is not None and not SUMMARY_NAME.match(self.name):
            raise ValueError(f"summary name {self.name!r}: use letters, digits, _ . -")
        return self

    @property
    def label(self) -> str:
        """The summary's name: ``name``, else ``<output>_<stat>`` (``<output>_at_<at>``)."""
        if self.name:
            return self.name
        return f"{self.output}_at_{self.at}" if self.stat == "at" else f"{self.output}_{self.stat}"


class SweepSpec(_Spec):
    """The design of a sweep and what it keeps.

    ``design``: ``sobol`` (Saltelli's scheme for Sobol' indices: ``points`` base samples,
    ``points × (D + 2)`` rows, ``points × (2D + 2)`` with ``second_order``), ``morris``
    (``points`` trajectories of ``D + 1`` rows on a ``levels``-level grid), ``lhs``
    (``points`` rows, a Latin hypercube), or ``grid`` (``points`` values per parameter).
    Every design comes from the job's ``seed``: the same job gives the same rows.
    """

    design: Literal["sobol", "morris", "lhs", "grid"] = Field(default="sobol", description="sobol (Saltelli, for Sobol' indices) | morris (elementary effects) | lhs | grid")
    points: int = Field(default=64, ge=1, le=MAX_SWEEP_POINTS, description="sobol: base samples N (a power of 2); morris: trajectories; lhs: points; grid: values per parameter")
    replicates: int = Field(default=2, ge=1, le=MAX_REPLICATES, description="simulations per design point (replicate noise is reported beside the indices)")
    second_order: bool = Field(default=False, description="sobol: also the second-order indices (2D + 2 rows per base sample instead of D + 2)")
    levels: int = Field(default=4, ge=2, le=100, description="morris: grid levels (even)")
    confidence: float = Field(default=0.95, gt=0, lt=1, description="level of the bootstrap confidence intervals of the indices")
    bootstrap: int = Field(default=1000, ge=10, le=100_000, description="bootstrap resamples of the Sobol' and Morris intervals")
    summaries: list[SummarySpec] = Field(default_factory=list, max_length=MAX_SUMMARIES, description="what is kept per point and replicate: [{output, stat, at, column, name}]; each target's loss is kept too")

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if self.design == "sobol" and self.points & (self.points - 1):
            raise ValueError(f"sobol needs points to be a power of 2 (got {self.points}): Sobol' sequences lose balance otherwise")
        if self.design == "morris" and self.levels % 2:
            raise ValueError(f"morris needs an even number of levels (got {self.levels})")
        labels = [s.label for s in self.summaries]
        dupes = sorted({n for n in labels if labels.count(n) > 1})
        if dupes:
            raise ValueError(f"summary names must be unique; repeated: {', '.join(dupes)} (give each a 'name')")
        return self

    def size(self, dims: int) -> int:
        """Rows of the design for ``dims`` parameters (the sweep's trial budget)."""
        if self.design == "sobol":
            return self.points * ((2 * dims + 2) if self.second_order else (dims + 2))
        if self.design == "morris":
            return self.points * (dims + 1)
        if self.design == "grid":
            return int(math.pow(self.points, dims))
        return self.points
