"""Trial creation and completion on Optuna's relational schema, in one short transaction each.

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

On PostgreSQL the same steps run inside one server-side function
(:data:`PG_CREATE_FUNCTION`, installed by :func:`install_pg_functions` when the
storage is opened) called in autocommit mode: one round trip, and the lock is
held only while the server runs it. Completing a trial is one function call
too (:data:`PG_FINISH_FUNCTION`). Holding it across client round trips let
16 loops queue behind a lock whose holder was itself waiting for the
coordinator's GIL between statements (ask p95 ~100 ms in the throughput
benchmark).

Only parameters from the job's fixed search space are written (checked at
start against the study's stored job), so Optuna's per-parameter distribution
compatibility queries are not needed.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
import sqlalchemy.exc
from optuna.distributions import BaseDistribution, distribution_to_json, json_to_distribution
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import TrialState

from modelops_calabaria.backend.base import (BUSY_ATTR, COORDINATOR_ATTR, FAIL_REASON, LOSS_ATTR_PREFIX, TARGETS_ATTR, PoppedTrial,
                                             StoredTrial, TrialColumns, columns_from_rows)
from modelops_calabaria.backend.generic import GenericBackend
from modelops_calabaria.backend.ledger import lost
from modelops_calabaria.backend.sql_ledger import SqlLedger, spend_claim
from modelops_calabaria.storage import StorageTarget

# The Optuna release this module was written against, and what it relies on in that
# release's schema (checked by tests/test_backend.py::test_optuna_schema_is_what_the_relational_backend_writes, against the installed Optuna
# and a real database).
WRITTEN_FOR_OPTUNA = "5.0.0"
OPTUNA_SCHEMA_VERSION = 12
OPTUNA_ALEMBIC_REVISION = "v3.2.0.a"
COLUMNS_USED = {
    "studies": {"study_id"},
    "trials": {"trial_id", "number", "study_id", "state", "datetime_start", "datetime_complete"},
    "trial_params": {"param_id", "trial_id", "param_name", "param_value", "distribution_json"},
    "trial_system_attributes": {"trial_id", "key", "value_json"},
    "trial_user_attributes": {"trial_id", "key", "value_json"},
    "trial_values": {"trial_id", "objective", "value", "value_type"},
}
ENUMS_USED = {
    "trialstate": {"RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING"},
    "trialvaluetype": {"FINITE", "INF_POS", "INF_NEG"},
}

_STUDIES = models.StudyModel.__table__
_TRIALS = models.TrialModel.__table__
_PARAMS = models.TrialParamModel.__table__
_SYSTEM_ATTRS = models.TrialSystemAttributeModel.__table__


# Statements are built once: building and cache-keying a Core expression costs more
# Python than executing it, on the coordinator's GIL, for every trial.
_LOCK_STUDY = sa.select(_STUDIES.c.study_id).where(_STUDIES.c.study_id == sa.bindparam("sid")).with_for_update()
_INSERT_TRIAL = (
    _TRIALS.insert()
    .values(
        study_id=sa.bindparam("sid"),
        number=sa.select(sa.func.coalesce(sa.func.max(_TRIALS.c.number) + 1, 0))
        .where(_TRIALS.c.study_id == sa.bindparam("sid"))
        .scalar_subquery(),
        state=sa.bindparam("state", type_=_TRIALS.c.state.type),
        datetime_start=sa.bindparam("start", type_=_TRIALS.c.datetime_start.type),
    )
    .returning(_TRIALS.c.trial_id, _TRIALS.c.number)
)
_INSERT_PARAMS = _PARAMS.insert()
_INSERT_SYSTEM_ATTRS = _SYSTEM_ATTRS.insert()
_VALUES = models.TrialValueModel.__table__
_USER_ATTRS = models.TrialUserAttributeModel.__table__
_FINISH = (
    _TRIALS.update()
    .where(_TRIALS.c.trial_id == sa.bindparam("tid"), _TRIALS.c.state == TrialState.RUNNING)
    .values(state=sa.bindparam("state", type_=_TRIALS.c.state.type),
            datetime_complete=sa.bindparam("end", type_=_TRIALS.c.datetime_complete.type))
    .returning(_TRIALS.c.trial_id)
)
_INSERT_VALUE = _VALUES.insert()
_INSERT_USER_ATTR = _USER_ATTRS.insert()
_WAITING = sa.select(_TRIALS.c.trial_id).where(
    _TRIALS.c.study_id == sa.bindparam("sid"), _TRIALS.c.state == TrialState.WAITING).order_by(_TRIALS.c.trial_id).limit(1)
_TAKE_WAITING = (
    _TRIALS.update()
    .where(_TRIALS.c.trial_id == sa.bindparam("tid"), _TRIALS.c.state == TrialState.WAITING)
    .values(state=TrialState.RUNNING, datetime_start=sa.bindparam("start", type_=_TRIALS.c.datetime_start.type))
    .returning(_TRIALS.c.number)
)
_IDS_AFTER = sa.select(_TRIALS.c.trial_id).where(_TRIALS.c.study_id == sa.bindparam("sid"),
                                                 _TRIALS.c.trial_id > sa.bindparam("after"))


# trial_columns: one set-based SELECT per table, joined in Python by trial id.
_OF_STUDY = _TRIALS.c.study_id == sa.bindparam("sid")
_COL_STUDY = sa.select(_STUDIES.c.study_id).where(_STUDIES.c.study_id == sa.bindparam("sid"))
_COL_TRIALS = sa.select(_TRIALS.c.trial_id, _TRIALS.c.number, _TRIALS.c.state, _TRIALS.c.datetime_start,
                        _TRIALS.c.datetime_complete).where(_OF_STUDY)
_COL_VALUES = (sa.select(_VALUES.c.trial_id, _VALUES.c.value, _VALUES.c.value_type)
               .select_from(_VALUES.join(_TRIALS, _TRIALS.c.trial_id == _VALUES.c.trial_id))
               .where(_OF_STUDY, _VALUES.c.objective == 0))
_COL_PARAMS = (sa.select(_PARAMS.c.trial_id, _PARAMS.c.param_name, _PARAMS.c.param_value, _PARAMS.c.distribution_json)
               .select_from(_PARAMS.join(_TRIALS, _TRIALS.c.trial_id == _PARAMS.c.trial_id))
               .where(_OF_STUDY).order_by(_PARAMS.c.param_id))
_COL_USER_ATTRS = (sa.select(_USER_ATTRS.c.trial_id, _USER_ATTRS.c.key, _USER_ATTRS.c.value_json)
                   .select_from(_USER_ATTRS.join(_TRIALS, _TRIALS.c.trial_id == _USER_ATTRS.c.trial_id))
                   .where(_OF_STUDY, sa.or_(_USER_ATTRS.c.key.in_([TARGETS_ATTR, FAIL_REASON, BUSY_ATTR]),
                                            _USER_ATTRS.c.key.startswith(LOSS_ATTR_PREFIX, autoescape=True))))
_COL_COORDINATOR = (sa.select(_SYSTEM_ATTRS.c.trial_id, _SYSTEM_ATTRS.c.value_json)
                    .select_from(_SYSTEM_ATTRS.join(_TRIALS, _TRIALS.c.trial_id == _SYSTEM_ATTRS.c.trial_id))
                    .where(_OF_STUDY, _SYSTEM_ATTRS.c.key == COORDINATOR_ATTR))


def read_trial_columns(storage: RDBStorage, study_id: int) -> TrialColumns:
    """Every trial of the study as :class:`TrialColumns`: five SELECTs, no per-trial query.

    Decoded as Optuna's ``_build_frozen_trial_from_trial_model`` does: values
    through ``TrialValueModel.stored_repr_to_value``, parameters through their
    own row's distribution JSON (``to_external_repr``: a categorical's stored
    value is an index into its choices), attributes through ``json.loads``.
    On PostgreSQL the SELECTs share one snapshot (REPEATABLE READ); rows of
    trials created after the first SELECT are ignored.
    """
    with storage.engine.connect() as c:
        if storage.engine.dialect.name == "postgresql":
            c = c.execution_options(isolation_level="REPEATABLE READ")
        with c.begin():
            args = {"sid": study_id}
            if c.execute(_COL_STUDY, args).first() is None:
                raise KeyError(f"no study with id {study_id}")
            trials = c.execute(_COL_TRIALS, args).all()
            values = c.execute(_COL_VALUES, args).all()
            params = c.execute(_COL_PARAMS, args).all()
            user_attrs = c.execute(_COL_USER_ATTRS, args).all()
            coordinators = c.execute(_COL_COORDINATOR, args).all()
    row_of = {tid: i for i, (tid, *_) in enumerate(trials)}
    n = len(trials)
    value: list[float | None] = [None] * n
    for tid, stored, kind in values:
        if tid in row_of:
            value[row_of[tid]] = models.TrialValueModel.stored_repr_to_value(stored, kind)
    dists: dict[str, BaseDistribution] = {}  # distribution JSON -> distribution, decoded once each
    trial_params: list[dict[str, tuple[Any, BaseDistribution]]] = [{} for _ in range(n)]
    for tid, name, stored, dist_json in params:
        if tid in row_of:
            dist = dists.get(dist_json)
            if dist is None:
                dist = dists[dist_json] = json_to_distribution(dist_json)
            trial_params[row_of[tid]][name] = (dist.to_external_repr(stored), dist)
    attrs: list[dict[str, Any]] = [{} for _ in range(n)]
    for tid, key, raw in user_attrs:
        if tid in row_of:
            attrs[row_of[tid]][key] = json.loads(raw)
    coordinator: list[Any] = [None] * n
    for tid, raw in coordinators:
        if tid in row_of:
            coordinator[row_of[tid]] = json.loads(raw)
    return columns_from_rows([t[1] for t in trials], [t[2] for t in trials], value, [t[3] for t in trials],
                             [t[4] for t in trials], trial_params, attrs, coordinator)


# Versioned: services of different versions may share a database.
PG_CREATE_FUNCTION_NAME = "calabaria_create_trial_v2"
CLAIM_LOST_SQLSTATE = "CL001"  # raised by the function when the owner was fenced
NO_CLAIM_SQLSTATE = "CL002"  # ... when it holds no open claim
PG_CREATE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {PG_CREATE_FUNCTION_NAME}(
    p_study integer, p_start timestamp, p_names text[], p_values double precision[], p_dists text[],
    p_keys text[], p_jsons text[], p_study_name text, p_owner text, OUT o_trial_id integer, OUT o_number integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_fenced boolean;
BEGIN
    -- Each statement takes a fresh snapshot (READ COMMITTED): max(number) sees every
    -- trial committed before the lock was granted.
    PERFORM 1 FROM studies WHERE study_id = p_study FOR UPDATE;
    IF p_owner IS NOT NULL THEN
        -- The owner's open budget claim is spent with the insert, or neither happens
        -- (ledger.spend_claim: a fenced owner, or one without an open claim, is refused).
        UPDATE calabaria_open_claims SET open_claims = open_claims - 1
            WHERE study_name = p_study_name AND coordinator_id = p_owner AND NOT fenced AND open_claims >= 1;
        IF NOT FOUND THEN
            SELECT fenced INTO v_fenced FROM calabaria_open_claims
                WHERE study_name = p_study_name AND coordinator_id = p_owner;
            IF v_fenced THEN
                RAISE EXCEPTION 'calabaria: fenced' USING ERRCODE = '{CLAIM_LOST_SQLSTATE}';
            ELSIF v_fenced IS NOT NULL THEN
                RAISE EXCEPTION 'calabaria: no open budget claim' USING ERRCODE = '{NO_CLAIM_SQLSTATE}';
            END IF;
        END IF;
    END IF;
    SELECT COALESCE(MAX(number) + 1, 0) INTO o_number FROM trials WHERE study_id = p_study;
    INSERT INTO trials (number, study_id, state, datetime_start)
        VALUES (o_number, p_study, 'RUNNING', p_start) RETURNING trial_id INTO o_trial_id;
    INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json)
        SELECT o_trial_id, u.n, u.v, u.d FROM unnest(p_names, p_values, p_dists) AS u(n, v, d);
    INSERT INTO trial_system_attributes (trial_id, key, value_json)
        SELECT o_trial_id, u.k, u.j FROM unnest(p_keys, p_jsons) AS u(k, j);
END $$
"""
PG_FINISH_FUNCTION_NAME = "calabaria_finish_trial_v2"
PG_FINISH_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {PG_FINISH_FUNCTION_NAME}(
    p_trial integer, p_state text, p_end timestamp, p_value double precision, p_kind text,
    p_keys text[], p_jsons text[], OUT o_done boolean)
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE trials SET state = p_state::trialstate, datetime_complete = p_end
        WHERE trial_id = p_trial AND state = 'RUNNING';
    o_done := FOUND;
    IF NOT o_done THEN
        RETURN;  -- finished elsewhere meanwhile (recovered as stale): the first word stands
    END IF;
    IF p_kind IS NOT NULL THEN
        INSERT INTO trial_values (trial_id, objective, value, value_type)
            VALUES (p_trial, 0, p_value, p_kind::trialvaluetype);
    END IF;
    INSERT INTO trial_user_attributes (trial_id, key, value_json)
        SELECT p_trial, u.k, u.j FROM unnest(p_keys, p_jsons) AS u(k, j);
