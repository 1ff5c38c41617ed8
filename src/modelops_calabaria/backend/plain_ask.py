"""Optuna's ``study.ask``, in retried steps, on the shared storage (the plain, non-mirrored path).

Kept here, with the rest of what knows Optuna's internals: Optuna has no public
call that creates a trial with owner attributes and then samples it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, Trial, TrialState

from modelops_calabaria.backend.base import StudyBackend
from modelops_calabaria.dbretry import retry_db


def ask_plain(study: optuna.Study, backend: StudyBackend, study_id: int, space: Mapping[str, BaseDistribution],
              owner_attrs: Mapping[str, Any]) -> tuple[Trial, int]:
    """``(trial, trial id)``: a RUNNING trial with sampled parameters and ``owner_attrs``: an enqueued trial first (as
    ``study.ask`` does, each taken once), else a new one.

    Each step is retried on its own, so that a database restart between creating
    the trial and sampling its parameters resumes on the same trial instead of
    leaving an orphan RUNNING trial behind.
    """
    popped = retry_db("ask", lambda: backend.pop_waiting(study_id, owner_attrs))
    if popped is not None:
        trial_id = popped.trial_id
    else:
        template = FrozenTrial(
            number=-1, state=TrialState.RUNNING, value=None, datetime_start=None, datetime_complete=None,
            params={}, distributions={}, user_attrs={}, system_attrs=dict(owner_attrs), intermediate_values={},
            trial_id=-1,
        )
        # Optuna creates this trial, outside the backend: its budget claim is spent just before.
        retry_db("ask", lambda: backend.spend_claim(study_id, owner_attrs))
        trial_id = retry_db("ask", lambda: study._storage.create_new_trial(study_id, template_trial=template))
    study._thread_local.cached_all_trials = None  # as study.ask does: see other processes' trials
    trial = retry_db("ask", lambda: Trial(study, trial_id))  # runs the sampler's relative sampling
    for name, dist in space.items():
        retry_db("ask", lambda name=name, dist=dist: trial._suggest(name, dist))  # an enqueued value wins
    return trial, trial_id
