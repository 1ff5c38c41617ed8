"""The calibration job: what to fit, against what, and how hard to search.

A :class:`CalibrationJob` is plain data (pydantic v2), loaded from YAML or JSON
by :func:`load_job`. Every validation problem is reported as a
:class:`~modelops_calabaria.errors.JobSpecError` whose ``problems`` name the
field path (``parameters.beta.upper``, ``targets[0].score``) and what is
expected. Loading observed data and resolving the model are separate steps
(:mod:`modelops_calabaria.targets`, :mod:`modelops_calabaria.models`) so that
the spec itself stays pure.

One mechanism per class of bad input: numbers are strict (a boolean or a quoted
number is not a number, inf/NaN are refused) for every field; the loader refuses a
key given twice in a YAML or JSON mapping, with its line; and what a job may make
the service allocate or store is bounded by the ``MAX_*`` limits below (file size,
values after YAML alias expansion, grid cells, budget, seed, bounds, concurrency),
documented in docs/reliability.md ("Limits").
"""

from __future__ import annotations

import datetime
import difflib
import json
import json.decoder
import json.scanner
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from modelops_calabaria.errors import ConfigurationError, JobSpecError, StudyMismatchError

# Limits: what a job (and the flags that override it) may make the service allocate or
# store. Each is documented in docs/reliability.md ("Limits"); beyond one, loading or
# validation fails with exit 2 before anything is created.
MAX_JOB_FILE_BYTES = 10 * 1024 * 1024  # a job file, inline data included
MAX_JOB_VALUES = 1_000_000  # values in the job after YAML aliases are expanded
MAX_NESTING = 32  # levels of nested mappings/lists
MAX_FIXED_VALUES = 100_000  # values in 'fixed' (sent to every simulation), aliases expanded
MAX_PARAMETERS = 1_000
MAX_TARGETS = 1_000
MAX_CHOICES = 10_000
MAX_REPLICATES = 10_000  # n_replicates
MAX_TRIALS = 1_000_000_000  # max_trials, --max-trials, --extend (the budget ledger holds 32-bit integers)
MAX_CONCURRENCY = 256  # concurrency, --workers: loops (threads) or batch size; also the cap of `concurrency: auto`
MAX_REPLICATES_IN_FLIGHT = 100_000  # concurrency x n_replicates: simulations submitted at once
MAX_SEED = 2**32 - 1  # numpy's legacy generators (and so Optuna's samplers) take seeds < 2**32
MAX_ABS_BOUND = 1e15  # |lower|, |upper|: finite, and whole numbers exact in a float (< 2**53)
MAX_GRID_POINTS = 10_000  # grid sampler: values per parameter ('points' or an explicit list)
MAX_GRID_CELLS = 1_000_000  # grid sampler: product of the values per parameter
STUDY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
MAX_STUDY_NAME = 200

SamplerName = Literal["tpe", "gp", "cmaes", "random", "qmc", "grid", "nsga2"]
ScoreKind = Literal[
    "sse", "mse", "rmse", "poisson_nll", "negbin_nll", "normal_nll", "binomial_nll", "betabinomial_nll"
]
COUNT_SCORES = frozenset({"poisson_nll", "negbin_nll", "binomial_nll", "betabinomial_nll"})
LIKELIHOOD_SCORES = frozenset({"poisson_nll", "negbin_nll", "normal_nll", "binomial_nll", "betabinomial_nll"})
Aggregation = Literal["mean_of_scores", "score_of_mean", "logmeanexp", "synthetic_likelihood"]
Match = Literal["exact", "nearest", "backward", "forward", "accumulate"]