END $$
"""
_CALL_FINISH = sa.text(
    f"SELECT o_done FROM {PG_FINISH_FUNCTION_NAME}(:tid, :state, :end, :value, :kind, "
    "CAST(:keys AS text[]), CAST(:jsons AS text[]))"
)
_CALL_CREATE = sa.text(
    f"SELECT o_trial_id, o_number FROM {PG_CREATE_FUNCTION_NAME}("
    ":sid, :start, CAST(:names AS text[]), CAST(:vals AS double precision[]), CAST(:dists AS text[]), "
    "CAST(:keys AS text[]), CAST(:jsons AS text[]), :study_name, :owner)"
)
_WITH_PG_FUNCTION: weakref.WeakSet[RDBStorage] = weakref.WeakSet()


def install_pg_functions(storage: RDBStorage) -> bool:
    """Install the trial creation and completion functions on a PostgreSQL storage (call under the schema lock).

    Returns False, and the Core path stays in use, when the database refuses
    (e.g. a user without CREATE on the schema).
    """
    if storage.engine.dialect.name != "postgresql":
        return False
    try:
        with storage.engine.begin() as conn:
            conn.execute(sa.text(PG_CREATE_FUNCTION))
            conn.execute(sa.text(PG_FINISH_FUNCTION))
    except sa.exc.ProgrammingError:
        return False
    _WITH_PG_FUNCTION.add(storage)
    return True


def create_running_trial(storage: RDBStorage, study_id: int, params: Mapping[str, Any],
                         distributions: Mapping[str, BaseDistribution], system_attrs: Mapping[str, Any],
                         claim: tuple[str, str] | None = None) -> tuple[int, int]:
    """Insert a RUNNING trial with ``params`` and ``system_attrs``; return ``(number, trial_id)``.

    With ``claim`` = ``(study name, owner)``, one of the owner's open budget claims is
    spent in the same transaction (``ledger.spend_claim``): ClaimLostError, and no trial,
    when the owner was fenced as lost.
    """
    if storage in _WITH_PG_FUNCTION:
        names = list(params)
        try:
            with storage.engine.connect() as c:
                c = c.execution_options(isolation_level="AUTOCOMMIT")  # the function's statement is the transaction
                trial_id, number = c.execute(_CALL_CREATE, {
                    "sid": study_id, "start": dt.datetime.now(), "names": names,
                    "vals": [float(distributions[n].to_internal_repr(params[n])) for n in names],
                    "dists": [distribution_to_json(distributions[n]) for n in names],
                    "keys": list(system_attrs), "jsons": [json.dumps(v) for v in system_attrs.values()],
                    "study_name": claim[0] if claim else None, "owner": claim[1] if claim else None,
                }).one()
        except sa.exc.DBAPIError as e:
            code = getattr(e.orig, "pgcode", None)
            if claim is not None and code in (CLAIM_LOST_SQLSTATE, NO_CLAIM_SQLSTATE):
                raise lost(*claim, fenced=code == CLAIM_LOST_SQLSTATE) from None
            raise
        return int(number), int(trial_id)
    with storage.engine.begin() as c:
        # The study row lock first, as Optuna takes it: numbering is serialised, and
        # taking it after the trial insert (whose foreign key share-locks the study row)
        # would deadlock between coordinators. The claim after it: two loops of one owner
        # would otherwise each hold what the other waits for.
        c.execute(_LOCK_STUDY, {"sid": study_id})
        if claim is not None:
            spend_claim(c, *claim)
        trial_id, number = c.execute(
            _INSERT_TRIAL, {"sid": study_id, "state": TrialState.RUNNING, "start": dt.datetime.now()}).one()
        if params:
            c.execute(_INSERT_PARAMS, [
                {"trial_id": trial_id, "param_name": name, "param_value": distributions[name].to_internal_repr(value),
                 "distribution_json": distribution_to_json(distributions[name])}
                for name, value in params.items()
            ])
        if system_attrs:
            c.execute(_INSERT_SYSTEM_ATTRS, [
                {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in system_attrs.items()
            ])
    return int(number), int(trial_id)


def finish_trial(storage: RDBStorage, trial_id: int, state: TrialState, value: float | None,
                 user_attrs: Mapping[str, Any]) -> bool:
    """Finish a RUNNING trial in one transaction: state, value and its user attributes.

    Returns False (and writes nothing) when the trial was already finished
    elsewhere, e.g. recovered as stale: the first word stands.
    """
    if storage in _WITH_PG_FUNCTION:
        stored, kind = models.TrialValueModel.value_to_stored_repr(value) if value is not None else (None, None)
        with storage.engine.connect() as c:
            c = c.execution_options(isolation_level="AUTOCOMMIT")  # the function's statement is the transaction
            return bool(c.execute(_CALL_FINISH, {
                "tid": trial_id, "state": state.name, "end": dt.datetime.now(), "value": stored,
                "kind": None if kind is None else kind.name, "keys": list(user_attrs),
                "jsons": [json.dumps(v) for v in user_attrs.values()],
            }).scalar_one())
    with storage.engine.begin() as c:
        finished = c.execute(_FINISH, {"tid": trial_id, "state": state, "end": dt.datetime.now()}).first()
        if finished is None:
            return False
        if value is not None:
            stored, kind = models.TrialValueModel.value_to_stored_repr(value)
            c.execute(_INSERT_VALUE, {"trial_id": trial_id, "objective": 0, "value": stored, "value_type": kind})
        if user_attrs:
            c.execute(_INSERT_USER_ATTR, [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                                          for k, v in user_attrs.items()])
    return True


def trial_ids_after(storage: RDBStorage, study_id: int, after: int) -> list[int]:
    """Ids of the study's trials with id > ``after``: one indexed query, no ORM loading."""
    with storage.engine.connect() as conn:
        return [row[0] for row in conn.execute(_IDS_AFTER, {"sid": study_id, "after": after})]


