"""A deterministic world for the scheduler core: every step succeeds, loops are served in turn.

Used by the rule tests (ramp, elastic, look-ahead) to watch the core's
instructions over a whole run without threads: each round, every running loop
gets the answer to its step; a loop the ramp holds re-checks once per round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from modelops_calabaria.calibration.scheduler import Rules, Scheduler
from modelops_calabaria.calibration.scheduler import events as ev
from modelops_calabaria.calibration.scheduler import instructions as ins


@dataclass(frozen=True)
class AskSeen:
    """One ask as the core admitted it: trials in flight with it, trials told before it, and
    whether it was a loop's look-ahead (the loop already held a trial)."""

    index: int
    flying: int
    told: int
    ahead: bool


@dataclass
class Trace:
    asks: list[AskSeen] = field(default_factory=list)
    claims: list[tuple[int, int]] = field(default_factory=list)  # (slots asked, trials told before)
    holds: int = 0
    exits: list[int] = field(default_factory=list)
    started: list[int] = field(default_factory=list)
    most_loops: int = 0
    core: Scheduler | None = None


def drive(rules: Rules, budget: int, tasks: int = 1, between_rounds: Callable[[int, Scheduler], list[ev.Event]] | None = None,
          max_rounds: int = 100_000) -> Trace:
    """Run the core until every loop exits; ``between_rounds(round, core)`` may return events to
    feed (resizes, a stop) before each round."""
    s = Scheduler(rules)
    trace = Trace(core=s)
    pending: dict[int, ins.Instruction | None] = {}
    free = budget
    numbers = iter(range(10**9))

    def carry(out: list[ins.Instruction]) -> None:
        nonlocal free
        for i in out:
            if isinstance(i, ins.StartLoop):
                pending[i.loop] = None
                trace.started.append(i.loop)
            elif isinstance(i, ins.Release):
                free += i.n
            elif isinstance(i, ins.Exit):
                del pending[i.loop]
                trace.exits.append(i.loop)
            else:
                if isinstance(i, ins.Claim):
                    trace.claims.append((i.n, s.told))
                if isinstance(i, ins.Hold):
                    trace.holds += 1
                pending[i.loop] = i

    carry(s.handle(ev.Start()))
    for rnd in range(max_rounds):
        if not pending:
            break
        for e in (between_rounds(rnd, s) if between_rounds else []):
            carry(s.handle(e))
        trace.most_loops = max(trace.most_loops, len(s.loops))
        for loop in sorted(pending):
            if loop not in pending:
                continue
            i = pending[loop]
            if i is None or isinstance(i, ins.Hold):
                answer: ev.Event = ev.Idle(loop)
            elif isinstance(i, ins.Claim):
                granted = min(i.n, free)
                free -= granted
                answer = ev.SlotsGranted(loop, granted)
            elif isinstance(i, ins.Ask):
                number = next(numbers)
                ahead = bool(s.loops[loop].group)
                trace.asks.append(AskSeen(number, s.flying, s.told, ahead))
                answer = ev.Asked(loop, number)
            elif isinstance(i, ins.Submit):
                answer = ev.Submitted(loop, tasks)
            elif isinstance(i, ins.AwaitTail):
                answer = ev.TailReached(loop)
            elif isinstance(i, ins.Await):
                answer = ev.StageDone(loop)
            elif isinstance(i, ins.Decide):
                answer = ev.Decided(loop)
            else:
                assert isinstance(i, ins.Tell)
                answer = ev.Told(loop, i.trial)
            carry(s.handle(answer))
    assert not pending, "the run did not end"
    carry(s.handle(ev.Finished()))
    return trace