class _Spec(BaseModel):
    # strict: a boolean is not a number and a string is not a count (``lower: false``,
    # ``n_replicates: true``, ``max_trials: "10"`` are rejected); whole numbers are still
    # accepted where a float is expected. No float field takes inf or NaN.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def check_study_name(name: Any, where: str = "study") -> str:
    """The one check of a study name (job field, ``worker --study``, ``status --study``).

    A study name becomes a directory under ``runs/`` and a key in the database:
    letters, digits, ``_ . -``, starting with a letter or digit, at most 200 characters.

    Raises:
        ValueError: otherwise (pydantic turns it into a field error; the CLI into exit 2).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: expected a non-empty name")
    if len(name) > MAX_STUDY_NAME:
        raise ValueError(f"{where}: at most {MAX_STUDY_NAME} characters (got {len(name)})")
    if not re.match(STUDY_NAME_PATTERN, name):
        raise ValueError(f"{where}: {name!r} is not a valid study name: use letters, digits, '_', '.', '-', "
                         "starting with a letter or digit (no '/' or spaces)")
    return name


class PriorSpec(_Spec):
    """An explicit prior of one float parameter for a posterior run, truncated to its bounds.

    ``normal`` takes ``mean`` and ``sd``; ``beta`` takes ``a`` and ``b`` (on the
    value itself, support 0..1); ``gamma`` takes ``shape`` and ``rate``.
    Without a prior a parameter is uniform on its bounds (log-uniform with ``log: true``).
    """

    dist: Literal["normal", "beta", "gamma"]
    mean: float | None = None
    sd: float | None = Field(default=None, gt=0)
    a: float | None = Field(default=None, gt=0)
    b: float | None = Field(default=None, gt=0)
    shape: float | None = Field(default=None, gt=0)
    rate: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> PriorSpec:
        needs = {"normal": ("mean", "sd"), "beta": ("a", "b"), "gamma": ("shape", "rate")}[self.dist]
        missing = [n for n in needs if getattr(self, n) is None]
        if missing:
            raise ValueError(f"a {self.dist} prior needs {' and '.join(needs)} (missing: {', '.join(missing)})")
        return self


class ParameterSpec(_Spec):
    """One searched parameter.

    ``kind`` float/int take ``lower < upper`` (``log`` needs ``lower > 0``);
    categorical takes ``choices``. ``prior`` is used only by a posterior run.
    """

    kind: Literal["float", "int", "categorical"] = "float"
    lower: float | None = None
    upper: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[str | int | float | bool] | None = Field(default=None, max_length=MAX_CHOICES)
    prior: PriorSpec | None = None
    guess: float | int | str | bool | None = None

    @model_validator(mode="after")
    def _check_guess(self) -> ParameterSpec:
        if self.guess is not None and not self.admits(self.guess):
            raise _field_error("guess", f"the guess {self.guess!r} is outside this parameter's "
                               + (f"choices {self.choices}" if self.kind == "categorical" else f"range [{self.lower:g}, {self.upper:g}]"))
        return self

    def admits(self, value: Any) -> bool:
        """Whether ``value`` is a point of this parameter's space (a starting guess must be)."""
        if self.kind == "categorical":
            return value in (self.choices or [])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or self.lower is None or self.upper is None:
            return False
        if self.kind == "int" and value != int(value):
            return False
        return self.lower <= value <= self.upper

    @model_validator(mode="after")
    def _check(self) -> ParameterSpec:
        if self.kind == "categorical":
            if not self.choices:
                raise _field_error("choices", "a categorical parameter needs a non-empty 'choices' list")
            if self.lower is not None or self.upper is not None or self.log:
                given = "lower" if self.lower is not None else "upper" if self.upper is not None else "log"
                raise _field_error(given, "a categorical parameter takes 'choices', not 'lower'/'upper'/'log'")
            return self
        if self.choices is not None:
            raise _field_error("choices", f"'choices' is only for kind: categorical (this parameter is {self.kind})")
        if self.lower is None or self.upper is None:
            raise _field_error("lower" if self.lower is None else "upper", "a numeric parameter needs both 'lower' and 'upper'")
        for name, value in (("lower", self.lower), ("upper", self.upper)):
            if not math.isfinite(value) or abs(value) > MAX_ABS_BOUND:
                raise _field_error(name, f"'lower' and 'upper' must be finite numbers within ±{MAX_ABS_BOUND:g} (got {value:g})")
        if self.lower >= self.upper:
            hint = " (equal bounds: move it to 'fixed' instead)" if self.lower == self.upper else ""
            raise _field_error("upper", f"'lower' ({self.lower:g}) must be less than 'upper' ({self.upper:g}){hint}")
        if self.log and self.lower <= 0:
            raise _field_error("lower", f"log scale needs 'lower' > 0 (got {self.lower:g}): raise 'lower' or set log: false")
        for name, value in (("lower", self.lower), ("upper", self.upper)):
            if self.kind == "int" and value != int(value):
                raise _field_error(name, "an int parameter needs whole-number 'lower' and 'upper'")
        if self.step is not None:
            if self.step <= 0 or self.log:
                raise _field_error("step", "'step' must be > 0 and cannot be combined with log scale")
            if self.kind == "int" and self.step != int(self.step):
                raise _field_error("step", f"an int parameter needs a whole-number 'step' (got {self.step:g})")
            if self.step > self.upper - self.lower:
                raise _field_error("step", f"'step' ({self.step:g}) is larger than the range upper - lower ({self.upper - self.lower:g})")
        return self


def _field_error(field: str, message: str) -> PydanticCustomError:
    """A ParameterSpec error reported at ``parameters.<name>.<field>`` (see validation_problems)."""
    return PydanticCustomError("parameter_spec", message, {"field": field})


