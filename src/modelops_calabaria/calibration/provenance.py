"""What a study was made from, and what it evaluates first.

- **Fingerprint.** When a study is created it records, as the study system
  attribute ``calabaria:fingerprint``, a hash of each target's observed data
  (the inline form stored with the study) and of the model: a file model's
  entrypoint and the SHA-256 of its file, an installed module's package
  version, a built-in's calabaria version. ``calibrate`` on an existing study
  compares and refuses (exit 2) when the data or the model changed, unless the
  changes are accepted explicitly (``--accept-changes``), which records the new
  fingerprint and job.
- **Starting points.** ``start:`` points and parameter ``guess`` values are
  enqueued with Optuna's public ``Study.enqueue_trial`` once, by the process
  that creates the study (under the schema lock), so every coordinator that
  joins asks them first and exactly once.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Mapping
from typing import Any

import optuna

from modelops_calabaria import __version__
from modelops_calabaria.backend.base import StudyBackend
from modelops_calabaria.dbretry import retry_db
from modelops_calabaria.callables import is_session, source_digest
from modelops_calabaria.errors import StudyMismatchError
from modelops_calabaria.job import CalibrationJob
from modelops_calabaria.logging import get_logger
from modelops_calabaria.models import BUILTINS, model_file

log = get_logger(__name__)

FINGERPRINT_ATTR = "calabaria:fingerprint"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_fingerprint(ref: str) -> dict[str, str]:
    """Identify the model's code: file hash, package version, or calabaria version for a built-in."""
    if ref in BUILTINS:
        return {"model": ref, "version": f"modelops-calabaria {__version__}"}
    if is_session(ref):  # a function defined in this session: its code
        return {"model": ref, "sha256": source_digest(ref)}
    path = model_file(ref)
    if path is not None:
        try:
            return {"model": ref, "sha256": _sha256(path.read_bytes())}
        except OSError:
            return {"model": ref, "sha256": "unreadable"}
    top = ref.rpartition(":")[0].split(".")[0]
    try:
        return {"model": ref, "version": f"{top} {importlib.metadata.version(top)}"}
    except importlib.metadata.PackageNotFoundError:
        dists = importlib.metadata.packages_distributions().get(top, [])
        versions = sorted(f"{d} {importlib.metadata.version(d)}" for d in dists)
        return {"model": ref, "version": ", ".join(versions) or "not an installed package"}


def fingerprint(stored_job: Mapping[str, Any]) -> dict[str, Any]:
    """The fingerprint of a job as stored with its study (model path absolute, data inline)."""
    data = {t["name"]: _sha256(json.dumps(_hashed_data(t), sort_keys=True, default=str).encode())
            for t in stored_job.get("targets", [])}
    return {"model": model_fingerprint(str(stored_job.get("model", ""))), "data": data}


