"""What a posterior study records, and the weighted sample computed from it. Pure, no I/O.

The sampler records, as study system attributes:

- ``calabaria:imis:c:<id>``: each Gaussian component (mean and covariance, JSON);
- ``calabaria:imis:d:<key>``: the source (``prior`` or a component id) of each
  drawn point, keyed by a hash of the point's parameter values.

A record is written before its point is handed out, so every trial of the
study has one; a point that never became a trial leaves a harmless record.
The weights are therefore a function of the study alone: any coordinator,
and ``calabaria`` after the run, computes the same ones.
"""

from __future__ import annotations

import hashlib
import math
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from modelops_calabaria.posterior.imis import PRIOR, Component, ess, log_weights, normalise
from modelops_calabaria.posterior.prior import JointPrior
from modelops_calabaria.targets.scores import is_zero_likelihood

COMPONENT_PREFIX = "calabaria:imis:c:"
DRAW_PREFIX = "calabaria:imis:d:"
RETRY_ATTR = "calabaria:retry_of_lost"  # as calibration/study.py: a re-asked point is not a fresh draw


def draw_key(names: Sequence[str], params: Mapping[str, Any]) -> str:
    """The record key of a point: a hash of its exact float values in declaration order."""
    text = json.dumps([float(params[n]) for n in names])
    return DRAW_PREFIX + hashlib.sha1(text.encode()).hexdigest()[:20]


def parse_records(attrs: Mapping[str, Any]) -> tuple[dict[str, Component], dict[str, str]]:
    """Components by id and sources by draw key, from a study's system attributes."""
    components: dict[str, Component] = {}
    sources: dict[str, str] = {}
    for key, value in attrs.items():
        if key.startswith(COMPONENT_PREFIX):
            components[key[len(COMPONENT_PREFIX):]] = Component.from_json(value)
        elif key.startswith(DRAW_PREFIX):
            sources[key] = str(value)
    return components, sources


@dataclass
class WeightedSample:
    """The COMPLETE trials of a posterior study with their importance weights."""

    numbers: list[int]
    x: np.ndarray  # (n, d) parameter values
    u: np.ndarray  # (n, d) in the unconstrained space
    loglik: np.ndarray
    sources: list[str]
    weights: np.ndarray  # normalised
    ess: float
    unrecorded: int  # COMPLETE trials without a record (drawn by another sampler): left out
    n_components: int
    logw: np.ndarray | None = None  # unnormalised log weights (Pareto k̂ reads their tail)
    n_draws: int = 0  # evaluated recorded draws the mixture counts (COMPLETE, FAIL and PRUNED trials)


FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)


def weigh(prior: JointPrior, trials: Sequence[FrozenTrial], attrs: Mapping[str, Any]) -> WeightedSample:
    """Weigh every COMPLETE, recorded, finite-valued trial (the trial value is ``-log L``).

    The mixture's proportions count every *evaluated* recorded draw: a FAIL or PRUNED trial
    (or a COMPLETE one with an infinite loss, a likelihood estimate of 0) was drawn from its
    source all the same and weighs 0. Draws still RUNNING count nowhere yet."""
    components, sources = parse_records(attrs)
    names = prior.names
    kept: list[FrozenTrial] = []
    kept_sources: list[str] = []
    counts: Counter[str] = Counter()
    unrecorded = 0
    for t in trials:
        if t.state not in FINISHED:
            continue
        source = None if t.system_attrs.get(RETRY_ATTR) else sources.get(draw_key(names, t.params))
        known = source is not None and (source == PRIOR or source in components)
        if known:
            counts[source] += 1  # type: ignore[index]
        if t.state != TrialState.COMPLETE or t.value is None or not np.isfinite(t.value):
            continue
        if not known:
            unrecorded += 1
            continue
        kept.append(t)
        kept_sources.append(source)  # type: ignore[arg-type]
    x = prior.rows([t.params for t in kept])
    u = prior.to_u(x) if kept else np.zeros((0, prior.dim))
    loglik = np.array([-math.inf if is_zero_likelihood(float(t.value)) else -float(t.value) for t in kept])  # type: ignore[arg-type]
    logw = log_weights(u, loglik, kept_sources, components, prior, counts) if kept else np.zeros(0)
    w = normalise(logw)
    return WeightedSample([t.number for t in kept], x, u, loglik, kept_sources, w, ess(w), unrecorded,
                          len(set(kept_sources) - {PRIOR}), logw, sum(counts.values()))
