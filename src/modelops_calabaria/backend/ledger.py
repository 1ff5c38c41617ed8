"""The coordination ledger: a study's trial budget and its live coordinators.

Optuna's storage cannot claim a budget slot atomically across processes, and
its heartbeats are recorded only inside ``study.optimize``. The ledger does
both, next to the study: tables in the same database for SQL storages, a
lock-guarded JSON file beside a journal file, a dict for in-memory studies.

Contract (every backend, tested by ``tests/test_storage_contract.py``):

- ``claim`` is atomic across threads and processes: the sum of granted slots
  never exceeds ``max_trials``. Claims are also counted per coordinator
  (``owner``), so that ``settle`` can give back the slots a dead coordinator
  claimed and never turned into trials (its local reserve, or a claim killed
  before its ask): the budget stays exact through a SIGKILL.
- ``beat`` upserts the coordinator's ``last_seen`` (wall-clock seconds; hosts
  are assumed NTP-synchronised to well within the grace period).
- Methods are thread-safe; connection failures are retried, then raised as
  ``ServiceUnavailableError``.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import sqlalchemy as sa
import sqlalchemy.exc

from modelops_calabaria.dbretry import retry_db


@dataclass(frozen=True)
class Coordinator:
    """A coordinator's last heartbeat."""

    coordinator_id: str
    host: str
    pid: int
    last_seen: float


class Ledger(Protocol):
    """Budget and liveness shared by every coordinator of a study."""

    def ensure_budget(self, study: str, max_trials: int) -> int:
        """Create the budget row with ``max_trials`` if absent; return the stored max."""

    def set_max_trials(self, study: str, max_trials: int) -> None:
        """Overwrite the budget's maximum (resume with a new max, ``--extend``, stop rules)."""

    def claim(self, study: str, n: int = 1, owner: str | None = None) -> int:
        """Atomically take up to ``n`` slots for ``owner``; return how many were granted (0 = spent)."""

    def release(self, study: str, n: int, owner: str | None = None) -> None:
        """Give back ``n`` slots ``owner`` claimed that did not become trials."""

    def settle(self, study: str, owner: str, n_trials: int) -> int:
        """A dead ``owner`` asked ``n_trials`` trials: give back the rest of its claims, once
        (a second caller finds nothing); return how many slots were given back."""

    def reconcile(self, study: str, n_trials: int, expected_claimed: int) -> bool:
        """Set ``claimed`` to ``n_trials`` if it is still ``expected_claimed`` (used when no
        other coordinator is alive); False, and nothing changed, if someone claimed meanwhile."""

    def budget(self, study: str) -> tuple[int, int]:
        """``(claimed, max_trials)``; ``(0, 0)`` when the study has no budget yet."""

    def beat(self, study: str, coordinator: Coordinator) -> None:
        """Record that ``coordinator`` is alive now."""

    def coordinators(self, study: str) -> list[Coordinator]:
        """Every coordinator that has beaten and not been forgotten."""

    def forget(self, study: str, coordinator_id: str) -> None:
        """Remove a coordinator (it stopped cleanly, or it was found dead)."""

    def push_retry(self, study: str, params: dict) -> None:
        """Queue the parameters of a lost trial to be asked again."""

    def pop_retry(self, study: str) -> dict | None:
        """Atomically take the oldest queued parameters (each is taken once), or None."""

    def close(self) -> None:
        """Release connections."""


