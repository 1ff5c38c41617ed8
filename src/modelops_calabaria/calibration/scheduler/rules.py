"""The rules the scheduler core consults (pure, no I/O): admission and staging.

Admission: how many loops (parallel) or claims per round (batched) the run
wants now — the fixed concurrency, or :func:`..elastic.target_loops` of the
live cluster (``concurrency: auto``) — lowered by the ramp (``ramp.py``); and
whether a loop may look ahead. Staging: the replicate ranges a trial runs in
(``pruning.stages``: one range without pruning).
"""

from __future__ import annotations

from dataclasses import dataclass

from modelops_calabaria.calibration.elastic import target_loops
from modelops_calabaria.calibration.ramp import Ramp


@dataclass(frozen=True)
class Rules:
    """What one wire's core needs to know about its job and its mode.

    Attributes:
        parallel: loops (True) or batched rounds (False).
        concurrency: the target at the start (loops, or claims per round).
        stages: ``[(start, end), ...]`` replicate ranges; one range ``(0, n)`` without pruning.
        claim_block: slots a parallel loop claims from the ledger at once (the rest wait in the reserve).
        look_ahead: a parallel loop may submit its next trial while its current one's last task runs.
        ramp: the ramp (None: off).
        loop_cap: the most loops ``auto`` runs (None: a fixed count; resizes are then ignored).
        known: trials the study had finished before this wire (the ramp starts from them).
    """

    parallel: bool
    concurrency: int
    stages: tuple[tuple[int, int], ...]
    claim_block: int = 1
    look_ahead: bool = False
    ramp: Ramp | None = None
    loop_cap: int | None = None
    known: int = 0

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.claim_block < 1 or not self.stages:
            raise ValueError(f"bad scheduler rules: {self}")
        if self.look_ahead and (not self.parallel or len(self.stages) > 1):
            raise ValueError("look-ahead needs parallel loops and unstaged trials")

    @property
    def n_replicates(self) -> int:
        return self.stages[-1][1]

    def target_for(self, live_threads: int) -> int:
        """The target for a cluster of ``live_threads`` threads (``concurrency: auto``)."""
        assert self.loop_cap is not None
        return target_loops(live_threads, self.n_replicates, self.loop_cap, self.parallel)

    def limit(self, admitted: int, finished: int, target: int) -> int:
        """Trials allowed in flight now: the target, lowered by the ramp."""
        if self.ramp is None:
            return target
        return self.ramp.limit(admitted, finished, target)

    def may_admit(self, flying: int, admitted: int, finished: int, target: int, look_ahead: bool) -> bool:
        """Whether one more trial may fly. Without a ramp each loop holds one trial (and its
        look-ahead), so nothing more is asked here. With one, fewer than the limit must be in
        flight; a look-ahead may exceed it only once the limit is the full target (the ramp is done)."""
        if self.ramp is None:
            return True
        limit = self.ramp.limit(admitted, finished, target)
        return flying < limit or (look_ahead and limit >= target)
