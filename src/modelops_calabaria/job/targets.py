"""Targets: observed data, how rows match the model's output, and how they are scored.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from modelops_calabaria.job._base import LIKELIHOOD_SCORES, Aggregation, Match, ScoreKind, _Spec, also_accepts, names_of
from modelops_calabaria.job.limits import MAX_NAME, MAX_POSITIVE

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
    ``custom`` calls the user's ``function`` (``module:fn`` or ``path/file.py:fn``) as
    ``fn(observed, simulated, keys) -> float`` (targets/custom.py, docs/sensitivity.md).
    """

    kind: ScoreKind | Literal["custom"] = Field(description='sse | mse | rmse | poisson_nll | negbin_nll | normal_nll | binomial_nll | betabinomial_nll | custom')
    function: str | None = Field(default=None, min_length=3, description="custom: the score function, module:fn or path/file.py:fn (relative to the job file), called as fn(observed, simulated, keys) -> float, lower is better")
    log_likelihood: bool = Field(default=False, description="custom: the function returns a negative log-likelihood (a posterior run accepts only such a custom score)")
    dispersion: float | None = Field(default=None, gt=0, le=MAX_POSITIVE, description='negative-binomial size or beta-binomial overdispersion (> 0)')
    dispersion_output: str | None = Field(default=None, min_length=1, description='betabinomial_nll: a model output holding one positive number per simulation, used as its dispersion')
    sigma: float | None = Field(default=None, gt=0, le=MAX_POSITIVE, description='standard deviation of normal_nll (> 0)')
    trials_column: str | None = Field(default=None, description='observed column of binomial denominators')
    floor: float = Field(default=1e-9, gt=0, le=MAX_POSITIVE, description='simulated means are floored at this value for count likelihoods (a zero mean against a count stays finite)')

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value

    @property
    def is_likelihood(self) -> bool:
        """Whether the score is a negative log-likelihood (a built-in one, or a custom one that says so)."""
        return self.kind in LIKELIHOOD_SCORES or (self.kind == "custom" and self.log_likelihood)

    @model_validator(mode="after")
    def _check_custom(self) -> ScoreSpec:
        if self.kind == "custom":
            if self.function is None or ":" not in self.function:
                raise ValueError("kind: custom needs 'function': module:fn or path/file.py:fn")
        elif self.function is not None or self.log_likelihood:
            raise ValueError(f"'{'function' if self.function is not None else 'log_likelihood'}' is for kind: custom, not {self.kind}")
        return self

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

    name: str = Field(min_length=1, max_length=MAX_NAME, description='target name (unique; per-target losses are stored under it; at most 200 characters)')
    output: str = Field(min_length=1, max_length=MAX_NAME, description='name of the model output compared with the data')
    data: str | dict[str, list[Annotated[float, Field(allow_inf_nan=True)] | int | str | None]] = Field(description='CSV or Parquet path (relative to the job file) or an inline table {column: [values]}; blank cells are gaps')
    index_column: str | None = Field(default=None, description="without 'on': column of whole numbers selecting output rows (default: the first column)")
    value_columns: list[str] | None = Field(default=None, description="observed columns compared with the output's columns (default: all but keys and trials_column)")
    score: ScoreSpec = Field(description='how simulated and observed values are compared (a name or {kind, ...})',
                             json_schema_extra=also_accepts(names_of(ScoreKind)))
    aggregation: Aggregation = Field(default="score_of_mean", description='mean_of_scores | score_of_mean | logmeanexp over the replicates')  # the least biased on the panel (docs/quality.md)
    weight: float = Field(default=1.0, gt=0, le=MAX_POSITIVE, description='trial loss = sum of weight x aggregated score')
    on: list[str] | None = Field(default=None, min_length=1, description='key columns matched between data and output, e.g. [date] or [week, age_group]')
    match: Match | None = Field(default=None, description='exact (default) | nearest | backward (the model step containing the time) | forward | accumulate (model values summed over each observed interval)')
    time_key: str | None = Field(default=None, description='the key matched as-of / accumulated (default: the one date key, or the key named date/day/week/time/t)')
    start_date: datetime.date | None = Field(default=None, strict=False, description='ISO date of model day 0, when the model reports day numbers and the data dates')  # an ISO 8601 string or a YAML date
    period: float | None = Field(default=None, gt=0, le=MAX_POSITIVE, description='accumulate: length of each observed interval in time-key units (days for dates); default the smallest spacing of the data')
    synthetic_estimator: Literal["plugin", "ubsl"] = Field(
        default="plugin",
        description="with aggregation synthetic_likelihood: 'plugin' (Wood 2010, shrunk covariance; its target moves "
                    "with n_replicates) or 'ubsl' (the unbiased Gaussian-density estimator of Price et al. 2018; "
                    "needs n_replicates > observed cells + 3; docs/posterior.md)")
    columns: dict[str, str] | None = Field(
        default=None, min_length=1,
        description="rename data columns to the output's names before anything else: {data column: output column}, "
                    "e.g. {week_ending: date}; every other field (on, index_column, value_columns, time_key, "
                    "trials_column) names the columns as renamed")

    @model_validator(mode="after")
    def _check(self) -> TargetSpec:
        if self.synthetic_estimator != "plugin" and self.aggregation != "synthetic_likelihood":
            raise ValueError(f"synthetic_estimator {self.synthetic_estimator!r} needs aggregation synthetic_likelihood")
        if self.aggregation == "logmeanexp" and not self.score.is_likelihood:
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
    def _check_columns(self) -> TargetSpec:
        if self.columns:
            empty = [k for k, v in self.columns.items() if not k or not v]
            if empty:
                raise ValueError("'columns' maps data column names to output column names: neither may be empty")
            targets = list(self.columns.values())
            twice = sorted({v for v in targets if targets.count(v) > 1})
            if twice:
                raise ValueError(f"'columns' renames two data columns to the same name: {', '.join(twice)}")
        return self

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
