"""The ledger's relational form: tables beside Optuna's in the study's own database.

The contract is :class:`~modelops_calabaria.backend.ledger.Ledger`'s. Every call
is one transaction, retried through connection failures; a transaction that
changes claims takes the budget row first (one lock order on PostgreSQL, no
deadlock; on SQLite the transaction starts with a write, so it holds the write lock).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa
import sqlalchemy.exc

from modelops_calabaria.backend.ledger import Coordinator, lost
from modelops_calabaria.dbretry import retry_db


T = TypeVar("T")
_META = sa.MetaData()
_BUDGET = sa.Table(
    "calabaria_budget",
    _META,
    sa.Column("study_name", sa.String(512), primary_key=True),
    sa.Column("max_trials", sa.Integer, nullable=False),
    sa.Column("claimed", sa.Integer, nullable=False),
    sa.Column("last_grant", sa.Integer, nullable=False, default=0),
)
_RETRIES = sa.Table(
    "calabaria_retries",
    _META,
    sa.Column("retry_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_name", sa.String(512), nullable=False, index=True),
    sa.Column("params_json", sa.Text, nullable=False),
)
# A coordinator's open claims (claimed, not yet asked nor released), and whether it was
# fenced (settled as lost). Not "calabaria_claims", which an older release kept with
# another meaning (every slot ever claimed); that table is left alone.
_OPEN = sa.Table(
    "calabaria_open_claims",
    _META,
    sa.Column("study_name", sa.String(512), primary_key=True),
    sa.Column("coordinator_id", sa.String(64), primary_key=True),
    sa.Column("open_claims", sa.Integer, nullable=False),
    sa.Column("fenced", sa.Boolean, nullable=False, default=False),
)
_COORDS = sa.Table(
    "calabaria_coordinators",
    _META,
    sa.Column("study_name", sa.String(512), primary_key=True),
    sa.Column("coordinator_id", sa.String(64), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
)


class SqlLedger:
    """Ledger tables in the study's own database (PostgreSQL or SQLite).

    ``claim`` is one conditional UPDATE: the row lock (PostgreSQL) or the
    database write lock (SQLite) makes it atomic across processes. Every call
    is one transaction, retried through connection failures.
    """

    def __init__(self, engine: sa.Engine, *, create: bool = True, owns_engine: bool = False) -> None:
        self._engine = engine  # the trial store's engine: one pool per coordinator
        self._owns_engine = owns_engine
        if create:  # the caller holds the schema lock
            retry_db("ledger set-up", lambda: _META.create_all(self._engine, checkfirst=True))

    def _tx(self, what: str, body: Callable[[sa.Connection], T]) -> T:
        def run() -> T:
            with self._engine.begin() as conn:
                return body(conn)

        return retry_db(what, run)

    def ensure_budget(self, study: str, max_trials: int) -> int:
        def insert(c: sa.Connection) -> None:
            c.execute(_BUDGET.insert().values(study_name=study, max_trials=max_trials, claimed=0, last_grant=0))

        try:
            self._tx("budget", insert)
        except sqlalchemy.exc.IntegrityError:
            pass  # another coordinator created it first
        return self._tx("budget", lambda c: int(
            c.execute(sa.select(_BUDGET.c.max_trials).where(_BUDGET.c.study_name == study)).scalar_one()))

    def set_max_trials(self, study: str, max_trials: int) -> None:
        self.ensure_budget(study, max_trials)
        self._tx("budget", lambda c: c.execute(
            _BUDGET.update().where(_BUDGET.c.study_name == study).values(max_trials=max_trials)))

    def claim(self, study: str, n: int = 1, owner: str | None = None) -> int:
        b = _BUDGET.c
        # One statement: SET expressions see the old row, so last_grant = min(old + n, max) - old.
        capped = sa.case((b.claimed + n <= b.max_trials, b.claimed + n), else_=b.max_trials)

        def take(c: sa.Connection) -> int:
            row = c.execute(
                _BUDGET.update()
                .where(b.study_name == study, b.claimed < b.max_trials)
                .values(claimed=capped, last_grant=capped - b.claimed)
                .returning(b.last_grant)
            ).first()
            granted = int(row[0]) if row else 0
            if owner is not None and granted:
                # Same transaction (the budget row, locked first, orders it with settle): a
                # fenced owner's grant is rolled back with the error.
                _open_more(c, study, owner, granted)
            elif owner is not None and _is_fenced(c, study, owner):
                raise lost(study, owner)
            return granted

        return self._tx("claim", take)

    def spend(self, study: str, owner: str) -> None:
        self._tx("ask", lambda c: spend_claim(c, study, owner))

    def release(self, study: str, n: int, owner: str | None = None) -> None:
        def give_back(c: sa.Connection) -> None:
            _lock_budget(c, study)
            k = n
            if owner is not None:
                k = min(n, _open_of(c, study, owner))
                if k <= 0:
                    return  # fenced (settle gave its claims back already) or nothing open
                o = _OPEN.c
                c.execute(_OPEN.update().where(o.study_name == study, o.coordinator_id == owner)
                          .values(open_claims=o.open_claims - k))
            c.execute(_BUDGET.update().where(_BUDGET.c.study_name == study).values(claimed=_BUDGET.c.claimed - k))

        self._tx("release", give_back)

    def settle(self, study: str, owner: str) -> int:
        o = _OPEN.c

        def fence(c: sa.Connection) -> int:
            _lock_budget(c, study)  # the owner's row is then changed only by whoever holds this lock
            row = c.execute(sa.select(o.open_claims, o.fenced).where(o.study_name == study, o.coordinator_id == owner)).first()
            if row is None:
                c.execute(_OPEN.insert().values(study_name=study, coordinator_id=owner, open_claims=0, fenced=True))
                return 0
            if row[1]:
                return 0  # settled before
            back = int(row[0])
            c.execute(_OPEN.update().where(o.study_name == study, o.coordinator_id == owner)
                      .values(open_claims=0, fenced=True))
            if back:
                c.execute(_BUDGET.update().where(_BUDGET.c.study_name == study)
                          .values(claimed=_BUDGET.c.claimed - back))
            return back

        return self._tx("settle", fence)

    def open_claims(self, study: str) -> int:
        o = _OPEN.c
        return int(self._tx("budget", lambda c: c.execute(
            sa.select(sa.func.coalesce(sa.func.sum(o.open_claims), 0))
            .where(o.study_name == study, o.fenced == sa.false())).scalar_one()))

    def reconcile(self, study: str, n_trials: int, expected_claimed: int) -> bool:
        o = _OPEN.c

        def repair(c: sa.Connection) -> bool:
            _lock_budget(c, study)
            still_open = c.execute(sa.select(sa.func.count()).where(
                o.study_name == study, o.fenced == sa.false(), o.open_claims > 0)).scalar_one()
            if still_open:
                return False
            return bool(c.execute(_BUDGET.update().where(_BUDGET.c.study_name == study,
                                                         _BUDGET.c.claimed == expected_claimed)
                                  .values(claimed=n_trials)).rowcount)

        return self._tx("reconcile", repair)

    def budget(self, study: str) -> tuple[int, int]:
        row = self._tx("budget", lambda c: c.execute(
            sa.select(_BUDGET.c.claimed, _BUDGET.c.max_trials).where(_BUDGET.c.study_name == study)).first())
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def beat(self, study: str, coordinator: Coordinator) -> None:
        k = _COORDS.c

        def upsert(c: sa.Connection) -> None:
            updated = c.execute(_COORDS.update().where(k.study_name == study, k.coordinator_id == coordinator.coordinator_id)
                                .values(last_seen=coordinator.last_seen)).rowcount
            if not updated:
                c.execute(_COORDS.insert().values(study_name=study, coordinator_id=coordinator.coordinator_id,
                                                  host=coordinator.host[:255], pid=coordinator.pid, last_seen=coordinator.last_seen))

        self._tx("heartbeat", upsert)

    def coordinators(self, study: str) -> list[Coordinator]:
        k = _COORDS.c
        rows = self._tx("heartbeat", lambda c: c.execute(
            sa.select(k.coordinator_id, k.host, k.pid, k.last_seen).where(k.study_name == study)).all())
        return [Coordinator(r[0], r[1], int(r[2]), float(r[3])) for r in rows]

    def forget(self, study: str, coordinator_id: str) -> None:
        k = _COORDS.c
        self._tx("heartbeat", lambda c: c.execute(
            _COORDS.delete().where(k.study_name == study, k.coordinator_id == coordinator_id)))
        self.settle(study, coordinator_id)

    def push_retry(self, study: str, params: dict) -> None:
        self._tx("retry", lambda c: c.execute(_RETRIES.insert().values(study_name=study, params_json=json.dumps(params))))

    def pop_retry(self, study: str) -> dict | None:
        r = _RETRIES.c
        oldest = sa.select(r.retry_id).where(r.study_name == study).order_by(r.retry_id).limit(1)
        if self._engine.dialect.name == "postgresql":
            oldest = oldest.with_for_update(skip_locked=True)  # concurrent pops take different rows
        row = self._tx("retry", lambda c: c.execute(
            _RETRIES.delete().where(r.retry_id == oldest.scalar_subquery()).returning(r.params_json)).first())
        return json.loads(row[0]) if row else None

    def close(self) -> None:
        if self._owns_engine:
            self._engine.dispose()


def _lock_budget(c: sa.Connection, study: str) -> None:
    """Take the budget row's lock first, as ``claim`` does (PostgreSQL: one lock order, no
    deadlock; SQLite: the transaction starts with a write, so it holds the write lock)."""
    c.execute(_BUDGET.update().where(_BUDGET.c.study_name == study).values(claimed=_BUDGET.c.claimed))


def _open_of(c: sa.Connection, study: str, owner: str) -> int:
    o = _OPEN.c
    row = c.execute(sa.select(o.open_claims, o.fenced).where(o.study_name == study, o.coordinator_id == owner)).first()
    return 0 if row is None or row[1] else int(row[0])


def _is_fenced(c: sa.Connection, study: str, owner: str) -> bool:
    o = _OPEN.c
    return bool(c.execute(sa.select(o.fenced).where(o.study_name == study, o.coordinator_id == owner)).scalar())


def _open_more(c: sa.Connection, study: str, owner: str, n: int) -> None:
    o = _OPEN.c
    updated = c.execute(_OPEN.update().where(o.study_name == study, o.coordinator_id == owner, o.fenced == sa.false())
                        .values(open_claims=o.open_claims + n)).rowcount
    if updated:
        return
    if c.execute(sa.select(o.fenced).where(o.study_name == study, o.coordinator_id == owner)).first() is not None:
        raise lost(study, owner)
    c.execute(_OPEN.insert().values(study_name=study, coordinator_id=owner, open_claims=n, fenced=False))


def spend_claim(c: sa.Connection, study: str, owner: str) -> None:
    """Spend one of ``owner``'s open claims in the caller's transaction (the one inserting
    the trial, on a relational storage); raise ClaimLostError, which rolls it back, when
    ``owner`` was fenced or holds none. An owner with no ledger row passes (it never claimed)."""
    o = _OPEN.c
    spent = c.execute(_OPEN.update().where(o.study_name == study, o.coordinator_id == owner, o.fenced == sa.false(),
                                           o.open_claims >= 1)
                      .values(open_claims=o.open_claims - 1)).rowcount
    if not spent:
        row = c.execute(sa.select(o.fenced).where(o.study_name == study, o.coordinator_id == owner)).first()
        if row is not None:
            raise lost(study, owner, fenced=bool(row[0]))