class ScoreSpec(_Spec):
    """How one target's simulated series is compared with its observed data.

    Least squares (``sse``, ``mse``, ``rmse``) or a negative log-likelihood.
    ``dispersion`` is the negative-binomial size / beta-binomial overdispersion,
    ``sigma`` the normal standard deviation, ``trials_column`` the observed
    column of binomial denominators. Simulated means are floored at ``floor``
    for count likelihoods so that a zero mean against a positive count is a
    large but finite loss. ``binomial_nll`` / ``betabinomial_nll`` score a
    probability output (each value in [0, 1]) against observed successes out of
    the ``trials_column`` denominators. ``dispersion_output`` names a model
    output holding the beta-binomial overdispersion of each simulation (one
    positive number), instead of the constant ``dispersion``.
    """

    kind: ScoreKind
    dispersion: float | None = Field(default=None, gt=0)
    dispersion_output: str | None = Field(default=None, min_length=1)
    sigma: float | None = Field(default=None, gt=0)
    trials_column: str | None = None
    floor: float = Field(default=1e-9, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> ScoreSpec:
        if self.dispersion_output is not None:
            if self.kind != "betabinomial_nll":
                raise ValueError(f"'dispersion_output' is for betabinomial_nll, not {self.kind}")
            if self.dispersion is not None:
                raise ValueError("give 'dispersion' (a constant) or 'dispersion_output' (a model output), not both")
        elif self.kind in ("negbin_nll", "betabinomial_nll") and self.dispersion is None:
            raise ValueError(f"{self.kind} needs 'dispersion' (> 0)" + (" or 'dispersion_output'" if self.kind == "betabinomial_nll" else ""))
        if self.kind == "normal_nll" and self.sigma is None:
            raise ValueError("normal_nll needs 'sigma' (> 0)")
        if self.kind in ("binomial_nll", "betabinomial_nll") and not self.trials_column:
            raise ValueError(f"{self.kind} needs 'trials_column': the observed column of denominators")
        return self


class TargetSpec(_Spec):
    """One observed series and how the model's output is scored against it.

    ``data`` is a CSV path (relative to the job file) or an inline table
    ``{column: [values...]}``. ``index_column`` (default: the first column)
    holds whole numbers that index the output's first axis (e.g. week);
    ``value_columns`` (default: every other column but ``trials_column``) map
    to the output's second axis, or to the output itself when it is 1-D.
    """

    name: str = Field(min_length=1)
    output: str = Field(min_length=1)
    data: str | dict[str, list[Annotated[float, Field(allow_inf_nan=True)] | int | str | None]]
    index_column: str | None = None
    value_columns: list[str] | None = None
    score: ScoreSpec
    aggregation: Aggregation = "score_of_mean"  # the least biased on the panel (docs/quality.md)
    weight: float = Field(default=1.0, gt=0)
    on: list[str] | None = Field(default=None, min_length=1)
    match: Match | None = None
    time_key: str | None = None
    start_date: datetime.date | None = Field(default=None, strict=False)  # an ISO 8601 string or a YAML date
    period: float | None = Field(default=None, gt=0)
    synthetic_estimator: Literal["plugin", "ubsl"] = Field(
        default="plugin",
        description="with aggregation synthetic_likelihood: 'plugin' (Wood 2010, shrunk covariance; its target moves "
                    "with n_replicates) or 'ubsl' (the unbiased Gaussian-density estimator of Price et al. 2018; "
                    "needs n_replicates > observed cells + 3; docs/posterior.md)")

    @model_validator(mode="after")
    def _check(self) -> TargetSpec:
        if self.synthetic_estimator != "plugin" and self.aggregation != "synthetic_likelihood":
            raise ValueError(f"synthetic_estimator {self.synthetic_estimator!r} needs aggregation synthetic_likelihood")
        if self.aggregation == "logmeanexp" and self.score.kind not in LIKELIHOOD_SCORES:
            raise ValueError(f"aggregation 'logmeanexp' needs a likelihood score, not {self.score.kind}")
        if self.score.dispersion_output is not None and self.aggregation == "score_of_mean":
            raise ValueError("'dispersion_output' is per simulation: use aggregation mean_of_scores or logmeanexp, not score_of_mean")
        return self

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, value: Any) -> Any:
        # YAML 1.1 (PyYAML) reads a bare `on:` key as the boolean True.
        if isinstance(value, dict) and True in value and "on" not in value:
            return {("on" if k is True else k): v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _check_keys(self) -> TargetSpec:
        keyed_only = [f for f in ("match", "time_key", "start_date", "period") if getattr(self, f) is not None]
        if self.on is None:
            if keyed_only:
                raise ValueError(f"'{keyed_only[0]}' needs key columns: name them with 'on' (e.g. on: [date])")
            return self
        if self.index_column is not None:
            raise ValueError("'index_column' is for targets without keys; with 'on', the keys select the rows")
        if len(set(self.on)) != len(self.on):
            raise ValueError(f"'on' repeats a key: {self.on}")
        if self.time_key is not None and self.time_key not in self.on:
            raise ValueError(f"time_key '{self.time_key}' is not one of the keys in 'on' ({', '.join(self.on)})")
        if self.period is not None and self.match != "accumulate":
            raise ValueError("'period' is only for match: accumulate")
        return self

    @property
    def keyed(self) -> bool:
        """Whether rows are matched on named keys (``on``) rather than by row number."""
        return self.on is not None


class StopSpec(_Spec):
    """When to stop before the trial budget is spent."""

    target_loss: float | None = None
    patience: int | None = Field(default=None, gt=0, description="trials without improvement")
    max_wall_time_s: float | None = Field(default=None, gt=0)
    max_consecutive_failures: int = Field(default=25, gt=0, description="failure storm guard")


class SamplerSpec(_Spec):
    """The Optuna sampler and its keyword options."""

    name: SamplerName = "tpe"
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> SamplerSpec:
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

    method: Literal["imis"] = "imis"
    initial: int = Field(default=200, ge=2)
    per_stage: int = Field(default=50, ge=2)
    target_ess: float | None = Field(default=None, gt=0)
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

    top_k: int = Field(default=5, ge=0, le=1000)
    replicates: int | None = Field(default=None, ge=1, le=10_000)


class PruningSpec(_Spec):
    """Replicate-level pruning (docs/performance.md, "Pruning"): a trial's replicates run in
    stages, and after each of the ``after`` counts the trial is stopped (told PRUNED) when a
    paired bound says its loss over all replicates would be worse than the ``against``-th
    best completed trial's, with at most ``error_rate`` chance of stopping one that would not.
    """

    after: list[int] | None = Field(default=None, min_length=1, max_length=8)
    against: int = Field(default=1, ge=1, le=1000)
    error_rate: float = Field(default=0.05, gt=0, lt=0.5)


class RampSpec(_Spec):
    """The concurrency ramp (calibration/ramp.py, docs/quality.md): after the first wave of
    trials, at most one trial in flight per ``per`` finished trials (at least ``floor``),
    widening to the full concurrency. ``ramp: off`` (or ``false``) runs every loop from the start;
    absent, the ramp is on with these defaults for the TPE sampler and off for the others.
    """

    enabled: bool = True
    per: int = Field(default=8, ge=1, le=10_000)
    floor: int = Field(default=2, ge=1, le=MAX_CONCURRENCY)
    first: int | None = Field(default=None, ge=1, le=MAX_CONCURRENCY)


class ExecutionSpec(_Spec):
    """Where and how the job runs; each may be overridden by env or CLI (see Settings)."""

    parallel_trials: bool | None = None
    storage: str | None = None
    scheduler: str | None = None
    replicates_per_task: int | None = Field(default=None, ge=1, le=MAX_REPLICATES, description="replicates one Dask task runs; empty = automatic")


class CalibrationJob(_Spec):
    """A complete calibration: model, parameters, targets, budget and search."""

    study: str = Field(min_length=1, max_length=MAX_STUDY_NAME)
    model: str = Field(min_length=1)
    parameters: dict[str, ParameterSpec] = Field(min_length=1, max_length=MAX_PARAMETERS)
    fixed: dict[str, Any] = Field(default_factory=dict)
    targets: list[TargetSpec] = Field(min_length=1, max_length=MAX_TARGETS)
    n_replicates: int = Field(default=4, ge=1, le=MAX_REPLICATES)
    max_trials: int = Field(default=100, ge=1, le=MAX_TRIALS)
    concurrency: int | None = Field(
        default=None, ge=1, le=MAX_CONCURRENCY,
        description="trials at once: loops (parallel) or batch size (batched); auto (None): follow the cluster's live size",
    )
    ramp: RampSpec | None = Field(
        default=None, description="concurrency ramp: {per, floor}, on, or off; absent: on for tpe, off otherwise")
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    replicate_seeds: Literal["common", "independent", "staged"] = "common"
    reevaluate: ReevaluateSpec = Field(default_factory=ReevaluateSpec)
    direction: Literal["minimize", "maximize"] = "minimize"
    timeout_s: float | None = Field(default=None, gt=0, description="per simulation")
    replicate_retries: int = Field(default=0, ge=0, le=10)
    retry_lost_trials: bool = Field(
        default=False, description="ask the parameters of trials lost with their coordinator again (uses budget)"
    )
    stop: StopSpec = Field(default_factory=StopSpec)
    posterior: PosteriorSpec | None = None
    pruning: PruningSpec | None = None
    report: ReportSpec = Field(default_factory=ReportSpec)
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec)
    start: list[dict[str, Any]] = Field(default_factory=list)

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @field_validator("study")
    @classmethod
    def _study_name(cls, name: str) -> str:
        return check_study_name(name, "study name")

    @field_validator("concurrency", mode="before")
    @classmethod
    def _auto_concurrency(cls, value: Any) -> Any:
        # `auto` is stored as None: the loops follow the cluster (calibration/elastic.py).
        if isinstance(value, str):
            if value.strip().lower() == "auto":
                return None
            raise ValueError(f"must be 'auto' or a whole number from 1 to {MAX_CONCURRENCY}, got {value!r}")
        return value

    @field_validator("ramp", mode="before")
    @classmethod
    def _ramp_off(cls, value: Any) -> Any:
        # `ramp: off` (YAML reads it as false) or `false`: no ramp; `true`/`on`: the default ramp.
        if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
            return {"enabled": False}
        if value is True or (isinstance(value, str) and value.strip().lower() == "on"):
            return {}
        if isinstance(value, str):
            raise ValueError(f"must be off, on, or {{per, floor}}, got {value!r}")
        return value

    @field_validator("fixed")
    @classmethod
    def _fixed_size(cls, fixed: dict[str, Any]) -> dict[str, Any]:
        if count_values(fixed, MAX_FIXED_VALUES) > MAX_FIXED_VALUES:
            raise ValueError(f"more than {MAX_FIXED_VALUES:,} values (YAML aliases expanded): "
                             "every simulation receives 'fixed'; load large inputs inside the model instead")
        return fixed

    @field_validator("targets")
    @classmethod
    def _unique_targets(cls, targets: list[TargetSpec]) -> list[TargetSpec]:
        names = [t.name for t in targets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"target names must be unique; repeated: {', '.join(dupes)}")
        return targets

    @model_validator(mode="after")
    def _no_overlap(self) -> CalibrationJob:
        both = sorted(set(self.parameters) & set(self.fixed))
        if both:
            raise ValueError(f"parameters also listed in 'fixed': {', '.join(both)}")
        if self.concurrency is not None:
            check_in_flight(self.concurrency, self.n_replicates, "concurrency")
        if self.sampler.name == "grid":
            unknown = sorted(set(self.sampler.options.get("grid") or {}) - set(self.parameters))
            if unknown:
                raise ValueError(f"sampler.options.grid names unknown parameter(s): {', '.join(unknown)}")
            sizes = self.sampler.grid_sizes(self.parameters)
            if math.prod(sizes.values()) > MAX_GRID_CELLS:
                shown = " x ".join(f"{n} {k}" for k, n in sizes.items())
                raise ValueError(f"the grid has {math.prod(sizes.values()):,} cells ({shown}), more than {MAX_GRID_CELLS:,}: "
                                 "lower sampler.options.points or search fewer parameters")
        return self

    @model_validator(mode="after")
    def _check_start(self) -> CalibrationJob:
        for i, point in enumerate(self.start):
            unknown = sorted(set(point) - set(self.parameters))
            if unknown:
                raise ValueError(f"start[{i}] names {', '.join(unknown)}, not searched parameters ({', '.join(self.parameters)})")
            missing = [n for n in self.parameters if n not in point]
            if missing:
                raise ValueError(f"start[{i}] lacks {', '.join(missing)}: a starting point gives every searched parameter")
            for name, value in point.items():
                if not self.parameters[name].admits(value):
                    raise ValueError(f"start[{i}].{name} = {value!r} is outside the parameter's space")
        return self

    @model_validator(mode="after")
    def _check_pruning(self) -> CalibrationJob:
        p = self.pruning
        if p is None:
            return self
        if self.n_replicates < 3:
            raise ValueError(f"pruning needs n_replicates >= 3 (got {self.n_replicates}): it looks at 2 or more "
                             "replicates and can only save the rest; raise n_replicates or remove 'pruning'")
        if p.after is not None:
            if any(a < 2 for a in p.after):
                raise ValueError(f"pruning.after {p.after}: every count must be >= 2 (the bound needs the spread of 2 replicates)")
            if any(b <= a for a, b in zip(p.after, p.after[1:])):
                raise ValueError(f"pruning.after {p.after}: counts must increase")
            if p.after[-1] >= self.n_replicates:
                raise ValueError(f"pruning.after {p.after}: every count must be below n_replicates {self.n_replicates}")
        for t in self.targets:
            if t.aggregation != "mean_of_scores":
                raise ValueError(
                    f"pruning needs aggregation mean_of_scores on every target: target '{t.name}' uses {t.aggregation}, "
                    "whose loss is not a mean of per-replicate losses, so its first replicates bound nothing; "
                    "set aggregation: mean_of_scores on every target or remove 'pruning'")
        if self.posterior is not None:
            raise ValueError("pruning cannot be combined with posterior: importance weights need every trial's full "
                             "likelihood; remove 'pruning' or 'posterior'")
        return self

    def starting_points(self) -> list[dict[str, Any]]:
        """Points evaluated before any sampled one: every ``start`` point, then the
        ``guess`` values (parameters without one take the middle of their range)."""
        points = [dict(p) for p in self.start]
        if any(spec.guess is not None for spec in self.parameters.values()):
            points.append({name: spec.guess if spec.guess is not None else midpoint(spec) for name, spec in self.parameters.items()})
        unique: list[dict[str, Any]] = []
        for point in points:
            if point not in unique:
                unique.append(point)
        return unique

    @property
    def base_dir(self) -> Path:
        """Directory that relative data paths are resolved against."""
        return self._base_dir

    def with_base_dir(self, base_dir: Path) -> CalibrationJob:
        """Return this job with relative paths resolved against ``base_dir``."""
        self._base_dir = Path(base_dir)
        return self

    def to_storable(self) -> dict[str, Any]:
        """The JSON-able form stored with a study (data paths kept as given)."""
        return self.model_dump(mode="json")


