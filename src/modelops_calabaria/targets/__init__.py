"""Targets: observed data, scores, and how replicates are evaluated and aggregated."""

from modelops_calabaria.targets.data import Observed, load_observed
from modelops_calabaria.targets.evaluate import CompiledTarget, aggregate_trial, compile_targets, evaluate_replicate
from modelops_calabaria.targets.scores import log_mean_exp_loss, score

__all__ = [
    "CompiledTarget",
    "Observed",
    "aggregate_trial",
    "compile_targets",
    "evaluate_replicate",
    "load_observed",
    "log_mean_exp_loss",
    "score",
]