class MemoryLedger:
    """In-process ledger for in-memory studies: a Lock-guarded counter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._budget: dict[str, list[int]] = {}
        self._coords: dict[str, dict[str, Coordinator]] = {}
        self._retries: dict[str, list[dict]] = {}
        self._owned: dict[tuple[str, str], int] = {}

    def ensure_budget(self, study: str, max_trials: int) -> int:
        with self._lock:
            return self._budget.setdefault(study, [0, max_trials])[1]

    def set_max_trials(self, study: str, max_trials: int) -> None:
        with self._lock:
            self._budget.setdefault(study, [0, max_trials])[1] = max_trials

    def claim(self, study: str, n: int = 1, owner: str | None = None) -> int:
        with self._lock:
            b = self._budget[study]
            granted = max(0, min(n, b[1] - b[0]))
            b[0] += granted
            if owner is not None and granted:
                self._owned[(study, owner)] = self._owned.get((study, owner), 0) + granted
            return granted

    def release(self, study: str, n: int, owner: str | None = None) -> None:
        with self._lock:
            self._budget[study][0] -= n
            if owner is not None and (study, owner) in self._owned:
                self._owned[(study, owner)] -= n

    def settle(self, study: str, owner: str, n_trials: int) -> int:
        with self._lock:
            owned = self._owned.pop((study, owner), None)
            back = max(0, (owned or 0) - n_trials)
            if back:
                self._budget[study][0] -= back
            return back

    def reconcile(self, study: str, n_trials: int, expected_claimed: int) -> bool:
        with self._lock:
            if self._budget[study][0] != expected_claimed:
                return False
            self._budget[study][0] = n_trials
            return True

    def budget(self, study: str) -> tuple[int, int]:
        with self._lock:
            claimed, max_trials = self._budget.get(study, [0, 0])
            return claimed, max_trials

    def beat(self, study: str, coordinator: Coordinator) -> None:
        with self._lock:
            self._coords.setdefault(study, {})[coordinator.coordinator_id] = coordinator

    def coordinators(self, study: str) -> list[Coordinator]:
        with self._lock:
            return list(self._coords.get(study, {}).values())

    def forget(self, study: str, coordinator_id: str) -> None:
        with self._lock:
            self._coords.get(study, {}).pop(coordinator_id, None)
            self._owned.pop((study, coordinator_id), None)

    def push_retry(self, study: str, params: dict) -> None:
        with self._lock:
            self._retries.setdefault(study, []).append(dict(params))

    def pop_retry(self, study: str) -> dict | None:
        with self._lock:
            queue = self._retries.get(study)
            return queue.pop(0) if queue else None

    def close(self) -> None:
        pass


class FileLedger:
    """Ledger in a JSON file guarded by ``flock`` (for journal-file studies on a shared FS)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._thread_lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _state(self) -> Iterator[dict]:
        with self._thread_lock, open(self._lock_path, "a+") as lock_fh:
            fcntl.flock(lock_fh, fcntl.LOCK_EX)
            try:
                state = json.loads(self._path.read_text()) if self._path.exists() else {}
                before = json.dumps(state, sort_keys=True)
                yield state
                if json.dumps(state, sort_keys=True) != before:
                    tmp = self._path.with_name(self._path.name + f".tmp{os.getpid()}")
                    tmp.write_text(json.dumps(state))
                    os.replace(tmp, self._path)
            finally:
                fcntl.flock(lock_fh, fcntl.LOCK_UN)

    def ensure_budget(self, study: str, max_trials: int) -> int:
        with self._state() as s:
            return s.setdefault("budget", {}).setdefault(study, {"claimed": 0, "max": max_trials})["max"]

    def set_max_trials(self, study: str, max_trials: int) -> None:
        with self._state() as s:
            s.setdefault("budget", {}).setdefault(study, {"claimed": 0, "max": max_trials})["max"] = max_trials

    def claim(self, study: str, n: int = 1, owner: str | None = None) -> int:
        with self._state() as s:
            b = s["budget"][study]
            granted = max(0, min(n, b["max"] - b["claimed"]))
            b["claimed"] += granted
            if owner is not None and granted:
                owned = s.setdefault("owned", {}).setdefault(study, {})
                owned[owner] = owned.get(owner, 0) + granted
            return granted

    def release(self, study: str, n: int, owner: str | None = None) -> None:
        with self._state() as s:
            s["budget"][study]["claimed"] -= n
            owned = s.get("owned", {}).get(study, {})
            if owner in owned:
                owned[owner] -= n

    def settle(self, study: str, owner: str, n_trials: int) -> int:
        with self._state() as s:
            owned = s.get("owned", {}).get(study, {}).pop(owner, None)
            back = max(0, (owned or 0) - n_trials)
            if back:
                s["budget"][study]["claimed"] -= back
            return back

    def reconcile(self, study: str, n_trials: int, expected_claimed: int) -> bool:
        with self._state() as s:
            if s["budget"][study]["claimed"] != expected_claimed:
                return False
            s["budget"][study]["claimed"] = n_trials
            return True

    def budget(self, study: str) -> tuple[int, int]:
        with self._state() as s:
            b = s.get("budget", {}).get(study)
            return (b["claimed"], b["max"]) if b else (0, 0)

    def beat(self, study: str, coordinator: Coordinator) -> None:
        with self._state() as s:
            s.setdefault("coordinators", {}).setdefault(study, {})[coordinator.coordinator_id] = [
                coordinator.host, coordinator.pid, coordinator.last_seen
            ]

    def coordinators(self, study: str) -> list[Coordinator]:
        with self._state() as s:
            return [Coordinator(cid, h, p, t) for cid, (h, p, t) in s.get("coordinators", {}).get(study, {}).items()]

    def forget(self, study: str, coordinator_id: str) -> None:
        with self._state() as s:
            s.get("coordinators", {}).get(study, {}).pop(coordinator_id, None)
            s.get("owned", {}).get(study, {}).pop(coordinator_id, None)

    def push_retry(self, study: str, params: dict) -> None:
        with self._state() as s:
            s.setdefault("retries", {}).setdefault(study, []).append(dict(params))

    def pop_retry(self, study: str) -> dict | None:
        with self._state() as s:
            queue = s.get("retries", {}).get(study)
            return queue.pop(0) if queue else None

    def close(self) -> None:
        pass


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
_OWNED = sa.Table(
    "calabaria_claims",
    _META,
    sa.Column("study_name", sa.String(512), primary_key=True),
    sa.Column("coordinator_id", sa.String(64), primary_key=True),
    sa.Column("claimed", sa.Integer, nullable=False),
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
                _add_owned(c, study, owner, granted)  # same transaction: a claim is never half-recorded
            return granted

        return self._tx("claim", take)

    def release(self, study: str, n: int, owner: str | None = None) -> None:
        def give_back(c: sa.Connection) -> None:
            c.execute(_BUDGET.update().where(_BUDGET.c.study_name == study).values(claimed=_BUDGET.c.claimed - n))
            if owner is not None:
                _add_owned(c, study, owner, -n)

        self._tx("release", give_back)

    def settle(self, study: str, owner: str, n_trials: int) -> int:
        o = _OWNED.c

        def take_back(c: sa.Connection) -> int:
            # The delete is the compare-and-set: only one recoverer gets the row.
            row = c.execute(_OWNED.delete().where(o.study_name == study, o.coordinator_id == owner)
                            .returning(o.claimed)).first()
            back = max(0, int(row[0]) - n_trials) if row else 0
            if back:
                c.execute(_BUDGET.update().where(_BUDGET.c.study_name == study)
                          .values(claimed=_BUDGET.c.claimed - back))
            return back

        return self._tx("settle", take_back)

    def reconcile(self, study: str, n_trials: int, expected_claimed: int) -> bool:
        return bool(self._tx("reconcile", lambda c: c.execute(
            _BUDGET.update().where(_BUDGET.c.study_name == study, _BUDGET.c.claimed == expected_claimed)
            .values(claimed=n_trials)).rowcount))

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
        o = _OWNED.c

        def delete(c: sa.Connection) -> None:
            c.execute(_COORDS.delete().where(k.study_name == study, k.coordinator_id == coordinator_id))
            c.execute(_OWNED.delete().where(o.study_name == study, o.coordinator_id == coordinator_id))

        self._tx("heartbeat", delete)

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


def _add_owned(c: sa.Connection, study: str, owner: str, n: int) -> None:
    o = _OWNED.c
    updated = c.execute(_OWNED.update().where(o.study_name == study, o.coordinator_id == owner)
                        .values(claimed=o.claimed + n)).rowcount
    if not updated and n > 0:
        c.execute(_OWNED.insert().values(study_name=study, coordinator_id=owner, claimed=n))


def now() -> float:
    """Wall-clock seconds used for heartbeats."""
    return time.time()
