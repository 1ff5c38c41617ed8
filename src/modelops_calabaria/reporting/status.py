"""``calabaria status``: what a study holds and who is working on it."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import optuna

from modelops_calabaria.backend.ledger import open_ledger
from modelops_calabaria.calibration.study import stored_job_of
from modelops_calabaria.dbretry import retry_db
from modelops_calabaria.errors import StudyNotFoundError
from modelops_calabaria.reporting.results import best_trial, state_counts
from modelops_calabaria.settings import Settings
from modelops_calabaria.backend.factory import open_optuna_storage
from modelops_calabaria.storage import parse_storage_url


def study_status(study_name: str, storage_url: str, *, grace_s: float | None = None, window_s: float = 600.0) -> dict[str, Any]:
    """A JSON-able summary of a study (no password in it).

    Raises:
        StudyNotFoundError: no such study in the storage.
    """
    target = parse_storage_url(storage_url)
    missing_file = target.path is not None and not target.path.exists()
    if missing_file or stored_job_of(study_name, storage := open_optuna_storage(target, 1)) is None:
        raise StudyNotFoundError(f"study '{study_name}' does not exist in {target.display}",
                                 hint="check the name (`optuna studies --storage URL` lists them)")
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = retry_db("status", lambda: study.get_trials(deepcopy=False))
    best = best_trial(study)
    cutoff = dt.datetime.now() - dt.timedelta(seconds=window_s)
    recent = [t for t in trials if t.datetime_complete and t.datetime_complete >= cutoff]
    ledger = open_ledger(target, 1)
    try:
        claimed, max_trials = ledger.budget(study_name)
        grace = grace_s if grace_s is not None else Settings().grace_period_s
        now = time.time()
        coords = [
            {"id": c.coordinator_id, "host": c.host, "pid": c.pid, "seconds_ago": round(now - c.last_seen, 1)}
            for c in ledger.coordinators(study_name) if now - c.last_seen <= grace
        ]
    finally:
        ledger.close()
    return {
        "study": study_name,
        "storage": target.display,
        "trials": state_counts(trials),
        "budget": {"claimed": claimed, "max_trials": max_trials},
        "best_loss": float(best.value) if best and best.value is not None else None,
        "best_params": dict(best.params) if best else None,
        "best_trial": best.number if best else None,
        "trials_per_minute": round(len(recent) / (window_s / 60), 2),
        "coordinators": coords,
    }
