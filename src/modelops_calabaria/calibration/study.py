"""The job as an Optuna study: samplers, the search space, creating or loading the study.

Trials carry (names in ``backend/base.py``):

- user attr ``fail_reason`` on FAIL trials (why it failed);
- user attr ``targets`` on COMPLETE trials: ``{target name: aggregated value}``,
  and each target's value again as a numeric user attr ``loss:<target>``;
- user attr ``busy_s``: the trial's simulation-seconds;
- system attr ``calabaria:coordinator`` (who asked it; used for recovery);
- system attr ``calabaria:retry_of_lost`` on trials that re-ask a lost trial's parameters.

The study's system attr ``calabaria:job`` holds the job spec, so that a
joining ``worker`` needs only the study name and storage URL; its objective is
named ``loss`` (Optuna's metric names, shown by optuna-dashboard).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from modelops_calabaria.backend.base import (  # noqa: F401  (re-exported: the names trials carry)
    BUSY_ATTR,
    COORDINATOR_ATTR,
    FAIL_REASON,
    JOB_ATTR,
    LOSS_ATTR_PREFIX,
    OBJECTIVE_NAME,
    RETRY_ATTR,
    TARGETS_ATTR,
    StudyBackend,
)
from modelops_calabaria.calibration.provenance import on_study_created
from modelops_calabaria.calibration.scales import with_scales
from modelops_calabaria.dbretry import retry_db
from modelops_calabaria.errors import JobSpecError, StudyMismatchError
from modelops_calabaria.job import CalibrationJob, ParameterSpec
from modelops_calabaria.job.parameters import natural_to_logit
from modelops_calabaria.logging import get_logger
from modelops_calabaria.posterior import build_posterior_sampler

log = get_logger(__name__)



def to_distribution(spec: ParameterSpec) -> BaseDistribution:
    """The Optuna distribution of one parameter spec."""
    if spec.kind == "categorical":
        return CategoricalDistribution(list(spec.choices or []))
    if spec.kind == "int":
        return IntDistribution(int(spec.lower), int(spec.upper), log=spec.log, step=int(spec.step or 1))  # type: ignore[arg-type]
    return FloatDistribution(float(spec.lower), float(spec.upper), log=spec.log, step=spec.step)  # type: ignore[arg-type]


def distributions(job: CalibrationJob) -> dict[str, BaseDistribution]:
    """The job's search space, in declaration order."""
    return {name: to_distribution(spec) for name, spec in job.parameters.items()}


def _grid(job: CalibrationJob, options: dict[str, Any]) -> dict[str, list[Any]]:
    points = int(options.pop("points", 5))
    explicit = options.pop("grid", {}) or {}
    space: dict[str, list[Any]] = {}
    for name, spec in job.parameters.items():
        if name in explicit:
            space[name] = list(explicit[name])
        elif spec.kind == "categorical":
            space[name] = list(spec.choices or [])
        elif spec.kind == "int":
            values = np.unique(np.round(np.linspace(spec.lower, spec.upper, points)).astype(int))  # type: ignore[arg-type]
            space[name] = [int(v) for v in values]
        elif spec.logit:  # the wrapped grid sampler sees the logit scale (scales.py)
            space[name] = [float(v) for v in np.linspace(natural_to_logit(spec, spec.lower), natural_to_logit(spec, spec.upper), points)]  # type: ignore[arg-type]
        else:
            lo, hi = float(spec.lower), float(spec.upper)  # type: ignore[arg-type]
            grid = np.geomspace(lo, hi, points) if spec.log else np.linspace(lo, hi, points)
            space[name] = [float(v) for v in grid]
    for name in explicit:
        if job.parameters[name].logit:
            space[name] = [natural_to_logit(job.parameters[name], float(v)) for v in space[name]]
    return space


def tpe_startup_trials(concurrency: int) -> int:
    """TPE's random start-up for ``concurrency`` trials at once: ``max(1, 11 - concurrency)``.

    Optuna counts only finished trials toward ``n_startup_trials``, so with c trials in
    flight about ``n_startup_trials + c - 1`` points are drawn at random before TPE's
    first model: 10 for one loop, 25 for 16 loops with Optuna's default of 10. This
    keeps it at 10 (or c when c > 10). Measured in docs/quality.md.
    """
    return max(1, 11 - max(1, concurrency))


def build_sampler(job: CalibrationJob, concurrency: int | None = None) -> optuna.samplers.BaseSampler:
    """The job's sampler, seeded with the job seed, for ``concurrency`` trials at once
    (default: the job's ``concurrency``, else 1); wrapped in ``scales.LogitSearch`` when a
    parameter has ``transform: logit`` (a posterior's IMIS has its own scale: prior.py).

    Raises:
        JobSpecError: an unknown option, or a sampler whose extra dependency is missing.
    """
    if job.posterior is not None:  # a posterior run: IMIS, whatever 'sampler' says (docs/posterior.md)
        return build_posterior_sampler(job)
    return with_scales(job, _build_sampler(job, concurrency))


