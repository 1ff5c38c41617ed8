"""What the scheduler core asks the executor to do: one frozen dataclass per kind of step.

Instructions with a ``loop`` are carried out by that loop, one at a time, and
answered with one event (``events.py``), except :class:`Exit` (the loop ends)
and :class:`Release` (no answer: the slots are the ledger's again from the
moment the core issues it). :class:`StartLoop` starts a loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Outcome = Literal["COMPLETE", "FAIL", "PRUNED"]
Why = Literal["evaluation", "coordinator error", "cancelled"]


@dataclass(frozen=True, slots=True)
class StartLoop:
    """Start a loop under id ``loop``; its first event is :class:`~.events.Idle`."""

    loop: int


@dataclass(frozen=True, slots=True)
class Claim:
    """Take ``n`` budget slots from the ledger; answer :class:`~.events.SlotsGranted`."""

    loop: int
    n: int


@dataclass(frozen=True, slots=True)
class Ask:
    """Ask one trial on a slot already claimed; answer :class:`~.events.Asked` (or Failed)."""

    loop: int


@dataclass(frozen=True, slots=True)
class Submit:
    """Submit replicates ``start`` to ``end - 1`` of every trial of ``trials``; answer
    :class:`~.events.Submitted`. ``start`` 0 and the loop already holding a current trial:
    the trial is a look-ahead, submitted while the current one's last task runs."""

    loop: int
    trials: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class AwaitTail:
    """Wait until one task of ``trial`` is left; answer :class:`~.events.TailReached`."""

    loop: int
    trial: int


@dataclass(frozen=True, slots=True)
class Await:
    """Wait for the submitted stage of every trial of ``trials`` (one gather); answer :class:`~.events.StageDone`."""

    loop: int
    trials: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Decide:
    """Apply the pruning rule to ``trials`` (each after its last stage); answer :class:`~.events.Decided`."""

    loop: int
    trials: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Tell:
    """Tell ``trial`` ``outcome``; a FAIL says ``why``: its evaluation's error, the loop's
    coordinator error, or the shutdown's cancellation. Answer :class:`~.events.Told`."""

    loop: int
    trial: int
    outcome: Outcome
    why: Why = "evaluation"


@dataclass(frozen=True, slots=True)
class Hold:
    """The ramp holds ``loop``: wait until a trial is told (or a short while); answer :class:`~.events.Idle`."""

    loop: int


@dataclass(frozen=True, slots=True)
class Release:
    """Give ``n`` claimed slots back to the ledger (no answer)."""

    n: int


@dataclass(frozen=True, slots=True)
class Exit:
    """``loop`` ends. ``fatal``: because of its error (the run stops and raises it)."""

    loop: int
    fatal: bool = False


Instruction = StartLoop | Claim | Ask | Submit | AwaitTail | Await | Decide | Tell | Hold | Release | Exit
