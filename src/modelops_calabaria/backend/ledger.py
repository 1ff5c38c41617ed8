"""The coordination ledger: a study's trial budget and its live coordinators.

Optuna's storage cannot claim a budget slot atomically across processes, and
its heartbeats are recorded only inside ``study.optimize``. The ledger does
both, next to the study: tables in the same database for SQL storages, a
lock-guarded JSON file beside a journal file, a dict for in-memory studies.

Contract (every backend, tested by ``tests/test_storage_contract.py``; the relational
form is ``sql_ledger.py``):

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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
