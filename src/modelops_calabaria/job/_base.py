"""The base of every job spec: strict, frozen, no unknown fields.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args

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


def also_accepts(*extra: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """A ``json_schema_extra`` adding the short forms a field's validator accepts (``auto``,
    ``off``, a sampler or score name) to its JSON schema, so that an editor validating a
    job file against `calabaria schema` accepts what the loader accepts."""

    def extend(schema: dict[str, Any]) -> None:
        forms = schema.pop("anyOf", None)
        if forms is None:
            ref = {k: schema.pop(k) for k in ("$ref", "type", "minimum", "maximum") if k in schema}
            forms = [ref]
        schema["anyOf"] = [*forms[:-1], *extra, forms[-1]] if {"type": "null"} in forms else [*forms, *extra]

    return extend


def names_of(literal: Any) -> dict[str, Any]:
    """A JSON schema accepting the names of a ``Literal``."""
    return {"type": "string", "enum": list(get_args(literal))}
