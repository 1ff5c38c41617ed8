"""A posterior study's outputs: the weighted sample, posterior.csv, and results.json's ``posterior``."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from modelops_calabaria.dbretry import retry_db
from modelops_calabaria.job import CalibrationJob
from modelops_calabaria.posterior.prior import joint_prior
from modelops_calabaria.posterior.records import WeightedSample, weigh
from modelops_calabaria.posterior.summary import summarise


def _read(storage: optuna.storages.BaseStorage, sid: int) -> tuple[list[FrozenTrial], dict[str, Any]]:
    """Every trial of the study and its system attributes (the IMIS records)."""
    attrs = retry_db("posterior records", lambda: storage.get_study_system_attrs(sid))
    trials = retry_db("posterior trials", lambda: storage.get_all_trials(sid, deepcopy=False))
    return trials, attrs


def study_sample(job: CalibrationJob, storage: optuna.storages.BaseStorage, study_id: int) -> WeightedSample:
    """The weighted sample of the posterior study ``study_id`` in ``storage``, read from the study alone."""
    trials, attrs = _read(storage, study_id)
    return weigh(joint_prior(job.parameters), trials, attrs)


def posterior_summary(job: CalibrationJob, sample: WeightedSample, n_simulations: int) -> dict[str, Any]:
    """results.json's ``posterior``: method, ESS, counts, per-parameter summaries, correlation."""
    names = list(job.parameters)
    out: dict[str, Any] = {
        "method": job.posterior.method if job.posterior else "imis",
        "ess": round(sample.ess, 2),
        "n_trials": len(sample.numbers),
        "n_simulations": n_simulations,
        "n_components": sample.n_components,
        "unrecorded_trials": sample.unrecorded,
        "tempered": any(t.weight != 1 for t in job.targets),
    }
    if sample.numbers:
        out.update(summarise(names, sample.x, sample.weights))
    else:
        out.update({"parameters": {}, "correlation": {}})
    return out


def posterior_csv(job: CalibrationJob, sample: WeightedSample) -> str:
    """One row per weighted trial: ``trial``, each parameter, ``weight`` (sums to 1)."""
    names = list(job.parameters)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial", *names, "weight"])
    for i, number in enumerate(sample.numbers):
        w.writerow([number, *[repr(float(v)) for v in sample.x[i]], repr(float(sample.weights[i]))])
    return buf.getvalue()


def write_posterior(out_dir: Path, job: CalibrationJob, storage: optuna.storages.BaseStorage,
                    study_id: int) -> dict[str, Any]:
    """Write ``posterior.csv`` into ``out_dir``; return results.json's ``posterior``."""
    trials, attrs = _read(storage, study_id)
    sample = weigh(joint_prior(job.parameters), trials, attrs)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "posterior.csv"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(posterior_csv(job, sample), encoding="utf-8")
    os.replace(tmp, path)
    n_told = sum(1 for t in trials if t.state.is_finished())
    return posterior_summary(job, sample, n_told * job.n_replicates)
