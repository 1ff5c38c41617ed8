"""Search scales: a sampler that searches some float parameters on the logit scale.

The shared study stores natural values under natural distributions, so the model,
trials.csv, reports, status and posterior all see natural values. Only the
sampler's copy of the study (:class:`~.mirror.Mirror`) works on the search
scale: :class:`LogitSearch` wraps the job's sampler and names the parameters
(``transform: logit``) and their bounds; the mirror maps every trial it is told
about to the logit scale, runs the wrapped sampler on a logit-scale space, and
maps each point it draws back (:func:`to_search`, :func:`to_natural`). ``transform:
log`` needs none of this: it is Optuna's log float (``log: true``).

Used outside a mirror (the plain ``study.ask`` path, ``fast_path`` off), the
wrapper delegates to the wrapped sampler on the natural scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution

from modelops_calabaria.job import CalibrationJob
from modelops_calabaria.job.parameters import logit_to_natural, natural_to_logit


class LogitSearch(optuna.samplers.BaseSampler):
    """The job's sampler, told to search ``specs`` (name -> ParameterSpec) on the logit scale."""

    def __init__(self, inner: optuna.samplers.BaseSampler, specs: Mapping[str, Any]) -> None:
        self.inner = inner
        self.specs = dict(specs)

    def infer_relative_search_space(self, study: optuna.Study, trial: Any) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: Any, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: Any, param_name: str, param_distribution: BaseDistribution) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: Any) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: Any, state: Any, values: Any) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def with_scales(job: CalibrationJob, sampler: optuna.samplers.BaseSampler) -> optuna.samplers.BaseSampler:
    """``sampler`` wrapped in :class:`LogitSearch` when a parameter has ``transform: logit``."""
    specs = {n: s for n, s in job.parameters.items() if s.logit}
    return LogitSearch(sampler, specs) if specs else sampler


def search_space(space: Mapping[str, BaseDistribution], specs: Mapping[str, Any]) -> dict[str, BaseDistribution]:
    """The space a wrapped sampler searches: logit parameters over their logit-scale bounds."""
    out = dict(space)
    for name, spec in specs.items():
        if name in out:
            out[name] = FloatDistribution(natural_to_logit(spec, spec.lower), natural_to_logit(spec, spec.upper))
    return out


def to_search(params: Mapping[str, Any], specs: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's natural values on the search scale (kept inside the logit-scale bounds)."""
    out = dict(params)
    for name, spec in specs.items():
        if name in out:
            lo, hi = natural_to_logit(spec, spec.lower), natural_to_logit(spec, spec.upper)
            x = min(max(float(out[name]), spec.lower), spec.upper)
            out[name] = min(max(natural_to_logit(spec, x), lo), hi)
    return out


def to_natural(params: Mapping[str, Any], specs: Mapping[str, Any]) -> dict[str, Any]:
    """A point drawn on the search scale, in natural values."""
    out = dict(params)
    for name, spec in specs.items():
        if name in out:
            out[name] = logit_to_natural(spec, float(out[name]))
    return out