def check_in_flight(concurrency: int, n_replicates: int, what: str) -> None:
    """Raise ValueError if ``concurrency`` x ``n_replicates`` simulations at once exceed the limit."""
    if concurrency * n_replicates > MAX_REPLICATES_IN_FLIGHT:
        raise ValueError(f"{what} {concurrency} x n_replicates {n_replicates} = {concurrency * n_replicates:,} simulations "
                         f"at once, more than {MAX_REPLICATES_IN_FLIGHT:,}: lower one of them")


def check_run_flags(*, max_trials: int | None = None, extend: int | None = None, workers: int | None = None,
                    n_replicates: int | None = None) -> None:
    """Check the flags that override a job's budget and concurrency against the same limits as the job.

    Raises:
        ConfigurationError: a flag out of range (exit 2), naming the flag and its range.
    """
    for flag, value, top in (("--max-trials", max_trials, MAX_TRIALS), ("--extend", extend, MAX_TRIALS),
                             ("--workers", workers, MAX_CONCURRENCY)):
        if value is None:
            continue
        if value < 1:
            raise ConfigurationError(f"{flag} must be >= 1, got {value}")
        if value > top:
            raise ConfigurationError(f"{flag} must be at most {top:,}, got {value:,}",
                                     hint="see the limits table in docs/reliability.md")
    if workers is not None and n_replicates is not None:
        try:
            check_in_flight(workers, n_replicates, "--workers")
        except ValueError as e:
            raise ConfigurationError(str(e)) from None


