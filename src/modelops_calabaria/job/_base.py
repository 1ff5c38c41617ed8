"""The base of every job spec: strict, frozen, no unknown fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

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
