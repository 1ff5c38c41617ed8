"""The coordination ledger: a study's trial budget and its live coordinators.

Optuna's storage cannot claim a budget slot atomically across processes, and
its heartbeats are recorded only inside ``study.optimize``. The ledger does
both, next to the study: tables in the same database for SQL storages, a
lock-guarded JSON file beside a journal file, a dict for in-memory studies.

Contract (every backend, tested by ``tests/test_storage_contract.py``):

- ``claim`` is atomic across threads and processes: the sum of granted slots
  never exceeds ``max_trials``. A claim is also recorded as *open* for its
  coordinator (``owner``) until ``spend`` turns it into a trial (the relational
  backend spends in the transaction that inserts the trial) or ``release``
  gives it back. Invariant: ``claimed`` = trials asked + open claims.
- ``settle`` gives back a lost coordinator's open claims and *fences* it, in one
  transaction: from then on its ``claim`` and ``spend`` fail
  (:class:`~modelops_calabaria.errors.ClaimLostError`) and its ``release`` gives
  nothing back (it was given back already). A coordinator declared lost while
  it was only slow (its heartbeat starved on a loaded host) can therefore not
  ask a trial on a slot that was given back and re-spent elsewhere: the budget
  stays exact through a SIGKILL and through a false "lost".
- An owner that never claimed (tools, tests that ask directly) has no ledger
  row: ``spend`` lets it through. Every coordinator run by the service claims
  before it asks, and a fenced one always has its row.
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
from modelops_calabaria.errors import ClaimLostError


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
        """Atomically take up to ``n`` slots for ``owner`` (open claims); return how many were
        granted (0 = spent). Raises ClaimLostError, granting nothing, if ``owner`` was fenced."""

    def spend(self, study: str, owner: str) -> None:
        """Turn one of ``owner``'s open claims into a trial (call just before creating it).
        Raises ClaimLostError if ``owner`` was fenced or holds no open claim; an owner
        without any ledger row (it never claimed) passes."""

    def release(self, study: str, n: int, owner: str | None = None) -> None:
        """Give back ``n`` slots ``owner`` claimed that did not become trials (at most its open
        claims: nothing if it was fenced, whose claims ``settle`` gave back already)."""

    def settle(self, study: str, owner: str) -> int:
        """``owner`` is lost: give back its open claims and fence it, at once and once (a second
        caller finds nothing); return how many slots were given back."""

    def open_claims(self, study: str) -> int:
        """Open claims of every unfenced coordinator (claimed, not yet asked nor released)."""

    def reconcile(self, study: str, n_trials: int, expected_claimed: int) -> bool:
        """Set ``claimed`` to ``n_trials`` if it is still ``expected_claimed`` and no unfenced
        coordinator holds an open claim (used when no other coordinator is alive, to repair
        a claim that leaked); False, and nothing changed, otherwise."""

    def budget(self, study: str) -> tuple[int, int]:
        """``(claimed, max_trials)``; ``(0, 0)`` when the study has no budget yet."""

    def beat(self, study: str, coordinator: Coordinator) -> None:
        """Record that ``coordinator`` is alive now."""

    def coordinators(self, study: str) -> list[Coordinator]:
        """Every coordinator that has beaten and not been forgotten."""

    def forget(self, study: str, coordinator_id: str) -> None:
        """Remove a coordinator (it stopped cleanly, or it was found dead): its heartbeat row
        goes, and it is settled (open claims given back, fenced)."""

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
        self._open: dict[tuple[str, str], int] = {}  # open claims per (study, owner)
        self._fenced: set[tuple[str, str]] = set()

    def ensure_budget(self, study: str, max_trials: int) -> int:
        with self._lock:
            return self._budget.setdefault(study, [0, max_trials])[1]

    def set_max_trials(self, study: str, max_trials: int) -> None:
        with self._lock:
            self._budget.setdefault(study, [0, max_trials])[1] = max_trials

    def claim(self, study: str, n: int = 1, owner: str | None = None) -> int:
        with self._lock:
            if owner is not None and (study, owner) in self._fenced:
                raise lost(study, owner)
            b = self._budget[study]
            granted = max(0, min(n, b[1] - b[0]))
            b[0] += granted
            if owner is not None and granted:
                self._open[(study, owner)] = self._open.get((study, owner), 0) + granted
            return granted

    def spend(self, study: str, owner: str) -> None:
        with self._lock:
            key = (study, owner)
            if key in self._fenced or self._open.get(key, 1) < 1:
                raise lost(study, owner, fenced=key in self._fenced)
            if key in self._open:
                self._open[key] -= 1

    def release(self, study: str, n: int, owner: str | None = None) -> None:
        with self._lock:
            if owner is not None:
                n = min(n, self._open.get((study, owner), 0))
                if not n:
                    return
                self._open[(study, owner)] -= n
            self._budget[study][0] -= n

    def settle(self, study: str, owner: str) -> int:
        with self._lock:
            if (study, owner) in self._fenced:
                return 0
            self._fenced.add((study, owner))
            back = self._open.pop((study, owner), 0)
            if back:
                self._budget[study][0] -= back
            return back

    def open_claims(self, study: str) -> int:
        with self._lock:
            return sum(n for (s, _), n in self._open.items() if s == study)

    def reconcile(self, study: str, n_trials: int, expected_claimed: int) -> bool:
        with self._lock:
            if self._budget[study][0] != expected_claimed or any(n for (s, _), n in self._open.items() if s == study):
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
        self.settle(study, coordinator_id)

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
            if owner is not None and owner in s.get("fenced", {}).get(study, []):
                raise lost(study, owner)
            b = s["budget"][study]
            granted = max(0, min(n, b["max"] - b["claimed"]))
            b["claimed"] += granted
            if owner is not None and granted:
                open_ = s.setdefault("open", {}).setdefault(study, {})
                open_[owner] = open_.get(owner, 0) + granted
            return granted

    def spend(self, study: str, owner: str) -> None:
        with self._state() as s:
            open_ = s.get("open", {}).get(study, {})
            fenced = owner in s.get("fenced", {}).get(study, [])
            if fenced or open_.get(owner, 1) < 1:
                raise lost(study, owner, fenced=fenced)
            if owner in open_:
                open_[owner] -= 1

    def release(self, study: str, n: int, owner: str | None = None) -> None:
        with self._state() as s:
            if owner is not None:
                open_ = s.get("open", {}).get(study, {})
                n = min(n, open_.get(owner, 0))
                if not n:
                    return
                open_[owner] -= n
            s["budget"][study]["claimed"] -= n

    def settle(self, study: str, owner: str) -> int:
        with self._state() as s:
            fenced = s.setdefault("fenced", {}).setdefault(study, [])
            if owner in fenced:
                return 0
            fenced.append(owner)
            back = s.get("open", {}).get(study, {}).pop(owner, 0)
            if back:
                s["budget"][study]["claimed"] -= back
            return back

    def open_claims(self, study: str) -> int:
        with self._state() as s:
            return sum(s.get("open", {}).get(study, {}).values())

    def reconcile(self, study: str, n_trials: int, expected_claimed: int) -> bool:
        with self._state() as s:
            if s["budget"][study]["claimed"] != expected_claimed or any(s.get("open", {}).get(study, {}).values()):
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
        self.settle(study, coordinator_id)

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


def lost(study: str, owner: str, *, fenced: bool = True) -> ClaimLostError:
    """The error of a fenced coordinator, or (``fenced`` False) of one asking beyond its claims."""
    if not fenced:
        return ClaimLostError(
            f"coordinator {owner} asked a trial of study '{study}' without an open budget claim (an ask the "
            "database committed just before the connection dropped, then retried)",
            hint="the study keeps its exact budget; re-run to resume",
        )
    return ClaimLostError(
        f"coordinator {owner} holds no budget claim for another trial of study '{study}': another coordinator "
        "declared it lost (no heartbeat for longer than the grace period) and gave its claims back",
        hint="its running trials were failed and the other coordinators finish the budget; on an overloaded host "
             "raise CALABARIA_GRACE_PERIOD_S; re-run to resume",
    )


def now() -> float:
    """Wall-clock seconds used for heartbeats."""
    return time.time()