def check_same_model(study: str, stored_model: Any, model: str) -> None:
    """Refuse to work on a study whose stored model is not the job file's model.

    The study's job decides what every joining worker runs, so a stored model path
    that differs from the one the job file gives is a warning sign (an edited or
    tampered study); ``model`` is the job file's model after ``canonical_ref``.

    Raises:
        StudyMismatchError: the two differ (exit 2).
    """
    if stored_model is not None and stored_model != model:
        raise StudyMismatchError(
            f"study '{study}' runs model {stored_model!r}, but the job file gives {model!r}",
            hint="use a new study name, or fix the job file's 'model'; check who can write to the study database",
        )


class _TooBig(Exception):
    pass


def count_values(value: Any, limit: int, depth: int = 0, memo: dict[int, int] | None = None) -> int:
    """Values in ``value`` with shared containers (YAML aliases) counted at every use.

    Stops early: returns ``limit + 1`` as soon as the count passes ``limit``, or when
    nesting is deeper than MAX_NESTING (which also ends a cycle), so a YAML alias bomb
    costs a few thousand steps, not its expanded size.
    """
    memo = {} if memo is None else memo
    if not isinstance(value, (dict, list, tuple)):
        return 1
    if depth > MAX_NESTING:
        return limit + 1
    key = id(value)
    if key in memo:
        return memo[key]
    items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
    total = 1
    for item in items:
        total += count_values(item, limit, depth + 1, memo)
        if total > limit:
            return limit + 1
    memo[key] = total
    return total


