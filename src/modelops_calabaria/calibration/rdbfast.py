"""Trial creation on Optuna's relational schema with a short critical section.

Optuna's ``RDBStorage`` creates a trial holding the study row lock (``SELECT …
FOR UPDATE``) across about a dozen ORM statements, so every trial creation of
every coordinator is serialised behind it: measured here, asks queued for ~0.5 s
with 16 loops on PostgreSQL. This module writes the same rows with SQLAlchemy
Core on Optuna's own table objects, and holds the lock for three short statements instead of a dozen ORM ones:

1. lock the study row (as Optuna does, so both paths can mix);
2. insert the trial with ``number = max(number) + 1`` (dense, and consistent
   with Optuna's numbering, which counts earlier trials), its parameters and
   its system attributes;
3. commit.

Only parameters from the job's fixed search space are written (checked at
start against the study's stored job), so Optuna's per-parameter distribution
compatibility queries are not needed.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import TrialState

_STUDIES = models.StudyModel.__table__
_TRIALS = models.TrialModel.__table__
_PARAMS = models.TrialParamModel.__table__
_SYSTEM_ATTRS = models.TrialSystemAttributeModel.__table__


def create_running_trial(storage: RDBStorage, study_id: int, params: Mapping[str, Any],
                         distributions: Mapping[str, BaseDistribution], system_attrs: Mapping[str, Any]) -> tuple[int, int]:
    """Insert a RUNNING trial with ``params`` and ``system_attrs``; return ``(number, trial_id)``."""
    next_number = (
        sa.select(sa.func.coalesce(sa.func.max(_TRIALS.c.number) + 1, 0))
        .where(_TRIALS.c.study_id == study_id)
        .scalar_subquery()
    )
    with storage.engine.begin() as c:
        # The study row lock first, as Optuna takes it: numbering is serialised, and
        # taking it after the trial insert (whose foreign key share-locks the study row)
        # would deadlock between coordinators.
        c.execute(sa.select(_STUDIES.c.study_id).where(_STUDIES.c.study_id == study_id).with_for_update())
        trial_id, number = c.execute(
            _TRIALS.insert()
            .values(study_id=study_id, number=next_number, state=TrialState.RUNNING, datetime_start=dt.datetime.now())
            .returning(_TRIALS.c.trial_id, _TRIALS.c.number)
        ).one()
        if params:
            c.execute(_PARAMS.insert(), [
                {"trial_id": trial_id, "param_name": name, "param_value": distributions[name].to_internal_repr(value),
                 "distribution_json": distribution_to_json(distributions[name])}
                for name, value in params.items()
            ])
        if system_attrs:
            c.execute(_SYSTEM_ATTRS.insert(), [
                {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in system_attrs.items()
            ])
    return int(number), int(trial_id)


_VALUES = models.TrialValueModel.__table__
_USER_ATTRS = models.TrialUserAttributeModel.__table__


def finish_trial(storage: RDBStorage, trial_id: int, state: TrialState, value: float | None,
                 user_attr: tuple[str, Any]) -> bool:
    """Finish a RUNNING trial in one transaction: state, value and one user attribute.

    Returns False (and writes nothing) when the trial was already finished
    elsewhere, e.g. recovered as stale: the first word stands.
    """
    with storage.engine.begin() as c:
        finished = c.execute(
            _TRIALS.update()
            .where(_TRIALS.c.trial_id == trial_id, _TRIALS.c.state == TrialState.RUNNING)
            .values(state=state, datetime_complete=dt.datetime.now())
            .returning(_TRIALS.c.trial_id)
        ).first()
        if finished is None:
            return False
        if value is not None:
            stored, kind = models.TrialValueModel.value_to_stored_repr(value)
            c.execute(_VALUES.insert().values(trial_id=trial_id, objective=0, value=stored, value_type=kind))
        key, attr = user_attr
        c.execute(_USER_ATTRS.insert().values(trial_id=trial_id, key=key, value_json=json.dumps(attr)))
    return True