def engine_kwargs(target: StorageTarget, loops: int) -> dict:
    """SQLAlchemy engine options for a storage used by ``loops`` threads."""
    if target.kind == "postgresql":
        return {
            # At most loops + 4 connections: a loop holds one while it claims or asks, and
            # the tell writers, the heartbeat thread and the main thread share the rest
            # (docs/scaling.md). One pool serves trials and ledger alike.
            "pool_size": loops + 2,
            "max_overflow": 2,
            "pool_pre_ping": True,  # replace connections the server dropped while idle
            "pool_recycle": 300,
            "pool_timeout": 60,
            "connect_args": {"connect_timeout": 10, "application_name": "calabaria"},
        }
    # SQLite serialises writers; wait for the lock instead of failing at once.
    return {"connect_args": {"timeout": 60}}


_SCHEMA_LOCK_KEY = 727274  # pg_advisory_lock key shared by every calabaria process


@contextmanager
def schema_lock(target: StorageTarget) -> Iterator[None]:
    """Serialise schema and study creation across processes (and threads) starting at once.

    PostgreSQL: a session advisory lock. SQLite: ``flock`` on ``<file>.lock``
    (per open file, so it also separates threads of one process). An
    unreachable server is not reported here: the caller's own connection
    reports it with a clear message.
    """
    if target.kind == "sqlite" and target.path is not None and target.path.parent.is_dir():
        with open(target.path.with_name(target.path.name + ".lock"), "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return
    if target.kind != "postgresql":
        yield
        return
    engine = sa.create_engine(target.url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 10})
    try:
        conn = engine.connect()
    except sqlalchemy.exc.DBAPIError:
        engine.dispose()
        yield
        return
    try:
        conn.execute(sa.text(f"SELECT pg_advisory_lock({_SCHEMA_LOCK_KEY})"))
        try:
            yield
        finally:
            conn.execute(sa.text(f"SELECT pg_advisory_unlock({_SCHEMA_LOCK_KEY})"))
    finally:
        conn.close()
        engine.dispose()


