"""A posterior study's outputs: the weighted sample, posterior.csv, and results.json's ``posterior``."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial

from modelops_calabaria.backend.base import StudyBackend
from modelops_calabaria.dbretry import retry_db
from modelops_calabaria.job import CalibrationJob
from modelops_calabaria.logging import get_logger
from modelops_calabaria.posterior.diagnostics import diagnose, ess_by_stage, shown
from modelops_calabaria.posterior.prior import joint_prior
from modelops_calabaria.posterior.records import WeightedSample, weigh
from modelops_calabaria.posterior.summary import summarise

log = get_logger(__name__)
STAGE_POINTS = 20  # at most this many prefixes of the study for the ESS-by-stage table


def _read(backend: StudyBackend, sid: int) -> tuple[list[FrozenTrial], dict[str, Any]]:
    """Every trial of the study and its system attributes (the IMIS records)."""
    attrs = retry_db("posterior records", lambda: backend.study_attrs(sid))
    trials = retry_db("posterior trials", lambda: backend.trials(sid))
    return trials, attrs


def study_sample(job: CalibrationJob, backend: StudyBackend, study_id: int) -> WeightedSample:
    """The weighted sample of the posterior study ``study_id`` in ``backend``, read from the study alone."""
    trials, attrs = _read(backend, study_id)
    return weigh(joint_prior(job.parameters), trials, attrs)


def posterior_summary(job: CalibrationJob, sample: WeightedSample, n_simulations: int,
                      stages: list[dict[str, float]] | None = None) -> dict[str, Any]:
    """results.json's ``posterior``: method, ESS, counts, per-parameter summaries (each with
    its Monte Carlo standard errors), correlation, ``diagnostics`` and their ``warnings``.

    ``n_simulations`` counts the model runs of the study's trials; :func:`count_reevaluation`
    adds the end-of-run re-evaluation's (``simulations`` itemises them)."""
    names = list(job.parameters)
    out: dict[str, Any] = {
        "method": job.posterior.method if job.posterior else "imis",
        "ess": round(sample.ess, 2),
        "n_trials": len(sample.numbers),
        "n_draws": sample.n_draws,
        "n_simulations": n_simulations,
        "simulations": {"trials": n_simulations, "reevaluation": 0},
        "n_components": sample.n_components,
        "unrecorded_trials": sample.unrecorded,
        "tempered": any(t.weight != 1 for t in job.targets),
    }
    if sample.numbers and sample.weights.any():
        out.update(summarise(names, sample.x, sample.weights))
    else:  # nothing weighed, or every likelihood estimate 0 (uBSL far from the data): no summary to give
        out.update({"parameters": {}, "correlation": {}})
    logw = sample.logw if sample.logw is not None else np.log(np.maximum(sample.weights, 1e-300))
    diag = diagnose(names, sample.x, logw, sample.weights)
    for name, errors in diag.pop("mcse").items():
        out["parameters"][name]["mcse"] = {k: _sig(v) for k, v in errors.items()}
    diag["ess"], diag["max_weight"] = round(diag["ess"], 2), round(diag["max_weight"], 4)
    diag["pareto_k"] = round(diag["pareto_k"], 3) if np.isfinite(diag["pareto_k"]) else str(diag["pareto_k"])
    diag["ess_by_stage"] = stages or []
    out["diagnostics"] = diag
    out["warnings"] = diag.pop("warnings")
    if sample.numbers and not sample.weights.any():
        out["warnings"].insert(0, f"posterior not reliable: every one of {len(sample.numbers)} trials has a likelihood "
                                  "estimate of 0 (no summary)")
    return out


def _sig(v: float) -> float:
    return float(f"{v:.3g}")


def count_reevaluation(posterior: dict[str, Any], selection: dict[str, Any] | None) -> dict[str, Any]:
    """Add the end-of-run re-evaluation's model runs (``selection`` as results.json has it) to
    ``posterior["n_simulations"]`` and ``posterior["simulations"]["reevaluation"]``."""
    if not selection:
        return posterior
    runs = len(selection.get("reevaluated", [])) * int(selection.get("replicates", 0))
    posterior["simulations"]["reevaluation"] = runs
    posterior["n_simulations"] = posterior["simulations"]["trials"] + runs
    return posterior


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """``name: median [lo, hi]`` per parameter, each to the precision its Monte Carlo error supports."""
    lines = []
    for name, v in summary.get("parameters", {}).items():
        e = v.get("mcse", {})
        lines.append(f"{name}: {shown(v['median'], e.get('median', 0.0))} "
                     f"[{shown(v['ci95'][0], e.get('q2.5', 0.0))}, {shown(v['ci95'][1], e.get('q97.5', 0.0))}]")
    return lines


def stage_ess(job: CalibrationJob, trials: list[FrozenTrial], attrs: dict[str, Any]) -> list[dict[str, float]]:
    """The ESS of the study's first n trials (by number) for up to :data:`STAGE_POINTS` values of n:
    whether more trials are still raising it."""
    prior = joint_prior(job.parameters)
    ordered = sorted(trials, key=lambda t: t.number)
    n = len(ordered)
    if n == 0:
        return []
    step = max(job.posterior.per_stage if job.posterior else 1, -(-n // STAGE_POINTS))
    cuts = sorted({min(n, c) for c in range(step, n + step, step)})
    points = [(c, weigh(prior, ordered[:c], attrs).ess) for c in cuts]
    return ess_by_stage([c for c, _ in points], [e for _, e in points])


def posterior_csv(job: CalibrationJob, sample: WeightedSample) -> str:
    """One row per weighted trial: ``trial``, each parameter, ``weight`` (sums to 1)."""
    names = list(job.parameters)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial", *names, "weight"])
    for i, number in enumerate(sample.numbers):
        w.writerow([number, *[repr(float(v)) for v in sample.x[i]], repr(float(sample.weights[i]))])
    return buf.getvalue()


def write_posterior(out_dir: Path, job: CalibrationJob, backend: StudyBackend, study_id: int) -> dict[str, Any]:
    """Write ``posterior.csv`` (and with ``posterior.arviz``, ``posterior.nc``) into ``out_dir``;
    return results.json's ``posterior``."""
    trials, attrs = _read(backend, study_id)
    sample = weigh(joint_prior(job.parameters), trials, attrs)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "posterior.csv"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(posterior_csv(job, sample), encoding="utf-8")
    os.replace(tmp, path)
    if job.posterior is not None and job.posterior.arviz:
        from modelops_calabaria.posterior.export import inference_data, write_netcdf
        from modelops_calabaria.targets.data import load_observed

        observed = {t.name: load_observed(t, job.base_dir, f"targets[{i}].data").values for i, t in enumerate(job.targets)}
        write_netcdf(out_dir / "posterior.nc", inference_data(job, sample, observed, seed=job.seed))
    n_told = sum(1 for t in trials if t.state.is_finished())
    summary = posterior_summary(job, sample, n_told * job.n_replicates, stage_ess(job, trials, attrs))
    log.info("posterior", ess=summary["ess"], trials=summary["n_trials"], summary="; ".join(summary_lines(summary)))
    for line in summary["warnings"]:
        log.warning(line)
    return summary