def _build_sampler(job: CalibrationJob, concurrency: int | None) -> optuna.samplers.BaseSampler:
    name = job.sampler.name
    options = dict(job.sampler.options)
    seed = job.seed
    try:
        if name == "tpe":
            options.setdefault("constant_liar", True)  # parallel asks would otherwise sample near-duplicates
            options.setdefault("multivariate", True)
            options.setdefault("n_startup_trials", tpe_startup_trials(concurrency or job.concurrency or 1))
            return optuna.samplers.TPESampler(seed=seed, **options)
        if name == "gp":
            try:
                import torch  # noqa: F401
            except ImportError:
                raise JobSpecError("sampler 'gp' needs PyTorch", problems=[("sampler.name", "run `pip install torch`, or choose tpe")]) from None
            return optuna.samplers.GPSampler(seed=seed, **options)
        if name == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, **options)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed, **options)
        if name == "qmc":
            options.setdefault("qmc_type", "sobol")
            return optuna.samplers.QMCSampler(seed=seed, **options)
        if name == "grid":
            return optuna.samplers.GridSampler(_grid(job, options), seed=seed, **options)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, **options)
    except TypeError as e:
        raise JobSpecError(f"sampler {name!r} rejected its options: {e}", problems=[("sampler.options", f"see Optuna's {name} sampler for valid options")]) from e
    raise JobSpecError(f"unknown sampler {name!r}", problems=[("sampler.name", "one of tpe, gp, cmaes, random, qmc, grid, nsga2")])


def _space_of(stored: Mapping[str, Any]) -> dict[str, Any]:
    # A starting guess is not part of the space: changing it must not block a resume.
    params = {name: {k: v for k, v in (spec or {}).items() if k != "guess"}
              for name, spec in (stored.get("parameters") or {}).items()}
    return {"parameters": params, "direction": stored.get("direction")}


def open_study(job: CalibrationJob, backend: StudyBackend, stored_job: dict[str, Any],
               sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """Create the study, or load it and check that it was made by the same kind of job.

    Raises:
        StudyMismatchError: the study exists with another parameter space or direction.
    """
    existing = retry_db("study lookup", lambda: backend.stored_job(job.study))
    if existing is not None:
        if existing:
            check_same_space(job, json.loads(existing), stored_job)
        return optuna.load_study(study_name=job.study, storage=backend.optuna_storage, sampler=sampler)
    study = retry_db(
        "study creation",
        lambda: optuna.create_study(study_name=job.study, storage=backend.optuna_storage, sampler=sampler, direction=job.direction,
                                    load_if_exists=True),
    )
    existing = retry_db("study load", lambda: backend.stored_job(job.study))
    if existing:  # another process created it a moment before us
        check_same_space(job, json.loads(existing), stored_job)
    else:
        study_id = retry_db("study lookup", lambda: backend.study_id(job.study))
        retry_db("store job", lambda: backend.store_job(study_id, json.dumps(stored_job)))
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2, and the dashboard reads it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry_db("store job", lambda: study.set_metric_names([OBJECTIVE_NAME]))
        on_study_created(study, backend, job, stored_job)  # fingerprint + starting points, once, by the creator
    return study


def check_same_space(job: CalibrationJob, existing: Mapping[str, Any], stored_job: Mapping[str, Any]) -> None:
    """Raise StudyMismatchError naming each field where the study and the job differ."""
    old, new = _space_of(existing), _space_of(stored_job)
    if old == new:
        return
    diffs = []
    old_p, new_p = old["parameters"], new["parameters"]
    for name in sorted(set(old_p) | set(new_p)):
        if name not in old_p or name not in new_p:
            diffs.append(f"parameters.{name}: {'only in the job' if name in new_p else 'only in the study'}")
            continue
        for key in sorted(set(old_p[name]) | set(new_p[name])):
            if old_p[name].get(key) != new_p[name].get(key):
                diffs.append(f"parameters.{name}.{key}: study has {old_p[name].get(key)!r}, job has {new_p[name].get(key)!r}")
    if old["direction"] != new["direction"]:
        diffs.append(f"direction: study has {old['direction']}, job has {new['direction']}")
    raise StudyMismatchError(
        f"study '{job.study}' already exists with a different search space:\n  " + "\n  ".join(diffs),
        hint="use a new study name, or restore the original parameters to resume it",
    )


def stored_job_of(study_name: str, backend: StudyBackend) -> dict[str, Any] | None:
    """The job spec stored with a study, or None if the study does not exist."""
    raw = retry_db("study load", lambda: backend.stored_job(study_name))
    if raw is None:
        return None
    return json.loads(raw) if raw else {}