def _hashed_data(target: Mapping[str, Any]) -> Any:
    """A stored target's data as its fingerprint hashes it: the index column of a target without
    keys under the name 'index', as studies stored it before the column kept its own name."""
    data, index = target.get("data"), target.get("index_column")
    if isinstance(data, Mapping) and target.get("on") is None and index and index != "index" and index in data:
        return {("index" if k == index else k): v for k, v in data.items()}
    return data


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints, one phrase each."""
    out = []
    if old.get("model") != new.get("model"):
        was, now = old.get("model", {}), new.get("model", {})
        if was.get("model") != now.get("model"):
            out.append(f"the model changed from {was.get('model')} to {now.get('model')}")
        else:
            what = "file" if "sha256" in now else "version"
            out.append(f"the model's {what} changed ({was.get('version') or was.get('sha256', '')[:12]} -> "
                       f"{now.get('version') or now.get('sha256', '')[:12]})")
    old_data, new_data = old.get("data", {}), new.get("data", {})
    for name in sorted(set(old_data) | set(new_data)):
        if name not in old_data:
            out.append(f"target '{name}' is new")
        elif name not in new_data:
            out.append(f"target '{name}' was removed")
        elif old_data[name] != new_data[name]:
            out.append(f"the observed data of target '{name}' changed")
    return out


def _study_attrs(backend: StudyBackend, study_name: str) -> tuple[int, dict[str, Any]] | None:
    try:
        study_id = retry_db("study lookup", lambda: backend.study_id(study_name))
    except KeyError:
        return None
    return study_id, retry_db("study load", lambda: backend.study_attrs(study_id))


def check_unchanged(study_name: str, backend: StudyBackend, stored_job: Mapping[str, Any], accept: bool) -> None:
    """Refuse to resume a study whose observed data or model changed (unless ``accept``).

    Raises:
        StudyMismatchError: (exit 2) naming every change and how to proceed.
    """
    found_study = _study_attrs(backend, study_name)
    if found_study is None:
        return
    raw = found_study[1].get(FINGERPRINT_ATTR)
    if raw is None:
        return  # a study made before fingerprints: nothing to compare with
    found = changes(raw, fingerprint(stored_job))
    if found and not accept:
        raise StudyMismatchError(
            f"study '{study_name}' was made with other inputs: {'; '.join(found)}",
            hint="use a new study name (or --output directory) to start afresh, or pass --accept-changes "
                 "to resume it with the new inputs (its earlier trials were scored against the old ones)",
        )
    if found:
        log.warning("resuming with changed inputs (--accept-changes)", study=study_name, changes=found)


def _record_fingerprint(backend: StudyBackend, study_id: int, stored_job: Mapping[str, Any]) -> None:
    value = fingerprint(stored_job)
    retry_db("store fingerprint", lambda: backend.set_study_attr(study_id, FINGERPRINT_ATTR, value))


def accept_changes(backend: StudyBackend, study_name: str, stored_job: Mapping[str, Any]) -> None:
    """Record the current job and fingerprint on the study (after ``--accept-changes``)."""
    study_id = retry_db("study lookup", lambda: backend.study_id(study_name))
    retry_db("store job", lambda: backend.store_job(study_id, json.dumps(stored_job)))
    _record_fingerprint(backend, study_id, stored_job)


def _enqueue_design(study: optuna.Study, job: CalibrationJob) -> None:
    from modelops_calabaria.sensitivity.design import POINT_ATTR, design_points

    points = design_points(job)
    for i, point in enumerate(points):
        retry_db("enqueue design", lambda p=point, i=i: study.enqueue_trial(p, user_attrs={POINT_ATTR: i}))
    log.info("sweep design enqueued", study=job.study, points=len(points))


def on_study_created(study: optuna.Study, backend: StudyBackend, job: CalibrationJob,
                     stored_job: Mapping[str, Any]) -> None:
    """Called once, by the creator of the study, under the schema lock: record the
    fingerprint and enqueue the starting points (both ask paths take them first, once:
    ``StudyBackend.pop_waiting``)."""
    _record_fingerprint(backend, retry_db("study lookup", lambda: backend.study_id(study.study_name)), stored_job)
    if job.sweep is not None:  # a sweep's trials are its design, row i carrying i (sensitivity/design.py)
        _enqueue_design(study, job)
        return
    points = job.starting_points()  # unique, and at most max_trials (the job refuses more)
    if points:
        # The study was just created by this process under the schema lock, so none is in it
        # yet: all at once (Study.enqueue_trial with skip_if_exists read every trial per point,
        # and committed once per point: 10,000 points took many minutes).
        study_id = retry_db("study lookup", lambda: backend.study_id(study.study_name))
        retry_db("enqueue start", lambda: backend.enqueue(study_id, points))
    if points:
        log.info("starting points enqueued", study=job.study, points=len(points))


def budget_note(n_trials: int, budget: int, failed: int) -> str | None:
    """What to tell a user whose resumed study has no budget left, or None."""
    if n_trials < budget:
        return None
    most_failed = f"; {failed} of them failed" if failed * 2 > n_trials else ""
    return (f"the study already holds {n_trials} trials of its budget of {budget}{most_failed}: nothing left to run; "
            f"add trials with --extend N (or raise --max-trials)")