def pop_waiting_trial(storage: RDBStorage, study_id: int, owner_attrs: Mapping[str, Any],
                      claim: tuple[str, str] | None = None) -> PoppedTrial | None:
    """Set the study's oldest WAITING trial RUNNING with ``owner_attrs``, in one transaction.

    The state change is a compare-and-set (``WHERE state = 'WAITING'``), and on
    PostgreSQL the candidate row is locked with ``SKIP LOCKED``: concurrent
    coordinators take different trials, each trial exactly once. With ``claim``,
    taking one spends a budget claim in the same transaction, as a new trial does.
    """
    pick = _WAITING.with_for_update(skip_locked=True) if storage.engine.dialect.name == "postgresql" else _WAITING
    with storage.engine.begin() as c:
        while True:
            trial_id = c.execute(pick, {"sid": study_id}).scalar()
            if trial_id is None:
                return None
            number = c.execute(_TAKE_WAITING, {"tid": trial_id, "start": dt.datetime.now()}).scalar()
            if number is not None:
                break  # taken here; None: another coordinator took it first, look again
        if claim is not None:
            spend_claim(c, *claim)
        rows = c.execute(sa.select(_SYSTEM_ATTRS.c.key, _SYSTEM_ATTRS.c.value_json)
                         .where(_SYSTEM_ATTRS.c.trial_id == trial_id)).all()
        if owner_attrs:
            c.execute(_INSERT_SYSTEM_ATTRS, [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                                             for k, v in owner_attrs.items()])
    fixed = next((json.loads(v) for k, v in rows if k == "fixed_params"), None) or {}
    return PoppedTrial(int(trial_id), int(number), dict(fixed))


