"""The scheduler core's invariants, checked after every event (``core.py``'s docstring states them).

Every count is kept as the core goes: after a loop's event the run's counts and that loop are
checked (O(1)); the sums over every loop (trials held, slots being asked, admissions) after
every other event, and after every event in the tests (``check_invariants(full=True)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelops_calabaria.calibration.scheduler.state import Phase, SchedulerInvariantError

if TYPE_CHECKING:
    from modelops_calabaria.calibration.scheduler.core import Scheduler


def check(core: Scheduler, loop: int | None = None) -> None:
    """Raise :class:`SchedulerInvariantError` when a count of ``core`` disagrees with another.

    ``loop``: check the run's counts and that loop only (O(1): what the core does after each of
    that loop's events, under the executor's lock); None: every loop, and that the loops' sums
    match the run's counts (O(loops): after every other event, and in the tests after every one).
    """
    counts = (core.granted, core.released, core.reserve, core.taking, core.asked, core.ask_failed, core.told,
              core.lost, core.flying)
    if min(counts) < 0:
        raise SchedulerInvariantError(f"a negative count: {counts}")
    if core.granted != core.asked + core.ask_failed + core.released + core.reserve + core.taking:
        raise SchedulerInvariantError(
            f"slots: granted {core.granted} != asked {core.asked} + ask failed {core.ask_failed} + released "
            f"{core.released} + reserve {core.reserve} + being asked {core.taking}")
    if core.asked != core.told + core.lost + len(core.in_flight):
        raise SchedulerInvariantError(
            f"trials: asked {core.asked} != told {core.told} + lost {core.lost} + in flight {len(core.in_flight)}")
    if not core.telling <= core.in_flight.keys():
        raise SchedulerInvariantError(f"telling trials not in flight: {sorted(core.telling - core.in_flight.keys())}")
    held = taking = admitted = 0
    loops = core.loops.values() if loop is None else [core.loops[loop]] if loop in core.loops else []
    for lp in loops:
        trials = lp.held()
        held += len(trials)
        admitted += lp.admitted
        if any(core.in_flight.get(t) != lp.id for t in trials):
            raise SchedulerInvariantError(f"loop {lp.id} holds trials {trials} the core does not give it")
        if core.rules.parallel:
            taking += lp.phase is Phase.ASKING
            if len(lp.group) > 1 or lp.admitted > 1 or len(trials) + lp.admitted > (2 if core.rules.look_ahead else 1):
                raise SchedulerInvariantError(f"loop {lp.id} holds {trials} and {lp.admitted} admission(s)")
            if lp.following is not None and not lp.group and not lp.aborting:
                raise SchedulerInvariantError(f"loop {lp.id} looks ahead without a current trial")
        else:
            taking += lp.round_left
            if len(lp.group) + len(lp.asked) + lp.round_left > lp.round_size or lp.admitted > 1:
                raise SchedulerInvariantError(f"loop {lp.id}'s round holds more than it claimed")
    if core.target < 1 or core.finished > core.admitted:
        raise SchedulerInvariantError(f"target {core.target}, finished {core.finished} > admitted {core.admitted}")
    if loop is not None:
        return
    if held != len(core.in_flight):
        raise SchedulerInvariantError(f"loops hold {held} trials, {len(core.in_flight)} in flight")
    if taking != core.taking:
        raise SchedulerInvariantError(f"loops are asking {taking} slots, counted {core.taking}")
    if core.flying != len(core.in_flight) + admitted:
        raise SchedulerInvariantError(f"flying {core.flying} != in flight {len(core.in_flight)} + admitted {admitted}")
