"""The scheduler core's per-loop state, and the error a broken invariant raises (no I/O)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from modelops_calabaria.calibration.scheduler import instructions as ins


class SchedulerInvariantError(AssertionError):
    """The core reached a state its invariants forbid, or got an event that answers no instruction (a bug)."""


class Phase(Enum):
    STARTING = "starting"
    HOLDING = "holding"
    CLAIMING = "claiming"
    ASKING = "asking"
    SUBMITTING = "submitting"
    TAIL = "tail"
    AWAITING = "awaiting"
    DECIDING = "deciding"
    TELLING = "telling"


@dataclass
class Loop:
    """One loop's state: the trials it holds and the step it is on."""

    id: int
    phase: Phase = Phase.STARTING
    group: list[int] = field(default_factory=list)  # trials submitted together, at stage ``stage``
    stage: int = 0
    following: int | None = None  # the look-ahead trial (parallel)
    ahead: bool = False  # the claim or ask under way is the look-ahead's
    admitted: int = 0  # admissions not yet a trial (parallel: 0 or 1; batched: the ask under way)
    round_size: int = 0  # batched: slots granted to this round
    round_left: int = 0  # batched: slots of the round still to ask
    asked: list[int] = field(default_factory=list)  # batched: trials asked this round, not yet submitted
    verdicts: dict[int, ins.Tell | None] = field(default_factory=dict)  # group trial -> its tell (None: goes on)
    tells: deque[ins.Tell] = field(default_factory=deque)
    aborting: bool = False
    claim: int = 0  # slots of the claim under way

    def held(self) -> list[int]:
        return self.group + self.asked + ([self.following] if self.following is not None else [])