class RelationalBackend(GenericBackend):
    """PostgreSQL and SQLite: trials created, finished and listed with the hand-written SQL above.

    Every statement goes through the storage's one engine, which the ledger shares.
    """

    def __init__(self, storage: RDBStorage, ledger: SqlLedger | None = None, *, spend_claims: bool = False) -> None:
        super().__init__(storage, ledger or SqlLedger(storage.engine, create=False), spend_claims=spend_claims)
        self._rdb = storage

    def create_trial(self, study_id: int, params: Mapping[str, Any], distributions: Mapping[str, BaseDistribution],
                     system_attrs: Mapping[str, Any]) -> tuple[int, int]:
        return create_running_trial(self._rdb, study_id, params, distributions, system_attrs,
                                    self._claim_of(study_id, system_attrs))

    def enqueue(self, study_id: int, points: Sequence[Mapping[str, Any]]) -> None:
        # One transaction (one commit, not one per point: 10,000 points took minutes).
        with self._rdb.engine.begin() as c:
            c.execute(_LOCK_STUDY, {"sid": study_id})
            ids = [c.execute(_INSERT_TRIAL, {"sid": study_id, "state": TrialState.WAITING, "start": None}).one()[0]
                   for _ in points]
            if ids:
                c.execute(_INSERT_SYSTEM_ATTRS, [{"trial_id": trial_id, "key": "fixed_params", "value_json": json.dumps(dict(point))}
                                                 for trial_id, point in zip(ids, points)])

    def finish_trial(self, trial_id: int, state: TrialState, value: float | None, user_attrs: Mapping[str, Any]) -> bool:
        return finish_trial(self._rdb, trial_id, state, value, user_attrs)

    def fail_if_running(self, trial_id: int, reason: str) -> bool:
        return finish_trial(self._rdb, trial_id, TrialState.FAIL, None, {FAIL_REASON: reason})

    def pop_waiting(self, study_id: int, owner_attrs: Mapping[str, Any]) -> PoppedTrial | None:
        return pop_waiting_trial(self._rdb, study_id, owner_attrs, self._claim_of(study_id, owner_attrs))

    def trials_owned(self, study_id: int, owner: str) -> int:
        a = _SYSTEM_ATTRS.c
        query = (sa.select(sa.func.count()).select_from(_SYSTEM_ATTRS.join(_TRIALS, _TRIALS.c.trial_id == a.trial_id))
                 .where(_TRIALS.c.study_id == study_id, a.key == COORDINATOR_ATTR, a.value_json == json.dumps(owner)))
        with self._rdb.engine.connect() as c:
            return int(c.execute(query).scalar_one())

    def set_params(self, trial_id: int, params: Mapping[str, Any], distributions: Mapping[str, BaseDistribution]) -> None:
        if params:
            with self._rdb.engine.begin() as c:
                c.execute(_INSERT_PARAMS, [
                    {"trial_id": trial_id, "param_name": n, "param_value": distributions[n].to_internal_repr(v),
                     "distribution_json": distribution_to_json(distributions[n])} for n, v in params.items()])

    def running_trials(self, study_id: int) -> list[StoredTrial]:
        # Past Optuna's cache wrapper, which would first load every trial created since its last read.
        return [StoredTrial(t._trial_id, t) for t in self._rdb._get_trials(study_id, (TrialState.RUNNING,), set(), -1)]

    def trials_since(self, study_id: int, cursor: int, skip: set[int], recheck: set[int]) -> tuple[list[StoredTrial], int]:
        # One light query lists the new ids; only the ones wanted are then loaded in full.
        new_ids = trial_ids_after(self._rdb, study_id, cursor)
        top = max(new_ids, default=cursor)
        wanted = {i for i in new_ids if i not in skip} | recheck
        fetched = self._rdb._get_trials(study_id, None, wanted, top) if wanted else []
        return [StoredTrial(t._trial_id, t) for t in fetched], top

    def trial_columns(self, study_id: int) -> TrialColumns:
        return read_trial_columns(self._rdb, study_id)

    def close(self) -> None:
        self.ledger.close()
        self._rdb.engine.dispose()
