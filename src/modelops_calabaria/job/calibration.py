"""The calibration job: model, parameters, targets, budget and search, checked as a whole.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from modelops_calabaria.callables import reference
from modelops_calabaria.errors import StudyMismatchError
from modelops_calabaria.job._base import SamplerName, _Spec, also_accepts, names_of
from modelops_calabaria.job.limits import (
    MAX_CONCURRENCY,
    MAX_FIXED_VALUES,
    MAX_GRID_CELLS,
    MAX_NAME,
    MAX_PARAMETERS,
    MAX_REPLICATES,
    MAX_SEED,
    MAX_START_POINTS,
    MAX_STUDY_NAME,
    MAX_TARGETS,
    MAX_TIMEOUT_S,
    MAX_TRIALS,
    MIN_TIMEOUT_S,
    MAX_REPLICATES_IN_FLIGHT,
    check_fixed_values,
    check_in_flight,
    check_study_name,
    count_values,
)
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
from modelops_calabaria.job.parameters import ParameterSpec, midpoint
from modelops_calabaria.job.sweep import SweepSpec
from modelops_calabaria.job.targets import TargetSpec

class CalibrationJob(_Spec):
    """A complete calibration: model, parameters, targets, budget and search."""

    study: str = Field(min_length=1, max_length=MAX_STUDY_NAME, description='study name (letters, digits, _ . -); re-running with the same name resumes it')
    model: str = Field(min_length=1, description='built-in name (sir, seir, age_seir; see `calabaria models`), package.module:object, or path/file.py:object (from Python also the function itself: docs/models.md)')
    parameters: dict[str, ParameterSpec] = Field(min_length=1, max_length=MAX_PARAMETERS, description='searched parameters: {name: {lower, upper, log, kind, step, choices, guess}}')
    fixed: dict[str, Any] = Field(default_factory=dict, description='parameters passed to the model unchanged')
    targets: list[TargetSpec] = Field(default_factory=list, max_length=MAX_TARGETS, description='observed series the model is scored against (at least one, except for a sweep)')
    n_replicates: int = Field(default=4, ge=1, le=MAX_REPLICATES, description="simulations per trial (seeds from 'seed' and the replicate index)")
    max_trials: int = Field(default=100, ge=1, le=MAX_TRIALS, description='trial budget of the study')
    concurrency: int | None = Field(
        default=None, ge=1, le=MAX_CONCURRENCY,
        description="trials at once: loops (parallel) or batch size (batched); auto (or empty): follow the cluster's live size",
        json_schema_extra=also_accepts({"const": "auto"}),
    )
    ramp: RampSpec | None = Field(
        default=None, description="concurrency ramp: {per, floor}, on, or off; absent: on for tpe, off otherwise",
        json_schema_extra=also_accepts({"type": "boolean"}, {"enum": ["on", "off"]}))
    sampler: SamplerSpec = Field(default_factory=SamplerSpec, description='Optuna sampler: tpe (constant liar) | gp | cmaes | random | qmc | grid | nsga2, or {name, options}',
                                 json_schema_extra=also_accepts(names_of(SamplerName)))
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description='seed of the sampler and of the replicate seeds (`calibrate --seed` overrides it)')
    replicate_seeds: Literal["common", "independent", "staged"] = Field(default="common", description='common: the same replicate seeds for every trial; independent: also depend on the trial number')
    reevaluate: ReevaluateSpec = Field(default_factory=ReevaluateSpec, description='re-evaluate the best trials on fresh seeds at the end: {top_k, replicates} (docs/quality.md)')
    direction: Literal["minimize", "maximize"] = Field(default="minimize", description='minimize (losses, negative log-likelihoods) or maximize')
    timeout_s: float | None = Field(default=None, ge=MIN_TIMEOUT_S, le=MAX_TIMEOUT_S, description="seconds a simulation may take (0.001 to 604,800)")
    replicate_retries: int = Field(default=0, ge=0, le=10, description='times a replicate that raised is run again before its trial fails (0-10)')
    retry_lost_trials: bool = Field(
        default=False, description="ask the parameters of trials lost with their coordinator again (uses budget)"
    )
    stop: StopSpec = Field(default_factory=StopSpec, description='stop rules besides the budget')
    posterior: PosteriorSpec | None = Field(default=None, description='a posterior run: {method, initial, per_stage, target_ess}: weighted samples by IMIS (docs/posterior.md)')
    pruning: PruningSpec | None = Field(default=None, description='stop trials early whose first replicates show they will not beat the k-th best: {after, against, error_rate}; off when absent')
    report: ReportSpec = Field(default_factory=ReportSpec, description='report.html options: {replicates, others}')
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec, description='defaults for the settings: mode, storage, scheduler, replicates per task')
    start: list[dict[str, Any]] = Field(default_factory=list, description='starting points evaluated first, exactly once per study: a list of {parameter: value} giving every searched parameter; at most max_trials points (and 10,000)')
    sweep: SweepSpec | None = Field(default=None, description='`calabaria sweep`: run a fixed design and keep output summaries for sensitivity indices: {design, points, replicates, summaries, ...} (docs/sensitivity.md)')

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @field_validator("model", mode="before")
    @classmethod
    def _callable_model(cls, value: Any) -> Any:
        # From Python a model may be the function itself: it becomes a reference (callables.py).
        if callable(value) and not isinstance(value, str):
            return reference(value)
        return value

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
        check_fixed_values(fixed)
        return fixed

    @field_validator("parameters", "fixed")
    @classmethod
    def _name_lengths(cls, values: dict[str, Any]) -> dict[str, Any]:
        for name in values:
            if not name or len(name) > MAX_NAME or name != name.strip():
                raise ValueError(f"parameter name {name[:40]!r}{'...' if len(name) > 40 else ''} must be 1 to {MAX_NAME} "
                                 "characters without leading or trailing spaces (it is stored as a key)")
        return values

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
        reruns = self.reevaluate.top_k * (self.reevaluate.replicates or 2 * self.n_replicates)
        if reruns > MAX_REPLICATES_IN_FLIGHT:
            raise ValueError(f"reevaluate: top_k {self.reevaluate.top_k} x {self.reevaluate.replicates or 2 * self.n_replicates} "
                             f"replicates = {reruns:,} simulations at the end of the run, more than {MAX_REPLICATES_IN_FLIGHT:,}: "
                             "lower reevaluate.top_k or reevaluate.replicates")
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
    def _check_sweep(self) -> CalibrationJob:
        if self.sweep is None:
            if not self.targets:
                raise _at("targets", "a job needs at least one target (only a sweep runs without data)")
            return self
        categorical = [n for n, p in self.parameters.items() if p.kind == "categorical"]
        if categorical:
            raise _at("sweep", f"a sweep varies numeric parameters; {', '.join(categorical)} is categorical: move it to 'fixed'")
        if self.pruning is not None or self.posterior is not None:
            raise _at("sweep", f"a sweep runs every point in full: remove '{'pruning' if self.pruning is not None else 'posterior'}'")
        if self.sweep.size(len(self.parameters)) > MAX_GRID_CELLS:
            raise _at("sweep.points", f"the sweep's design has {self.sweep.size(len(self.parameters)):,} points, more than {MAX_GRID_CELLS:,}: lower sweep.points")
        return self

    @model_validator(mode="after")
    def _check_start(self) -> CalibrationJob:
        if len(self.start) > MAX_START_POINTS:
            raise ValueError(f"'start' holds {len(self.start):,} points, more than {MAX_START_POINTS:,} "
                             "(a limit of the service: see 'Limits' in docs/reliability.md)")
        n_points = len(self.starting_points())
        if n_points > self.max_trials:
            raise ValueError(f"{n_points:,} starting points ('start' and guesses) but max_trials is {self.max_trials:,}: "
                             "every starting point is a trial of the budget; raise max_trials or give fewer points")
        for i, point in enumerate(self.start):
            unknown = sorted(set(point) - set(self.parameters))
            if unknown:
                raise ValueError(f"start[{i}] names {', '.join(unknown)}, not searched parameters ({', '.join(self.parameters)})")
            missing = [n for n in self.parameters if n not in point]
            if missing:
                raise ValueError(f"start[{i}] lacks {', '.join(missing)}: a starting point gives every searched parameter")
            for name, value in point.items():
                spec = self.parameters[name]
                if not spec.admits(value):
                    between = (spec.kind != "categorical" and spec.step is not None and isinstance(value, (int, float))
                               and not isinstance(value, bool) and spec.lower <= value <= spec.upper)  # type: ignore[operator]
                    raise ValueError(f"start[{i}].{name} = {value!r} is " + (
                        f"between steps: {name} takes {spec.lower:g} + k x {spec.step:g} (the search would silently move it)"
                        if between else "outside the parameter's space"))
        return self

    @model_validator(mode="after")
    def _check_sampler(self) -> CalibrationJob:
        # A sampler other than the default (the stored form of a job spells the default out).
        if self.posterior is not None and self.sampler != SamplerSpec():
            raise ValueError(f"a posterior run draws its trials by {self.posterior.method.upper()}, so 'sampler' "
                             f"({self.sampler.name}) would be ignored: remove 'sampler' or 'posterior'")
        x0 = self.sampler.options.get("x0") if self.sampler.name == "cmaes" else None
        if isinstance(x0, dict):
            for name, value in x0.items():
                spec = self.parameters.get(name)
                if spec is None or not spec.admits(value):
                    raise ValueError(f"sampler.options.x0.{name}: " + ("not a searched parameter" if spec is None
                                     else f"{value!r} is outside the parameter's space"))
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


def _at(field: str, message: str) -> PydanticCustomError:
    """A job-level error reported at ``field`` (see validation_problems)."""
    return PydanticCustomError("parameter_spec", message, {"field": field})


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
