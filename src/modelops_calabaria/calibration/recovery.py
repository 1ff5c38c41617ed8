"""Coordinator heartbeats and recovery of trials whose coordinator died.

Optuna records heartbeats only inside ``study.optimize``; with ask/tell the
service does it itself: one ledger write per coordinator per interval (not one
per trial). A RUNNING trial whose owner has been silent for longer than the
grace period is set FAIL with reason "coordinator lost", by whichever
coordinator notices first (at its start, then every interval). Before that the
silent coordinator is settled (``Ledger.settle``): the budget slots it claimed
and never turned into trials are given back, and it is fenced, so that if it
was only slow it can no longer ask a trial on them.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import optuna

from modelops_calabaria.backend.base import COORDINATOR_ATTR, StudyBackend
from modelops_calabaria.backend.factory import backend_of
from modelops_calabaria.backend.ledger import Coordinator, Ledger, now
from modelops_calabaria.dbretry import retry_db
from modelops_calabaria.errors import CalabariaError
from modelops_calabaria.logging import get_logger

log = get_logger(__name__)

LOST_REASON = "coordinator lost"


def new_coordinator_id() -> str:
    """A unique id for this coordinator: host, pid and a random suffix."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _process_gone(c: Coordinator) -> bool:
    """True when ``c`` ran on this host and its process no longer exists (no need to wait for grace)."""
    if c.host != socket.gethostname() or c.pid == os.getpid():
        return False
    try:
        os.kill(c.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # a process with that pid exists (someone else's)
    return False


def recover_stale_trials(study: optuna.Study, ledger: Ledger, grace_s: float, *, at: float | None = None,
                         retry: bool = False, backend: StudyBackend | None = None) -> list[int]:
    """FAIL every RUNNING trial whose coordinator is silent for longer than ``grace_s``.

    A coordinator on this host whose process is gone is lost at once. A trial
    without an owner yet (asked a moment ago) is left alone until it is older
    than the grace period. With ``retry`` the parameters of each trial failed
    here are queued in the ledger to be asked again. Returns the numbers of the
    trials failed here.
    """
    at = now() if at is None else at
    name = study.study_name
    backend = backend or backend_of(study)
    study_id = retry_db("recover", lambda: backend.study_id(name))
    # Trials first, coordinators second: a coordinator beats before it creates its first
    # trial, so every owner of a trial read here has beaten by the time the ledger is read.
    # The other order let a coordinator that started a moment later lose its first trials.
    running = retry_db("recover", lambda: backend.running_trials(study_id))
    coords = ledger.coordinators(name)
    alive = {c.coordinator_id for c in coords if at - c.last_seen <= grace_s and not _process_gone(c)}
    # Fence the silent coordinators first (Ledger.settle): their open claims go back to the
    # budget, and from this transaction on they can neither claim nor ask. One that was only
    # slow (its heartbeat starved on a loaded host) cannot then spend a slot given back here
    # and re-spent elsewhere: it stops with ClaimLostError. Its trials are failed below.
    for c in coords:
        if c.coordinator_id not in alive:
            returned = ledger.settle(name, c.coordinator_id)
            if returned:
                log.warning("returned budget slots of a lost coordinator", study=name, coordinator=c.coordinator_id,
                            slots=returned)
            ledger.forget(name, c.coordinator_id)
    recovered = []
    for stored in running:
        t = stored.trial
        owner = t.system_attrs.get(COORDINATOR_ATTR)
        if owner in alive:
            continue
        started = t.datetime_start.timestamp() if t.datetime_start else at
        if owner is None and at - started <= grace_s:
            continue
        reason = f"{LOST_REASON}: coordinator {owner or '(unknown)'} sent no heartbeat for more than {grace_s:g} s"
        if retry_db("recover", lambda s=stored, r=reason: backend.fail_if_running(s.trial_id, r)):
            recovered.append(t.number)
            if retry and t.params:
                ledger.push_retry(name, dict(t.params))
    if recovered:
        log.warning("recovered stale trials", study=name, trials=recovered, reason=LOST_REASON)
    return recovered


def settle_orphans(study: optuna.Study, ledger: Ledger, grace_s: float, interval_s: float, *, retry: bool = False,
                   backend: StudyBackend | None = None) -> None:
    """Before a coordinator exits: wait (at most ``grace_s``) until RUNNING trials whose
    owner stopped beating are recovered, so that a finished run leaves none RUNNING.

    Trials of coordinators that still beat are theirs to finish and are not waited for.
    """
    deadline = now() + grace_s + interval_s
    backend = backend or backend_of(study)
    study_id = retry_db("recover", lambda: backend.study_id(study.study_name))
    while True:
        recover_stale_trials(study, ledger, grace_s, retry=retry, backend=backend)
        running = [s.trial for s in retry_db("recover", lambda: backend.running_trials(study_id))]  # before the ledger
        at = now()
        beating = {c.coordinator_id for c in ledger.coordinators(study.study_name) if at - c.last_seen <= 3 * interval_s}
        orphans = [t.number for t in running if t.system_attrs.get(COORDINATOR_ATTR) not in beating]
        if not orphans or at >= deadline:
            return
        log.info("waiting for trials of a silent coordinator to become stale", trials=orphans, grace_s=grace_s)
        time.sleep(min(interval_s, max(0.05, deadline - at)))


@dataclass
class Heartbeat:
    """A daemon thread that beats every ``interval_s`` and recovers stale trials."""

    study: optuna.Study
    ledger: Ledger
    coordinator_id: str
    interval_s: float
    grace_s: float
    retry: bool = False
    backend: StudyBackend | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="calabaria-heartbeat", daemon=True)

    def beat(self) -> None:
        """Record one heartbeat now."""
        self.ledger.beat(
            self.study.study_name, Coordinator(self.coordinator_id, socket.gethostname(), os.getpid(), now())
        )

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
                recover_stale_trials(self.study, self.ledger, self.grace_s, retry=self.retry, backend=self.backend)
            except CalabariaError as e:
                # A database blip must not kill the heartbeat; the next beat retries.
                log.warning("heartbeat failed", error=str(e))
            except Exception as e:  # noqa: BLE001 - a dead heartbeat thread gets this coordinator's live trials recovered as lost
                log.warning("heartbeat failed", error=f"{type(e).__name__}: {e}")

    def stop(self, *, forget: bool = True) -> None:
        """Stop beating; ``forget`` removes this coordinator from the ledger (clean exit)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s + 5)
        if forget:
            try:
                self.ledger.forget(self.study.study_name, self.coordinator_id)
            except CalabariaError as e:
                log.warning("could not remove coordinator from ledger", error=str(e))
