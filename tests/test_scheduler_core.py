"""The scheduler core, event by event: what it answers, in both modes, with every policy."""

from __future__ import annotations

import pytest

from modelops_calabaria.calibration.ramp import Ramp
from modelops_calabaria.calibration.scheduler import Rules, Scheduler, SchedulerInvariantError
from modelops_calabaria.calibration.scheduler.events import (Asked, Cancelled, Crashed, Decided, Failed, Finished, Idle,
                                                              Resized, SlotsGranted, StageDone, Start, StopRequested,
                                                              Submitted, TailReached, Told)
from modelops_calabaria.calibration.scheduler.instructions import (Ask, Await, AwaitTail, Claim, Decide, Exit, Hold,
                                                                    Release, StartLoop, Submit, Tell)

ONE = ((0, 3),)  # three replicates, one stage
STAGED = ((0, 2), (2, 4))  # pruning after 2 of 4


def core(**kw) -> Scheduler:
    kw.setdefault("parallel", True)
    kw.setdefault("concurrency", 1)
    kw.setdefault("stages", ONE)
    return Scheduler(Rules(**kw))


def run_one(s: Scheduler, loop: int, trial: int, outcome: str = "COMPLETE") -> None:
    """Carry one unstaged parallel trial from its ask to its tell."""
    assert s.handle(Asked(loop, trial)) == [Submit(loop, (trial,), 0, s.rules.n_replicates)]
    assert s.handle(Submitted(loop, 1)) == [Await(loop, (trial,))]
    failed = frozenset({trial}) if outcome == "FAIL" else frozenset()
    assert s.handle(StageDone(loop, failed)) == [Tell(loop, trial, outcome)]


def test_parallel_loop_claims_asks_submits_waits_tells_then_ends_when_the_budget_is_spent():
    s = core()
    assert s.handle(Start()) == [StartLoop(0)]
    assert s.handle(Idle(0)) == [Claim(0, 1)]
    assert s.handle(SlotsGranted(0, 1)) == [Ask(0)]
    run_one(s, 0, 7)
    assert s.handle(Told(0, 7)) == [Claim(0, 1)]
    assert s.handle(SlotsGranted(0, 0)) == [Exit(0)]
    assert s.budget_spent and s.handle(Finished()) == []
    assert (s.granted, s.asked, s.told, s.released) == (1, 1, 1, 0)


def test_the_reserve_serves_several_loops_per_claim_and_is_released_at_the_end():
    s = core(concurrency=2, claim_block=3)
    assert s.handle(Start()) == [StartLoop(0), StartLoop(1)]
    assert s.handle(Idle(0)) == [Claim(0, 3)]
    assert s.handle(SlotsGranted(0, 3)) == [Ask(0)]
    assert s.handle(Idle(1)) == [Ask(1)]  # from the reserve: no round trip to the ledger
    run_one(s, 0, 0)
    s.handle(StopRequested())
    assert s.handle(Told(0, 0)) == [Exit(0)]
    run_one(s, 1, 1, "FAIL")
    assert s.handle(Told(1, 1)) == [Exit(1)]
    assert s.handle(Finished()) == [Release(1)]
    assert s.granted - s.released == s.asked == 2


def test_a_batched_round_takes_what_is_granted_and_tells_each_trial_as_its_stage_says():
    s = core(parallel=False, concurrency=4)
    assert s.handle(Start()) == [StartLoop(0)]
    assert s.handle(Idle(0)) == [Claim(0, 4)]
    assert s.handle(SlotsGranted(0, 2)) == [Ask(0)]
    assert s.handle(Asked(0, 10)) == [Ask(0)]
    assert s.handle(Asked(0, 11)) == [Submit(0, (10, 11), 0, 3)]
    assert s.handle(Submitted(0, 1)) == [Await(0, (10, 11))]
    assert s.handle(StageDone(0, frozenset({10}))) == [Tell(0, 10, "FAIL")]
    assert s.handle(Told(0, 10)) == [Tell(0, 11, "COMPLETE")]
    assert s.handle(Told(0, 11)) == [Claim(0, 4)]
    assert s.handle(SlotsGranted(0, 0)) == [Exit(0)]