def midpoint(spec: ParameterSpec) -> Any:
    """The middle of a parameter's range (geometric on log scale; first choice if categorical)."""
    if spec.kind == "categorical":
        return (spec.choices or [None])[0]
    lo, hi = float(spec.lower), float(spec.upper)  # type: ignore[arg-type]
    mid = math.sqrt(lo * hi) if spec.log else (lo + hi) / 2
    return int(round(mid)) if spec.kind == "int" else mid


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


_FIELD_NAMES = sorted(
    set().union(*(m.model_fields for m in (CalibrationJob, ParameterSpec, ScoreSpec, TargetSpec, StopSpec, SamplerSpec, ExecutionSpec, PriorSpec,
                   PosteriorSpec, ReportSpec, ReevaluateSpec, RampSpec)))
)


def job_from_dict(data: Any, *, source: str = "job", base_dir: Path | None = None) -> CalibrationJob:
    """Validate a mapping into a CalibrationJob or raise JobSpecError naming each bad field."""
    if data is None:
        raise JobSpecError(f"{source} is empty", hint="a job needs at least study, model, parameters and targets")
    if not isinstance(data, dict):
        raise JobSpecError(f"{source}: expected a mapping of job fields at the top level, got {type(data).__name__}")
    if count_values(data, MAX_JOB_VALUES) > MAX_JOB_VALUES:
        raise JobSpecError(
            f"{source}: the job holds more than {MAX_JOB_VALUES:,} values once YAML aliases are expanded, "
            f"or is nested more than {MAX_NESTING} levels deep",
            hint="remove nested anchors/aliases; put large observed data in a CSV file",
        )
    try:
        job = CalibrationJob.model_validate(data)
    except ValidationError as e:
        raise JobSpecError(f"{source} is not a valid calibration job:", problems=validation_problems(e)) from e
    return job.with_base_dir(base_dir or Path.cwd())


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first_line: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first_line = key, line, first_line


