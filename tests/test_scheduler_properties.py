"""The scheduler core under random event sequences (Hypothesis, no threads, no I/O).

A state machine plays the world around the core: a ledger with a budget that
other coordinators also claim from, asks that fail (and may or may not have
created their trial), submissions, waits, decisions and tells that fail,
stages that end with any subset of trials failed, pruning decisions, resizes up
and down, stop, cancellation, and loops that crash at any step. After every
step it checks the core's own invariants and, from outside, what recovery
would find if this coordinator were killed right then: never more trials than
the slots it holds, so ``Ledger.settle`` leaves the study within its budget.
At the end it drives every loop out and checks that every asked trial was told
exactly once or left for recovery, and that every slot was asked or given back.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from modelops_calabaria.calibration.ramp import Ramp
from modelops_calabaria.calibration.scheduler import Rules, Scheduler
from modelops_calabaria.calibration.scheduler import events as ev
from modelops_calabaria.calibration.scheduler import instructions as ins

ANSWERED = (ins.Claim, ins.Ask, ins.Submit, ins.AwaitTail, ins.Await, ins.Decide, ins.Tell, ins.Hold)


@st.composite
def rules_strategy(draw: st.DrawFn) -> Rules:
    parallel = draw(st.booleans())
    staged = draw(st.booleans())
    stages = ((0, 2), (2, 3), (3, 4)) if staged else ((0, draw(st.integers(1, 4))),)
    auto = draw(st.booleans())
    ramp = draw(st.one_of(st.none(), st.builds(Ramp, per=st.integers(1, 3), floor=st.integers(1, 3),
                                               first=st.one_of(st.none(), st.integers(1, 4)))))
    return Rules(parallel=parallel, concurrency=draw(st.integers(1, 5)), stages=stages,
                 claim_block=draw(st.integers(1, 4)), look_ahead=parallel and auto and not staged,
                 ramp=ramp, loop_cap=draw(st.integers(1, 6)) if auto else None, known=draw(st.integers(0, 3)))


class World(RuleBasedStateMachine):
    """The core, and everything around it that its instructions touch, as plain counts."""

    @initialize(rules=rules_strategy(), budget=st.integers(0, 14), others=st.integers(0, 4))
    def start(self, rules: Rules, budget: int, others: int) -> None:
        self.rules = rules
        self.core = Scheduler(rules)
        self.max_trials = budget
        self.others = min(others, budget)  # slots other coordinators hold
        self.mine = 0  # slots this coordinator holds at the ledger
        self.pending: dict[int, ins.Instruction | None] = {}  # loop -> the step it carries out (None: start)
        self.next_trial = 0
        self.asked: set[int] = set()
        self.told: list[int] = []
        self.lost: set[int] = set()
        self.failed_asks = 0
        self.stopped = False
        self.most_target = rules.concurrency
        self.carry(self.core.handle(ev.Start()))

    # -- the world carries out instructions --------------------------------------------------------

    def carry(self, out: list[ins.Instruction]) -> None:
        for i in out:
            if isinstance(i, ins.StartLoop):
                assert i.loop not in self.pending
                self.pending[i.loop] = None
            elif isinstance(i, ins.Release):
                assert i.n > 0
                self.mine -= i.n
            elif isinstance(i, ins.Exit):
                del self.pending[i.loop]
            else:
                assert isinstance(i, ANSWERED), i
                assert i.loop in self.pending, f"{i} for a loop that is not running"
                if isinstance(i, ins.Claim):
                    assert not (self.stopped or self.core.fatal), "a claim after the stop"
                    assert i.n >= 1
                if isinstance(i, ins.Ask) and self.rules.parallel:  # in parallel mode every ask is a new admission
                    assert not (self.stopped or self.core.fatal), "an ask after the stop"
                if isinstance(i, ins.Tell):
                    assert i.trial in self.asked and i.trial not in self.told and i.trial not in self.lost
                self.pending[i.loop] = i

    def feed(self, event: ev.Event) -> None:
        self.carry(self.core.handle(event))

    def answer(self, loop: int, fail: bool, data: st.DataObject | None) -> None:
        """Answer ``loop``'s step: it fails, or ends with outcomes drawn from ``data`` (None: the
        plainest ones: every free slot granted, one task, no stage failed, nothing pruned)."""
        i = self.pending[loop]
        if i is None or isinstance(i, ins.Hold):
            self.feed(ev.Idle(loop))
            return
        if fail:
            if isinstance(i, ins.Ask):
                self.failed_asks += 1  # perhaps a trial was created, perhaps not: counted as one (worst case)
            if isinstance(i, ins.Tell):
                self.lost.add(i.trial)
            self.feed(ev.Failed(loop))
            return
        if isinstance(i, ins.Claim):
            free = self.max_trials - self.others - self.mine
            most = max(0, min(i.n, free))
            granted = most if data is None else data.draw(st.integers(0, most), label="granted")
            self.mine += granted
            self.feed(ev.SlotsGranted(loop, granted))
        elif isinstance(i, ins.Ask):
            number, self.next_trial = self.next_trial, self.next_trial + 1
            self.asked.add(number)
            self.feed(ev.Asked(loop, number))
        elif isinstance(i, ins.Submit):
            assert set(i.trials) <= self.asked and 0 <= i.start < i.end <= self.rules.n_replicates
            self.feed(ev.Submitted(loop, 1 if data is None else data.draw(st.integers(1, 3), label="tasks")))
        elif isinstance(i, ins.AwaitTail):
            self.feed(ev.TailReached(loop))
        elif isinstance(i, ins.Await):
            failed = set() if data is None else data.draw(st.sets(st.sampled_from(i.trials)), label="failed")
            self.feed(ev.StageDone(loop, frozenset(failed)))
        elif isinstance(i, ins.Decide):
            pruned = set() if data is None else data.draw(st.sets(st.sampled_from(i.trials)), label="pruned")
            self.feed(ev.Decided(loop, frozenset(pruned)))
        else:
            assert isinstance(i, ins.Tell)
            self.told.append(i.trial)
            self.feed(ev.Told(loop, i.trial))

    # -- rules: what may happen next ----------------------------------------------------------------

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data(), fail=st.booleans())
    def a_loop_step_ends(self, data: st.DataObject, fail: bool) -> None:
        loop = data.draw(st.sampled_from(sorted(self.pending)), label="loop")
        step = self.pending[loop]
        fail = fail and step is not None and not isinstance(step, ins.Hold) and data.draw(st.integers(0, 5)) == 0
        self.answer(loop, fail, data)

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data())
    def a_loop_crashes(self, data: st.DataObject) -> None:
        loop = data.draw(st.sampled_from(sorted(self.pending)), label="loop")
        step = self.pending[loop]
        if isinstance(step, ins.Ask):
            self.failed_asks += 1
        self.lost |= set(self.core.loops[loop].held())
        del self.pending[loop]
        self.feed(ev.Crashed(loop))

    @rule(live=st.integers(0, 30))
    def cluster_resized(self, live: int) -> None:
        self.feed(ev.Resized(live))
        self.most_target = max(self.most_target, self.core.target)

    @rule()
    def stop_requested(self) -> None:
        self.stopped = True
        self.feed(ev.StopRequested())

    @rule()
    def cancelled(self) -> None:
        self.feed(ev.Cancelled())

    @rule(n=st.integers(1, 3))
    def another_coordinator_claims(self, n: int) -> None:
        self.others += max(0, min(n, self.max_trials - self.others - self.mine))

    # -- what must hold at every point ------------------------------------------------------------

    @invariant()
    def the_core_agrees_with_itself(self) -> None:
        self.core.check_invariants()

    @invariant()
    def killed_now_the_budget_holds(self) -> None:
        # Recovery gives back what this coordinator holds beyond its trials (Ledger.settle):
        # that is never negative, even if every failed ask created its trial.
        trials_at_most = len(self.asked) + self.failed_asks
        assert self.core.granted - self.core.released == self.mine
        assert self.mine >= trials_at_most, "more trials than claimed slots: settle would overshoot the budget"
        assert self.others + self.mine <= self.max_trials

    @invariant()
    def every_trial_told_once(self) -> None:
        assert len(self.told) == len(set(self.told)) == self.core.told
        assert not (set(self.told) & self.lost) and len(self.lost) == self.core.lost
        assert set(self.core.in_flight) == self.asked - set(self.told) - self.lost

    @invariant()
    def in_flight_within_the_loops(self) -> None:
        if self.rules.parallel:
            assert self.core.flying <= len(self.core.loops) * (2 if self.rules.look_ahead else 1)
        else:
            assert self.core.flying <= self.most_target

    def teardown(self) -> None:
        if not hasattr(self, "core"):
            return
        self.feed(ev.StopRequested())
        for _ in range(10_000):
            if not self.pending:
                break
            self.answer(min(self.pending), False, None)
        assert not self.pending, "loops never ended"
        self.feed(ev.Finished())
        assert not self.core.in_flight and self.core.reserve == 0 and not self.core.loops
        assert set(self.told) | self.lost == self.asked
        assert self.mine == len(self.asked) + self.failed_asks  # every slot asked (or kept by a failed ask) or given back


# Derandomized: the same 300 sequences every run (a failure reproduces); no example database on disk.
World.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None, derandomize=True, database=None,
                                   suppress_health_check=[HealthCheck.too_slow])
test_scheduler_under_random_events = World.TestCase