def test_a_stage_decides_prunes_goes_on_and_a_pruned_trial_spends_one_slot():
    s = core(parallel=False, concurrency=2, stages=STAGED)
    s.handle(Start())
    s.handle(Idle(0))
    s.handle(SlotsGranted(0, 2))
    s.handle(Asked(0, 1))
    assert s.handle(Asked(0, 2)) == [Submit(0, (1, 2), 0, 2)]
    s.handle(Submitted(0, 1))
    assert s.handle(StageDone(0)) == [Decide(0, (1, 2))]
    assert s.handle(Decided(0, frozenset({1}))) == [Tell(0, 1, "PRUNED")]
    assert s.handle(Told(0, 1)) == [Submit(0, (2,), 2, 4)]  # the survivor's next stage
    s.handle(Submitted(0, 1))
    assert s.handle(StageDone(0)) == [Tell(0, 2, "COMPLETE")]  # the last stage: no decision
    s.handle(Told(0, 2))
    assert (s.granted, s.asked, s.told) == (2, 2, 2)


def test_a_cancelled_run_starts_no_further_stage():
    s = core(stages=STAGED)
    s.handle(Start())
    s.handle(Idle(0))
    s.handle(SlotsGranted(0, 1))
    s.handle(Asked(0, 5))
    s.handle(Submitted(0, 1))
    s.handle(StopRequested())
    s.handle(Cancelled())
    assert s.handle(StageDone(0)) == [Decide(0, (5,))]
    assert s.handle(Decided(0)) == [Tell(0, 5, "FAIL", "cancelled")]
    assert s.handle(Told(0, 5)) == [Exit(0)]


def test_a_look_ahead_asks_the_next_trial_while_the_current_ones_last_task_runs():
    s = core(concurrency=2, look_ahead=True, loop_cap=8)
    s.handle(Start())
    s.handle(Idle(0))
    s.handle(SlotsGranted(0, 1))
    s.handle(Asked(0, 1))
    assert s.handle(Submitted(0, 3)) == [AwaitTail(0, 1)]  # three tasks: wait for the tail only
    assert s.handle(TailReached(0)) == [Claim(0, 1)]
    s.handle(SlotsGranted(0, 1))
    assert s.handle(Asked(0, 2)) == [Submit(0, (2,), 0, 3)]
    assert s.handle(Submitted(0, 1)) == [Await(0, (1,))]
    assert s.flying == 2 and s.loops[0].held() == [1, 2]
    assert s.handle(StageDone(0)) == [Tell(0, 1, "COMPLETE")]
    assert s.handle(Told(0, 1)) == [Await(0, (2,))]  # one task: the next trial is waited for whole
    assert s.handle(StageDone(0)) == [Tell(0, 2, "COMPLETE")]
    s.handle(StopRequested())
    assert s.handle(Told(0, 2)) == [Exit(0)]


def test_a_look_ahead_that_finds_the_budget_spent_waits_for_the_current_trial():
    s = core(concurrency=2, look_ahead=True, loop_cap=8)
    s.handle(Start())
    s.handle(Idle(0))
    s.handle(SlotsGranted(0, 1))
    s.handle(Asked(0, 1))
    s.handle(Submitted(0, 2))
    assert s.handle(TailReached(0)) == [Claim(0, 1)]
    assert s.handle(SlotsGranted(0, 0)) == [Await(0, (1,))]
    s.handle(StageDone(0))
    assert s.handle(Told(0, 1)) == [Exit(0)]


def test_the_ramp_holds_a_loop_until_enough_trials_are_told():
    s = core(concurrency=2, ramp=Ramp(per=2, floor=1))
    s.handle(Start())
    for loop, trial in ((0, 0), (1, 1)):  # the first wave: both loops at once
        s.handle(Idle(loop))
        s.handle(SlotsGranted(loop, 1))
        run_one(s, loop, trial)
    assert s.handle(Told(0, 0)) == [Hold(0)]  # 1 told: limit max(1, 1 // 2) = 1, and trial 1 flies
    assert s.handle(Idle(0)) == [Hold(0)]
    assert s.handle(Told(1, 1)) == [Claim(1, 1)]  # 2 told: limit 1, none flying
    assert s.handle(Idle(0)) == [Hold(0)]


