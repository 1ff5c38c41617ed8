"""What the executor tells the scheduler core: one frozen dataclass per kind of event.

Every event but :class:`Start`, :class:`Resized`, :class:`StopRequested`,
:class:`Cancelled` and :class:`Finished` comes from one loop (``loop``) and
answers the instruction that loop was last given; the core answers it with
that loop's next instruction. Times are not events' business: the core has no
clock.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Start:
    """The run begins: start the first loops."""


@dataclass(frozen=True, slots=True)
class Idle:
    """``loop`` holds no trial and wants work (its first step, and after a :class:`~.instructions.Hold`)."""

    loop: int


@dataclass(frozen=True, slots=True)
class SlotsGranted:
    """The ledger granted ``granted`` of the slots ``loop`` claimed (0: the budget is spent)."""

    loop: int
    granted: int


@dataclass(frozen=True, slots=True)
class Asked:
    """``loop``'s ask created trial ``trial`` on the shared study."""

    loop: int
    trial: int


@dataclass(frozen=True, slots=True)
class Submitted:
    """``loop``'s submission is running as ``tasks`` tasks (for a group: the first trial's)."""

    loop: int
    tasks: int


@dataclass(frozen=True, slots=True)
class TailReached:
    """Only the last task of ``loop``'s current trial is unfinished."""

    loop: int


@dataclass(frozen=True, slots=True)
class StageDone:
    """The stage ``loop`` awaited ended for every trial of its group; ``failed``: the trials
    whose evaluation has no usable loss (an error, no loss, a non-finite combined loss)."""

    loop: int
    failed: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Decided:
    """The pruning rule's decision for the trials ``loop`` asked about: ``pruned`` stop here."""

    loop: int
    pruned: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Told:
    """``loop``'s tell of ``trial`` was handed to the asker."""

    loop: int
    trial: int


@dataclass(frozen=True, slots=True)
class Failed:
    """``loop``'s last instruction raised (the executor keeps the exception). What failed is
    the step the core gave it: a claim, an ask, a submission, a wait, a decision or a tell."""

    loop: int


@dataclass(frozen=True, slots=True)
class Crashed:
    """``loop`` died between steps (a bug in the executor): the trials it holds are left RUNNING
    for recovery (lost), the slot it was asking on is kept, the rest of its round given back."""

    loop: int


@dataclass(frozen=True, slots=True)
class Resized:
    """The cluster has ``live_threads`` worker threads now (``concurrency: auto``)."""

    live_threads: int


@dataclass(frozen=True, slots=True)
class StopRequested:
    """Stop admitting trials (a stop rule, a signal, ``request_stop``); trials in flight end and are told."""


@dataclass(frozen=True, slots=True)
class Cancelled:
    """Trials in flight were cancelled (shutdown): a staged trial starts no further stage."""


@dataclass(frozen=True, slots=True)
class Finished:
    """Every loop has exited: give back the reserve."""


Event = (Start | Idle | SlotsGranted | Asked | Submitted | TailReached | StageDone | Decided | Told | Failed | Crashed | Resized
         | StopRequested | Cancelled | Finished)
