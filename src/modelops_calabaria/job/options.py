"""The job's option blocks: stop rules, sampler, posterior, report, re-evaluation, pruning, ramp, execution.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from modelops_calabaria.job._base import SamplerName, _Spec
from modelops_calabaria.job.limits import (
    MAX_CONCURRENCY,
    MAX_GRID_POINTS,
    MAX_REPLICATES,
    MAX_TRIALS,
    MAX_WALL_TIME_S,
)
from modelops_calabaria.job.parameters import ParameterSpec
from modelops_calabaria.job.samplers import option_problems

class StopSpec(_Spec):
    """When to stop before the trial budget is spent."""

    target_loss: float | None = Field(default=None, description='stop once the best loss reaches this value')
    patience: int | None = Field(default=None, gt=0, le=MAX_TRIALS, description="trials without improvement")
    max_wall_time_s: float | None = Field(default=None, gt=0, le=MAX_WALL_TIME_S, description='stop after this many seconds (at most a year)')
    max_consecutive_failures: int = Field(default=25, gt=0, le=MAX_TRIALS, description="failure storm guard")


class SamplerSpec(_Spec):
    """The Optuna sampler and its keyword options."""

    name: SamplerName = Field(default="tpe", description='sampler name')
    options: dict[str, Any] = Field(default_factory=dict, description='keyword options of the Optuna sampler, checked per sampler (names, types, ranges: job/samplers.py, docs/reliability.md "Limits")')

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> SamplerSpec:
        problems = option_problems(self.name, self.options)
        if problems:
            raise ValueError("; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""))
        if self.name != "grid":
            return self
        points = self.options.get("points", 5)
        if isinstance(points, bool) or not isinstance(points, int) or not 1 <= points <= MAX_GRID_POINTS:
            raise ValueError(f"grid 'points' must be a whole number from 1 to {MAX_GRID_POINTS:,} (got {points!r})")
        grid = self.options.get("grid", {})
        if grid is None:
            grid = {}
        if not isinstance(grid, dict):
            raise ValueError(f"grid 'grid' must map parameter names to lists of values (got {type(grid).__name__})")
        for name, values in grid.items():
            if not isinstance(values, list) or not 1 <= len(values) <= MAX_GRID_POINTS:
                raise ValueError(f"grid values of {name!r} must be a list of 1 to {MAX_GRID_POINTS:,} values")
        return self

    def grid_sizes(self, parameters: dict[str, ParameterSpec]) -> dict[str, int]:
        """Values per parameter of a grid sampler (as calibration.study builds the grid)."""
        points = self.options.get("points", 5)
        explicit = self.options.get("grid") or {}
        sizes = {}
        for name, spec in parameters.items():
            if name in explicit:
                sizes[name] = len(explicit[name])
            elif spec.kind == "categorical":
                sizes[name] = len(spec.choices or [])
            elif spec.kind == "int":
                sizes[name] = min(points, int(spec.upper) - int(spec.lower) + 1)  # type: ignore[arg-type]
            else:
                sizes[name] = points
        return sizes


class PosteriorSpec(_Spec):
    """A posterior run by incremental mixture importance sampling (docs/posterior.md).

    ``initial`` trials are drawn from the prior; then each stage adds a
    Gaussian component around the highest-weight point and draws
    ``per_stage`` trials from it. The run stops when the effective sample
    size reaches ``target_ess`` (or at the trial budget).
    """

    method: Literal["imis"] = Field(default="imis", description='posterior method: imis (incremental mixture importance sampling, docs/posterior.md)')
    initial: int = Field(default=200, ge=2, le=1_000_000, description='trials drawn from the prior before the first mixture component')
    per_stage: int = Field(default=50, ge=2, le=1_000_000, description='trials drawn from each new mixture component')
    target_ess: float | None = Field(default=None, gt=0, le=MAX_TRIALS, description='stop when the effective sample size reaches this (else the budget stops the run)')
    band: Literal["observed", "mean", "both"] = Field(
        default="observed",
        description="the report's posterior predictive band: 'observed' draws from each target's observation model "
                    "(what new data would look like), 'mean' the simulated series only, 'both' side by side")
    arviz: bool = Field(default=False, description="also write posterior.nc, arviz InferenceData (needs the 'posterior' "
                                                   "extra: pip install 'modelops-calabaria[posterior]')")


class ReportSpec(_Spec):
    """What ``calabaria report`` re-simulates for the fit figure."""

    replicates: int = Field(default=20, ge=0, le=10_000, description="fresh replicates of the best trial (0: none)")
    others: int = Field(default=4, ge=0, le=50, description="next best trials drawn faintly")


class ReevaluateSpec(_Spec):
    """Re-evaluating the best trials on fresh seeds at the end of a run (docs/quality.md).

    The ``top_k`` best COMPLETE trials are run again with ``replicates`` fresh,
    independent replicates (default: 2 x ``n_replicates``), with seeds no trial
    used; the reported best is the one with the best re-evaluated loss.
    ``top_k: 0`` turns it off (the reported best is then the in-sample best).
    """

    top_k: int = Field(default=5, ge=0, le=1000, description='best trials re-run on fresh seeds at the end of a run (0: off); the reported best is chosen by that loss')
    replicates: int | None = Field(default=None, ge=1, le=10_000, description='fresh replicates per re-run trial (default 2 x n_replicates)')


class PruningSpec(_Spec):
    """Replicate-level pruning (docs/performance.md, "Pruning"): a trial's replicates run in
    stages, and after each of the ``after`` counts the trial is stopped (told PRUNED) when a
    paired bound says its loss over all replicates would be worse than the ``against``-th
    best completed trial's, with at most ``error_rate`` chance of stopping one that would not.
    """

    after: list[int] | None = Field(default=None, min_length=1, max_length=8, description='replicate counts after which a trial may be pruned, increasing, each >= 2 and < n_replicates (default: half of n_replicates)')
    against: int = Field(default=1, ge=1, le=1000, description='compare with the k-th best completed trial (1: the best)')
    error_rate: float = Field(default=0.05, gt=0, lt=0.5, description='at most this chance, per trial, of pruning one whose full loss would have beaten that trial')


class RampSpec(_Spec):
    """The concurrency ramp (calibration/ramp.py, docs/quality.md): after the first wave of
    trials, at most one trial in flight per ``per`` finished trials (at least ``floor``),
    widening to the full concurrency. ``ramp: off`` (or ``false``) runs every loop from the start;
    absent, the ramp is on with these defaults for the TPE sampler and off for the others.
    """

    enabled: bool = Field(default=True, description='false: no ramp (also written `ramp: off`)')
    per: int = Field(default=8, ge=1, le=10_000, description='after the first wave, one more trial in flight per this many finished trials')
    floor: int = Field(default=2, ge=1, le=MAX_CONCURRENCY, description='trials in flight allowed at least, however few have finished')
    first: int | None = Field(default=None, ge=1, le=MAX_CONCURRENCY, description='trials of the first wave, asked at once (default: the full concurrency)')


class ExecutionSpec(_Spec):
    """Where and how the job runs; each may be overridden by env or CLI (see Settings)."""

    parallel_trials: bool | None = Field(default=None, description='parallel loops (true) or batched rounds (false); env PARALLEL_TRIALS')
    storage: str | None = Field(default=None, description='study storage URL (postgresql://, sqlite:///, journal:///); env CALABARIA_STORAGE')
    scheduler: str | None = Field(default=None, description='Dask scheduler address, empty for a local cluster, or inline; env CALABARIA_SCHEDULER')
    replicates_per_task: int | None = Field(default=None, ge=1, le=MAX_REPLICATES, description="replicates one Dask task runs; empty = automatic")
