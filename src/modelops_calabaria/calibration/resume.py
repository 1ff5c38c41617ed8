"""Resuming and joining a study: the read-only look before anything starts, the budget, the stored job.

:func:`check_existing_study` looks at an existing study read-only (it creates nothing)
and refuses a job whose space, model or data differ; it also says whether anything
is left to run. :func:`set_budget` sets the study's budget when a coordinator starts;
:func:`load_joined_job` reads the job a ``worker`` joins.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from modelops_calabaria import __version__
from modelops_calabaria.backend.base import StudyBackend
from modelops_calabaria.backend.factory import open_store
from modelops_calabaria.backend.probe import check_writable
from modelops_calabaria.backend.ledger import Ledger
from modelops_calabaria.calibration import provenance
from modelops_calabaria.calibration.prepare import Prepared, RunOptions
from modelops_calabaria.calibration.startup import nothing_to_run, study_state_key
from modelops_calabaria.calibration.study import check_same_space, stored_job_of
from modelops_calabaria.errors import ConfigurationError, StudyNotFoundError
from modelops_calabaria.job import MAX_TRIALS, CalibrationJob, check_same_model, job_from_dict
from modelops_calabaria.logging import get_logger
from modelops_calabaria.settings import Settings
from modelops_calabaria.storage import StorageTarget

log = get_logger(__name__)


@dataclass(frozen=True)
class ExistingStudy:
    """What the read-only look at the study found: whether it has nothing left to run for
    this run's options (:func:`.startup.nothing_to_run`), and then its state key
    (:func:`.startup.study_state_key`)."""

    idle: bool = False
    state_key: str | None = None


def check_existing_study(p: Prepared, accept_changes: bool = False, options: RunOptions | None = None) -> ExistingStudy:
    """If the study already exists, check that this job has its search space and that
    its observed data and model did not change (creates no study); if it does not, that
    ``--extend`` keeps its first budget within the limit. Say whether the study has
    nothing left to run for ``options`` (never without ``options`` or without a study).

    Raises:
        StudyMismatchError: another parameter space or direction, or changed inputs
            (unless ``accept_changes``).
        ConfigurationError: a fresh study's budget plus ``extend`` over MAX_TRIALS.
    """
    extend = options.extend if options else None
    fresh_budget = ((options.max_trials if options else None) or p.job.max_trials) + (extend or 0)  # _set_budget's
    if p.storage.kind == "memory":
        _check_extended(fresh_budget, extend)
        return ExistingStudy()
    check_writable(p.storage)  # a read-only PostgreSQL session is refused before anything is created
    try:
        backend = open_store(p.storage, 1, read_only=True)  # creates nothing
    except StudyNotFoundError:
        _check_extended(fresh_budget, extend)
        return ExistingStudy()
    try:
        stored = stored_job_of(p.job.study, backend)
        if not stored:
            _check_extended(fresh_budget, extend)
            return ExistingStudy()
        storable = p.stored
        check_same_space(p.job, stored, storable)
        check_same_model(p.job.study, stored.get("model"), p.model_ref)
        provenance.check_unchanged(p.job.study, backend, storable, accept_changes)
        if options is None:
            return ExistingStudy()
        claimed, stored_max = backend.ledger.budget(p.job.study)
        cols = backend.trial_columns(backend.study_id(p.job.study))
        if not nothing_to_run(cols.state, claimed=claimed, stored_max=stored_max,
                              wanted=options.max_trials or p.job.max_trials, extend=options.extend,
                              joining=options.joining):
            return ExistingStudy()
        return ExistingStudy(True, study_state_key(storable, p.storage.display, __version__, cols.number,
                                                   cols.state, cols.value))
    finally:
        backend.close()


def set_budget(study: optuna.Study, ledger: Ledger, job: CalibrationJob, settings: Settings,
               max_trials: int | None, extend: int | None, joining: bool) -> tuple[int, int, list[FrozenTrial]]:
    """Set the study's budget and read the study once: ``(budget, claimed, trials)``.

    A joining worker keeps the budget; ``calibrate`` sets it to ``max_trials`` (flag, else
    job) or, with ``extend``, adds to the stored one. ``trials`` is the one read of the
    whole study a coordinator makes at its start; ``claimed`` was read just before it.
    """
    name = study.study_name
    wanted = max_trials or job.max_trials
    stored_max = ledger.ensure_budget(name, wanted)
    # Read in this order: claims, trials, coordinators. A coordinator beats before it
    # claims, so one that claimed before the first read shows up in the last; one that
    # claims later changes `claimed`, and the compare-and-set below then does nothing.
    claimed, _ = ledger.budget(name)
    trials = study.get_trials(deepcopy=False)
    if joining:
        return stored_max, claimed, trials
    n_trials = sum(t.state != TrialState.WAITING for t in trials)  # enqueued starts are not asked yet
    new_max = max(stored_max, n_trials) + extend if extend else wanted
    _check_extended(new_max, extend)
    if new_max != stored_max:
        ledger.set_max_trials(name, new_max)
    # Claims that never became trials (a coordinator killed between claim and ask) are
    # given back when nobody else is working on the study.
    live = [c for c in ledger.coordinators(name) if time.time() - c.last_seen <= settings.grace_period_s]
    if not live and claimed != n_trials:
        ledger.reconcile(name, n_trials, expected_claimed=claimed)
    return new_max, claimed, trials


def _check_extended(new_max: int, extend: int | None) -> None:
    if extend and new_max > MAX_TRIALS:
        raise ConfigurationError(f"--extend {extend} would raise the study's budget to {new_max:,}, more than {MAX_TRIALS:,}",
                                 hint="start a new study, or extend by less")


def load_joined_job(study_name: str, target: StorageTarget, wait_s: float, poll_s: float = 1.0) -> CalibrationJob:
    """The job stored with ``study_name``, waiting up to ``wait_s`` for the study to appear.

    Raises:
        StudyNotFoundError: the study still does not exist after ``wait_s``.
    """
    deadline = time.monotonic() + wait_s
    announced = False
    backend: StudyBackend | None = None
    try:
        while True:
            stored = None
            if backend is None:
                try:
                    backend = open_store(target, 1, read_only=True)  # never create a study file by waiting for one
                except StudyNotFoundError:
                    backend = None
            if backend is not None:
                stored = stored_job_of(study_name, backend)
            if stored:
                return job_from_dict(stored, source=f"job stored with study '{study_name}'")
            if time.monotonic() >= deadline:
                raise StudyNotFoundError(
                    f"study '{study_name}' does not exist in {target.display} (waited {wait_s:g} s)",
                    hint="start it with `calabaria calibrate JOB --storage URL`, or raise --wait",
                )
            if not announced:
                log.info("waiting for the study to be created", study=study_name, storage=target.display, wait_s=wait_s)
                announced = True
            time.sleep(poll_s)  # the study lives in another process's database: nothing to subscribe to
    finally:
        if backend is not None:
            backend.close()