class _JobYamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML's safe loader, refusing a key given twice in one mapping.

    (Aliases are not expanded here: the constructor shares one object per anchor,
    and :func:`count_values` bounds the expanded size before anything walks it.)
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *anchor' overrides on purpose
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1, seen[key] + 1)
                seen[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 reads 1e-3 and 1e308 (no dot) as strings; read them as numbers, as YAML 1.2 and
# JSON do, now that a string is not accepted where a number is expected.
_JobYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _key_lines(text: str, start: int) -> list[tuple[str, int]]:
    """Keys of the JSON object whose members start at ``start``, with their lines."""
    keys: list[tuple[str, int]] = []
    depth, i = 0, start
    while i < len(text) and depth >= 0:
        c = text[i]
        if c == '"':
            value, end = json.decoder.scanstring(text, i + 1)
            after = end
            while after < len(text) and text[after] in " \t\r\n":
                after += 1
            if depth == 0 and text[after: after + 1] == ":":
                keys.append((value, text.count("\n", 0, i) + 1))
            i = end
            continue
        depth += 1 if c in "{[" else -1 if c in "}]" else 0
        i += 1
    return keys


def _json_load(text: str) -> Any:
    """``json.loads`` refusing a key given twice in one object."""
    decoder = json.JSONDecoder()

    def parse_object(s_and_end: tuple[str, int], strict: bool, scan_once: Any, _hook: Any, _pairs_hook: Any,
                     memo: Any = None) -> tuple[Any, int]:
        pairs, end = json.decoder.JSONObject(s_and_end, strict, scan_once, None, list, memo)
        seen: dict[str, int] = {}
        lines = None
        for i, (key, _) in enumerate(pairs):
            if key in seen:
                lines = lines or _key_lines(s_and_end[0], s_and_end[1])
                raise _DuplicateKey(key, lines[i][1], lines[seen[key]][1])
            seen[key] = i
        return dict(pairs), end

    decoder.parse_object = parse_object  # type: ignore[assignment]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    return decoder.decode(text)


def load_job(path: str | Path) -> CalibrationJob:
    """Read a YAML or JSON job file.

    A key given twice in one mapping, a file larger than MAX_JOB_FILE_BYTES, and a
    job that expands (YAML aliases) past MAX_JOB_VALUES values are refused.

    Raises:
        JobSpecError: the file is missing, too large, unparsable, ambiguous, or any field is invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise JobSpecError(f"job file not found: {path}", hint="pass the path of a YAML or JSON job file")
    try:
        size = path.stat().st_size
        if size > MAX_JOB_FILE_BYTES:
            raise JobSpecError(f"job file {path} is {size:,} bytes, more than the limit of {MAX_JOB_FILE_BYTES:,}",
                               hint="put large observed data in a CSV file and reference it from 'data'")
        with path.open("rb") as fh:
            raw = fh.read(MAX_JOB_FILE_BYTES + 1)  # the file may grow after stat
        if len(raw) > MAX_JOB_FILE_BYTES:
            raise JobSpecError(f"job file {path} is more than {MAX_JOB_FILE_BYTES:,} bytes")
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JobSpecError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})", hint="save the job file as UTF-8 YAML or JSON") from e
    except OSError as e:
        raise JobSpecError(f"job file {path} cannot be read: {e.strerror or e}") from e
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        data = _json_load(text) if kind == "JSON" else yaml.load(text, Loader=_JobYamlLoader)  # noqa: S506 - a safe loader
    except _DuplicateKey as e:
        raise JobSpecError(f"{path}, line {e.line}: key {e.key!r} is given twice in one mapping (first at line {e.first_line})",
                           hint="keep one of them: the job would otherwise silently take the last") from None
    except RecursionError:
        raise JobSpecError(f"{path}: nested more than {MAX_NESTING} levels deep",
                           hint="a job is a few levels of mappings and lists") from None
    except json.JSONDecodeError as e:
        before = e.doc[: e.pos].rstrip()
        hint = "remove the trailing comma before it" if before.endswith(",") and e.doc[e.pos: e.pos + 1] in ("}", "]") else ""
        raise JobSpecError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}", hint=hint) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
        opened = f" ({context} that starts at line {start.line + 1}, column {start.column + 1})" if context and start else ""
        raise JobSpecError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}{opened}") from e
    return job_from_dict(data, source=str(path), base_dir=path.resolve().parent)


# What each field means, for `calabaria schema` (a description given with Field(...) wins).
FIELD_DOCS: dict[str, dict[str, str]] = {
    "PosteriorSpec": {
        "method": "posterior method: imis (incremental mixture importance sampling, docs/posterior.md)",
        "initial": "trials drawn from the prior before the first mixture component",
        "per_stage": "trials drawn from each new mixture component",
        "target_ess": "stop when the effective sample size reaches this (else the budget stops the run)",
    },
    "PriorSpec": {
        "dist": "prior distribution, truncated to the parameter's bounds: normal | beta | gamma",
        "mean": "normal prior: mean",
        "sd": "normal prior: standard deviation (> 0)",
        "a": "beta prior: first shape parameter (> 0), on the value itself (support 0..1)",
        "b": "beta prior: second shape parameter (> 0)",
        "shape": "gamma prior: shape (> 0)",
        "rate": "gamma prior: rate (> 0)",
    },
    "PruningSpec": {
        "after": "replicate counts after which a trial may be pruned, increasing, each >= 2 and < n_replicates (default: half of n_replicates)",
        "against": "compare with the k-th best completed trial (default 1: the best)",
        "error_rate": "at most this chance, per trial, of pruning one whose full loss would have beaten that trial (default 0.05)",
    },
    "RampSpec": {
        "enabled": "false: no ramp (also written `ramp: off`)",
        "per": "after the first wave, one more trial in flight per this many finished trials (default 4)",
        "floor": "trials in flight allowed at least, however few have finished (default 2)",
        "first": "trials of the first wave, asked at once (default: the full concurrency)",
    },
    "ReevaluateSpec": {
        "top_k": "best trials re-run on fresh seeds at the end of a run (0: off); the reported best is chosen by that loss",
        "replicates": "fresh replicates per re-run trial (default 2 x n_replicates)",
    },
    "CalibrationJob": {
        "reevaluate": "re-evaluate the best trials on fresh seeds at the end: {top_k, replicates} (docs/quality.md)",
        "posterior": "a posterior run: {method, initial, per_stage, target_ess}: weighted samples by IMIS (docs/posterior.md)",
        "report": "report.html options: {replicates, others}",
        "pruning": "stop trials early whose first replicates show they will not beat the k-th best: {after, against, error_rate}; off when absent",
        "study": "study name (letters, digits, _ . -); re-running with the same name resumes it",
        "model": "built-in name (sir, seir, age_seir; see `calabaria models`), package.module:object, or path/file.py:object",
        "parameters": "searched parameters: {name: {lower, upper, log, kind, step, choices, guess}}",
        "fixed": "parameters passed to the model unchanged",
        "targets": "observed series the model is scored against",
        "n_replicates": "simulations per trial (seeds from 'seed' and the replicate index)",
        "max_trials": "trial budget of the study",
        "concurrency": ("trials at once: loops (parallel) or batch size (batched). auto (the default): follow the cluster's live "
                        f"thread count and n_replicates, resized every second, at most {MAX_CONCURRENCY}; a number: fixed"),
        "ramp": ("concurrency ramp: after the first wave, trials in flight <= max(floor, finished // per), widening to "
                 "'concurrency'; {per, floor}, on, or off; absent: on for tpe (docs/quality.md)"),
        "sampler": "Optuna sampler: tpe (constant liar) | gp | cmaes | random | qmc | grid | nsga2, or {name, options}",
        "seed": "seed of the sampler and of the replicate seeds (`calibrate --seed` overrides it)",
        "replicate_seeds": "common: the same replicate seeds for every trial; independent: also depend on the trial number",
        "direction": "minimize (losses, negative log-likelihoods) or maximize",
        "timeout_s": "seconds one simulation may run before its trial fails",
        "replicate_retries": "times a replicate that raised is run again before its trial fails (0-10)",
        "retry_lost_trials": "ask the parameters of trials lost with their coordinator again (uses budget)",
        "stop": "stop rules besides the budget",
        "execution": "defaults for the settings: mode, storage, scheduler, replicates per task",
        "start": "starting points evaluated first, exactly once per study: a list of {parameter: value} giving every searched parameter",
    },
    "ParameterSpec": {
        "prior": "explicit prior for a posterior run: {dist: normal|beta|gamma, ...}; default uniform (log-uniform with log: true)",
        "kind": "float (default), int or categorical",
        "lower": "lowest value (float and int)",
        "upper": "highest value (float and int)",
        "log": "search on a log scale (needs lower > 0)",
        "step": "search only lower, lower + step, ... (not with log)",
        "choices": "the values of a categorical parameter",
        "guess": "a starting guess: evaluated first (other parameters at their midpoint), exactly once per study",
    },
    "ScoreSpec": {
        "dispersion_output": "betabinomial_nll: a model output holding one positive number per simulation, used as its dispersion",
        "kind": "sse | mse | rmse | poisson_nll | negbin_nll | normal_nll | binomial_nll | betabinomial_nll",
        "dispersion": "negative-binomial size or beta-binomial overdispersion (> 0)",
        "sigma": "standard deviation of normal_nll (> 0)",
        "trials_column": "observed column of binomial denominators",
        "floor": "simulated means are floored at this value for count likelihoods (a zero mean against a count stays finite)",
    },
    "TargetSpec": {
        "name": "target name (unique; per-target losses are stored under it)",
        "output": "name of the model output compared with the data",
        "data": "CSV or Parquet path (relative to the job file) or an inline table {column: [values]}; blank cells are gaps",
        "index_column": "without 'on': column of whole numbers selecting output rows (default: the first column)",
        "value_columns": "observed columns compared with the output's columns (default: all but keys and trials_column)",
        "score": "how simulated and observed values are compared (a name or {kind, ...})",
        "aggregation": "mean_of_scores | score_of_mean | logmeanexp over the replicates",
        "weight": "trial loss = sum of weight x aggregated score",
        "on": "key columns matched between data and output, e.g. [date] or [week, age_group]",
        "match": "exact (default) | nearest | backward (the model step containing the time) | forward | accumulate (model values summed over each observed interval)",
        "time_key": "the key matched as-of / accumulated (default: the one date key, or the key named date/day/week/time/t)",
        "start_date": "ISO date of model day 0, when the model reports day numbers and the data dates",
        "period": "accumulate: length of each observed interval in time-key units (days for dates); default the smallest spacing of the data",
    },
    "StopSpec": {
        "target_loss": "stop once the best loss reaches this value",
        "patience": "stop after this many trials without improvement",
        "max_wall_time_s": "stop after this many seconds",
        "max_consecutive_failures": "stop after this many failed trials in a row (failure storm guard)",
    },
    "SamplerSpec": {"name": "sampler name", "options": "keyword options of the Optuna sampler"},
    "ExecutionSpec": {
        "parallel_trials": "parallel loops (true) or batched rounds (false); env PARALLEL_TRIALS",
        "storage": "study storage URL (postgresql://, sqlite:///, journal:///); env CALABARIA_STORAGE",
        "scheduler": "Dask scheduler address, empty for a local cluster, or inline; env CALABARIA_SCHEDULER",
        "replicates_per_task": "replicates one Dask task runs; empty = automatic",
    },
}


def job_schema() -> dict[str, Any]:
    """The JSON schema of a job file, every field with its description."""
    schema = CalibrationJob.model_json_schema()
    for name, model_schema in [("CalibrationJob", schema), *schema.get("$defs", {}).items()]:
        docs = FIELD_DOCS.get(name, {})
        for field, prop in model_schema.get("properties", {}).items():
            if field in docs:
                prop.setdefault("description", docs[field])
    return schema