def test_resizes_start_loops_up_to_the_target_and_loops_above_it_retire_after_their_tell():
    s = core(concurrency=2, loop_cap=16, stages=((0, 1),))
    s.handle(Start())
    assert s.handle(Resized(3)) == [StartLoop(2), StartLoop(3), StartLoop(4), StartLoop(5)]  # 2 x 3 threads
    s.handle(Idle(5))
    s.handle(SlotsGranted(5, 1))
    run_one(s, 5, 9)
    assert s.handle(Resized(1)) == [] and s.target == 2
    assert s.handle(Told(5, 9)) == [Exit(5)]  # above the target: it leaves holding nothing
    assert s.handle(Idle(4)) == [Exit(4)]
    assert s.handle(Idle(0)) == [Claim(0, 1)]


def test_a_fixed_concurrency_ignores_resizes():
    s = core(concurrency=2)
    s.handle(Start())
    assert s.handle(Resized(40)) == [] and s.target == 2


def test_a_failed_ask_keeps_its_slot_and_the_loop_ends_fatally():
    s = core()
    s.handle(Start())
    s.handle(Idle(0))
    s.handle(SlotsGranted(0, 1))
    assert s.handle(Failed(0)) == [Exit(0, fatal=True)]
    assert s.fatal and s.ask_failed == 1 and s.granted - s.released == 1  # not released: the ask may have made it
    assert s.handle(Finished()) == []


def test_a_batched_ask_failure_gives_back_the_rest_of_the_round_and_fails_its_asked_trials():
    s = core(parallel=False, concurrency=4)
    s.handle(Start())
    s.handle(Idle(0))
    s.handle(SlotsGranted(0, 4))
    s.handle(Asked(0, 0))
    assert s.handle(Failed(0)) == [Release(2), Tell(0, 0, "FAIL", "coordinator error")]
    assert s.handle(Told(0, 0)) == [Exit(0, fatal=True)]
    assert (s.granted, s.asked, s.ask_failed, s.released) == (4, 1, 1, 2)


def test_a_tell_that_raises_leaves_its_trial_for_recovery_and_fails_the_others():
    s = core(concurrency=2, look_ahead=True, loop_cap=8)
    s.handle(Start())
    s.handle(Idle(0))
    s.handle(SlotsGranted(0, 1))
    s.handle(Asked(0, 1))
    s.handle(Submitted(0, 2))
    s.handle(TailReached(0))
    s.handle(SlotsGranted(0, 1))
    s.handle(Asked(0, 2))
    s.handle(Submitted(0, 2))
    s.handle(StageDone(0))
    assert s.handle(Failed(0)) == [Tell(0, 2, "FAIL", "coordinator error")]  # trial 1's tell raised
    assert s.handle(Told(0, 2)) == [Exit(0, fatal=True)]
    assert (s.asked, s.told, s.lost) == (2, 1, 1)


def test_a_crashed_loop_leaves_its_trials_for_recovery():
    s = core(concurrency=2)
    s.handle(Start())
    s.handle(Idle(0))
    s.handle(SlotsGranted(0, 1))
    s.handle(Asked(0, 3))
    assert s.handle(Crashed(0)) == [] and s.lost == 1 and 0 not in s.loops
    assert s.handle(Idle(1)) == [Exit(1)]  # the run stops


@pytest.mark.parametrize("events, why", [
    ([Idle(0), Told(0, 3)], "does not answer"),  # a tell nobody asked for
    ([Idle(0), SlotsGranted(0, 2)], "granted to a claim of 1"),  # the ledger never grants more than asked
    ([Idle(0), SlotsGranted(0, 1), Asked(0, 1), Submitted(0, 1), StageDone(0, frozenset({8}))], "does not hold"),
    ([Idle(7)], "not running"),
])
def test_an_event_that_answers_no_instruction_is_a_bug(events, why):
    s = core()
    s.handle(Start())
    with pytest.raises(SchedulerInvariantError, match=why):
        for e in events:
            s.handle(e)


def test_the_invariants_catch_a_count_out_of_step():
    s = core()
    s.handle(Start())
    s.handle(Idle(0))
    s.handle(SlotsGranted(0, 1))
    s.reserve += 1  # a slot from nowhere
    with pytest.raises(SchedulerInvariantError, match="slots: granted"):
        s.check_invariants()
