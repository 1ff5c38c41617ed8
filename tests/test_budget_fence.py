"""The exact budget through a coordinator declared lost while it was only slow.

The interleaving behind a study of 162 trials for a budget of 160 on a loaded host:
coordinator A holds claimed slots it has not asked yet (its reserve); its heartbeat
thread starves past the grace period; coordinator B recovers A as lost and gives
A's unasked claims back to the budget; B claims and asks them; A wakes up and asks
on the slots it still believed were its own (and at its end releases its reserve,
a second give-back). Each step is a direct backend call on real SQLite, journal and
PostgreSQL storages, two backends (two engines) as two processes would hold them.
"""

from __future__ import annotations

import os
import socket
import time

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from modelops_calabaria.backend.base import COORDINATOR_ATTR
from modelops_calabaria.backend.factory import open_store
from modelops_calabaria.backend.ledger import Coordinator
from modelops_calabaria.backend.plain_ask import ask_plain
from modelops_calabaria.backend.relational import RelationalBackend
from modelops_calabaria.calibration.recovery import recover_stale_trials
from modelops_calabaria.errors import ClaimLostError
from modelops_calabaria.storage import parse_storage_url

from conftest import unique

SPACE = {"x": FloatDistribution(0.0, 1.0)}


def _ask(backend, sid: int, owner: str, x: float) -> int:
    return backend.create_trial(sid, {"x": x}, SPACE, {COORDINATOR_ATTR: owner})[0]


def _beat(backend, name: str, owner: str, at: float) -> None:
    backend.ledger.beat(name, Coordinator(owner, socket.gethostname(), os.getpid(), at))


@pytest.fixture
def two_coordinators(storage_url):
    target = parse_storage_url(storage_url)
    a, b = open_store(target, 2), open_store(target, 2)
    name = unique("fence")
    optuna.create_study(study_name=name, storage=a.optuna_storage)
    try:
        yield a, b, name
    finally:
        a.close()
        b.close()


def _n_trials(backend, name: str) -> int:
    return len(backend.trial_columns(backend.study_id(name)))


def test_a_slow_coordinator_recovered_as_lost_cannot_ask_on_slots_given_back(two_coordinators):
    a, b, name = two_coordinators
    budget, grace = 4, 3.0
    a.ledger.ensure_budget(name, budget)
    t0 = time.time()
    _beat(a, name, "A", t0)
    assert a.ledger.claim(name, 2, owner="A") == 2  # one for the trial it asks now, one in reserve
    _ask(a, a.study_id(name), "A", 0.1)
    # A's heartbeat starves: B, at a moment when A has been silent for longer than the grace, recovers it.
    study_b = optuna.load_study(study_name=name, storage=b.optuna_storage)
    assert recover_stale_trials(study_b, b.ledger, grace, at=t0 + grace + 1, backend=b) == [0]
    assert b.ledger.budget(name) == (1, budget)  # A's unasked reserve went back
    _beat(b, name, "B", t0 + grace + 1)
    assert b.ledger.claim(name, 3, owner="B") == 3
    for i in range(3):
        _ask(b, b.study_id(name), "B", 0.2 + i / 10)
    # A wakes up: its ask on the slot it reserved is refused, and no trial is created.
    with pytest.raises(ClaimLostError, match="declared it lost"):
        _ask(a, a.study_id(name), "A", 0.9)
    with pytest.raises(ClaimLostError):
        a.ledger.claim(name, 1, owner="A")
    a.ledger.release(name, 1, owner="A")  # its end-of-run release of the reserve gives nothing back twice
    assert b.ledger.budget(name) == (budget, budget)
    assert b.ledger.claim(name, 1, owner="B") == 0
    assert _n_trials(b, name) == budget


def test_an_enqueued_trial_and_a_plain_ask_spend_a_claim_too(two_coordinators):
    """The other two ways a trial is asked: taking an enqueued one, and Optuna's own ask."""
    a, b, name = two_coordinators
    a.ledger.ensure_budget(name, 10)
    study_a = optuna.load_study(study_name=name, storage=a.optuna_storage)
    study_a.enqueue_trial({"x": 0.5})
    sid = a.study_id(name)
    t0 = time.time()
    _beat(a, name, "A", t0)
    assert a.ledger.claim(name, 2, owner="A") == 2
    assert a.pop_waiting(sid, {COORDINATOR_ATTR: "A"}) is not None
    assert a.ledger.open_claims(name) == 1
    ask_plain(study_a, a, sid, SPACE, {COORDINATOR_ATTR: "A"})
    assert a.ledger.open_claims(name) == 0
    # Beyond its claims a coordinator is refused (it claims before every ask; an ask the database
    # committed and a retry repeated would otherwise be a trial over the budget).
    with pytest.raises(ClaimLostError, match="without an open budget claim"):
        _ask(a, sid, "A", 0.3)
    assert a.ledger.claim(name, 1, owner="A") == 1
    study_a.enqueue_trial({"x": 0.7})
    b.ledger.settle(name, "A")  # fenced: the enqueued trial is not taken on the slot given back
    with pytest.raises(ClaimLostError):
        a.pop_waiting(sid, {COORDINATOR_ATTR: "A"})
    with pytest.raises(ClaimLostError):
        ask_plain(study_a, a, sid, SPACE, {COORDINATOR_ATTR: "A"})
    assert a.ledger.budget(name) == (2, 10)
    states = [t.state for t in study_a.get_trials(deepcopy=False)]
    if isinstance(a, RelationalBackend):  # the take and the spend are one transaction: the trial stays WAITING
        assert states == [TrialState.RUNNING, TrialState.RUNNING, TrialState.WAITING]
    else:  # journal: Optuna's take cannot be undone, so the fenced coordinator's take is failed at once
        assert states == [TrialState.RUNNING, TrialState.RUNNING, TrialState.FAIL]


def test_settle_is_once_and_a_clean_exit_gives_back_what_is_open(two_coordinators):
    a, b, name = two_coordinators
    a.ledger.ensure_budget(name, 10)
    assert a.ledger.claim(name, 3, owner="A") == 3
    _ask(a, a.study_id(name), "A", 0.1)
    assert b.ledger.settle(name, "A") == 2
    assert a.ledger.settle(name, "A") == 0  # a second recoverer finds nothing
    assert a.ledger.budget(name) == (1, 10)
    assert a.ledger.claim(name, 3, owner="C") == 3
    a.ledger.forget(name, "C")  # a clean exit that could not release its reserve (a database blip)
    assert a.ledger.budget(name) == (1, 10) and a.ledger.open_claims(name) == 0
    # With nothing open, a budget that leaked (a kill between a spend and its insert on a journal) is repaired.
    assert a.ledger.reconcile(name, 1, expected_claimed=1)
    assert a.ledger.claim(name, 1, owner="D") == 1
    assert not a.ledger.reconcile(name, 1, expected_claimed=2)  # D holds an open claim: nothing changes
