"""The calibration job: what to fit, against what, and how hard to search.

A :class:`CalibrationJob` is plain data (pydantic v2), loaded from YAML or JSON
by :func:`load_job`. Every validation problem is reported as a
:class:`~modelops_calabaria.errors.JobSpecError` whose ``problems`` name the
field path (``parameters.beta.upper``, ``targets[0].score``) and what is
expected. Loading observed data and resolving the model are separate steps
(:mod:`modelops_calabaria.targets`, :mod:`modelops_calabaria.models`) so that
the spec itself stays pure.
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from modelops_calabaria.errors import JobSpecError

SamplerName = Literal["tpe", "gp", "cmaes", "random", "qmc", "grid", "nsga2"]
ScoreKind = Literal[
    "sse", "mse", "rmse", "poisson_nll", "negbin_nll", "normal_nll", "binomial_nll", "betabinomial_nll"
]
COUNT_SCORES = frozenset({"poisson_nll", "negbin_nll", "binomial_nll", "betabinomial_nll"})
LIKELIHOOD_SCORES = frozenset({"poisson_nll", "negbin_nll", "normal_nll", "binomial_nll", "betabinomial_nll"})
Aggregation = Literal["mean_of_scores", "score_of_mean", "logmeanexp"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParameterSpec(_Spec):
    """One searched parameter.

    ``kind`` float/int take ``lower < upper`` (``log`` needs ``lower > 0``);
    categorical takes ``choices``.
    """

    kind: Literal["float", "int", "categorical"] = "float"
    lower: float | None = None
    upper: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[str | int | float | bool] | None = None

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
            if not math.isfinite(value):
                raise _field_error(name, "'lower' and 'upper' must be finite numbers")
        if self.lower >= self.upper:
            hint = " (equal bounds: move it to 'fixed' instead)" if self.lower == self.upper else ""
            raise _field_error("upper", f"'lower' ({self.lower:g}) must be less than 'upper' ({self.upper:g}){hint}")
        if self.log and self.lower <= 0:
            raise _field_error("lower", f"log scale needs 'lower' > 0 (got {self.lower:g}): raise 'lower' or set log: false")
        for name, value in (("lower", self.lower), ("upper", self.upper)):
            if self.kind == "int" and value != int(value):
                raise _field_error(name, "an int parameter needs whole-number 'lower' and 'upper'")
        if self.step is not None and (self.step <= 0 or self.log):
            raise _field_error("step", "'step' must be > 0 and cannot be combined with log scale")
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
    data: str | dict[str, list[float | int | None]]
    index_column: str | None = None
    value_columns: list[str] | None = None
    score: ScoreSpec
    aggregation: Aggregation = "score_of_mean"  # the least biased on the panel (docs/quality.md)
    weight: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> TargetSpec:
        if self.aggregation == "logmeanexp" and self.score.kind not in LIKELIHOOD_SCORES:
            raise ValueError(f"aggregation 'logmeanexp' needs a likelihood score, not {self.score.kind}")
        if self.score.dispersion_output is not None and self.aggregation == "score_of_mean":
            raise ValueError("'dispersion_output' is per simulation: use aggregation mean_of_scores or logmeanexp, not score_of_mean")
        return self


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


class ReevaluateSpec(_Spec):
    """Re-evaluating the best trials on fresh seeds at the end of a run (docs/quality.md).

    The ``top_k`` best COMPLETE trials are run again with ``replicates`` fresh,
    independent replicates (default: 2 x ``n_replicates``), with seeds no trial
    used; the reported best is the one with the best re-evaluated loss.
    ``top_k: 0`` turns it off (the reported best is then the in-sample best).
    """

    top_k: int = Field(default=5, ge=0, le=1000)
    replicates: int | None = Field(default=None, ge=1, le=10_000)


class ExecutionSpec(_Spec):
    """Where and how the job runs; each may be overridden by env or CLI (see Settings)."""

    parallel_trials: bool | None = None
    storage: str | None = None
    scheduler: str | None = None
    replicates_per_task: int | None = Field(default=None, ge=1, description="replicates one Dask task runs; empty = automatic")


class CalibrationJob(_Spec):
    """A complete calibration: model, parameters, targets, budget and search."""

    study: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    model: str = Field(min_length=1)
    parameters: dict[str, ParameterSpec] = Field(min_length=1)
    fixed: dict[str, Any] = Field(default_factory=dict)
    targets: list[TargetSpec] = Field(min_length=1)
    n_replicates: int = Field(default=4, ge=1, le=10_000)
    max_trials: int = Field(default=100, ge=1)
    concurrency: int | None = Field(
        default=None, ge=1, description="trials at once: loops (parallel) or batch size (batched)"
    )
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    seed: int = Field(default=0, ge=0)
    replicate_seeds: Literal["common", "independent", "staged"] = "common"
    reevaluate: ReevaluateSpec = Field(default_factory=ReevaluateSpec)
    direction: Literal["minimize", "maximize"] = "minimize"
    timeout_s: float | None = Field(default=None, gt=0, description="per simulation")
    replicate_retries: int = Field(default=0, ge=0, le=10)
    retry_lost_trials: bool = Field(
        default=False, description="ask the parameters of trials lost with their coordinator again (uses budget)"
    )
    stop: StopSpec = Field(default_factory=StopSpec)
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec)

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

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
        return self

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
    set().union(*(m.model_fields for m in (CalibrationJob, ParameterSpec, ScoreSpec, TargetSpec, StopSpec, SamplerSpec, ExecutionSpec, ReevaluateSpec)))
)


def job_from_dict(data: Any, *, source: str = "job", base_dir: Path | None = None) -> CalibrationJob:
    """Validate a mapping into a CalibrationJob or raise JobSpecError naming each bad field."""
    if data is None:
        raise JobSpecError(f"{source} is empty", hint="a job needs at least study, model, parameters and targets")
    if not isinstance(data, dict):
        raise JobSpecError(f"{source}: expected a mapping of job fields at the top level, got {type(data).__name__}")
    try:
        job = CalibrationJob.model_validate(data)
    except ValidationError as e:
        raise JobSpecError(f"{source} is not a valid calibration job:", problems=validation_problems(e)) from e
    return job.with_base_dir(base_dir or Path.cwd())


def load_job(path: str | Path) -> CalibrationJob:
    """Read a YAML or JSON job file.

    Raises:
        JobSpecError: the file is missing, unparsable, or any field is invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise JobSpecError(f"job file not found: {path}", hint="pass the path of a YAML or JSON job file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise JobSpecError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})", hint="save the job file as UTF-8 YAML or JSON") from e
    except OSError as e:
        raise JobSpecError(f"job file {path} cannot be read: {e.strerror or e}") from e
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        data = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
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


def job_schema() -> dict[str, Any]:
    """The JSON schema of a job file."""
    return CalibrationJob.model_json_schema()
