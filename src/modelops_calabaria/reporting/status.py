"""``calabaria status``: what a study holds and who is working on it. Reads only: never writes."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import optuna

from modelops_calabaria.backend.base import StudyBackend
from modelops_calabaria.backend.factory import open_store
from modelops_calabaria.dbretry import retry_db
from modelops_calabaria.errors import ConfigurationError, StudyNotFoundError
from modelops_calabaria.redaction import MASK
from modelops_calabaria.reporting.best import read_stored, study_best
from modelops_calabaria.reporting.results import state_counts
from modelops_calabaria.storage import parse_storage_url

DEFAULT_GRACE_S = 60.0  # Settings.grace_period_s's default, when the caller passes none


def locate_run(run_dir: Path, storage_url: str | None) -> tuple[str, str]:
    """``(study name, storage URL)`` of the run written to ``run_dir``: its results.json names the
    study; the storage is ``storage_url`` if given, else the run's study.db, else results.json's.

    Raises:
        ConfigurationError: not a run directory, or its storage URL had a password (masked there).
    """
    results = run_dir / "results.json"
    if not results.is_file():
        raise ConfigurationError(f"{run_dir} holds no results.json: not a run directory",
                                 hint="pass a run directory (runs/STUDY), or --study NAME --storage URL")
    try:
        info = json.loads(results.read_text())
        study = str(info["study"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigurationError(f"cannot read the study name from {results}: {e}",
                                 hint="pass --study NAME --storage URL") from None
    if storage_url:
        return study, storage_url
    if (run_dir / "study.db").is_file():
        return study, f"sqlite:///{(run_dir / 'study.db').resolve()}"
    recorded = str(info.get("storage") or "")
    if not recorded or MASK in recorded or recorded == "memory":
        raise ConfigurationError(f"the run in {run_dir} used a storage that cannot be reopened from its results",
                                 hint="pass --storage URL (or set CALABARIA_STORAGE)")
    return study, recorded


def study_status(study_name: str, storage_url: str, *, grace_s: float | None = None, window_s: float = 600.0) -> dict[str, Any]:
    """A JSON-able summary of a study (no password in it). Creates nothing in the storage.

    ``trials_per_minute`` counts the trials finished in the last ``window_s``
    seconds, divided by that window, or by the time since the first trial
    started if the study is younger.

    Raises:
        StudyNotFoundError: no such study (or no study storage at all) there.
    """
    target = parse_storage_url(storage_url)
    try:
        backend = open_store(target, 1, read_only=True)
    except StudyNotFoundError as e:
        raise StudyNotFoundError(f"study '{study_name}' does not exist in {target.display}: {e}",
                                 hint="check the name and the storage (`optuna studies --storage URL` lists studies)") from None
    try:
        return _summary(study_name, target.display, backend, grace_s if grace_s is not None else DEFAULT_GRACE_S, window_s)
    finally:
        backend.close()


def _summary(study_name: str, display: str, backend: StudyBackend, grace_s: float, window_s: float) -> dict[str, Any]:
    if retry_db("status", lambda: backend.stored_job(study_name)) is None:
        raise StudyNotFoundError(f"study '{study_name}' does not exist in {display}",
                                 hint="check the name (`optuna studies --storage URL` lists them)")
    study = optuna.load_study(study_name=study_name, storage=backend.optuna_storage)
    trials = retry_db("status", lambda: study.get_trials(deepcopy=False))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    best, selection = study_best(trials, read_stored(backend, backend.study_id(study_name)), maximize)
    now_dt = dt.datetime.now()
    cutoff = now_dt - dt.timedelta(seconds=window_s)
    recent = [t for t in trials if t.datetime_complete and t.datetime_complete >= cutoff]
    starts = [t.datetime_start for t in trials if t.datetime_start]
    window = min(window_s, (now_dt - min(starts)).total_seconds()) if starts else window_s
    ledger = backend.ledger
    claimed, max_trials = ledger.budget(study_name)
    now = time.time()
    coords = [
        {"id": c.coordinator_id, "host": c.host, "pid": c.pid, "seconds_ago": round(now - c.last_seen, 1)}
        for c in ledger.coordinators(study_name) if now - c.last_seen <= grace_s
    ]
    return {
        "study": study_name,
        "storage": display,
        "trials": state_counts(trials),
        "budget": {"claimed": claimed, "max_trials": max_trials},
        "best_loss": float(best.value) if best and best.value is not None else None,
        "best_params": dict(best.params) if best else None,
        "best_trial": best.number if best else None,
        # the end-of-run re-evaluation's choice for these very trials, else the in-sample best (reporting/best.py)
        "best_chosen_by": (selection or {}).get("selected_by", "in_sample") if best else None,
        "trials_per_minute": round(len(recent) / (max(window, 1.0) / 60), 2),
        "rate_window_s": round(window, 1),
        "coordinators": coords,
    }
