"""The scheduler core: events in, instructions out; no I/O, no threads, no clock.

The executor (``wire.py``) feeds :meth:`Scheduler.handle` what happened and
carries out what it returns. A loop is a sequence of steps: the core answers
each of its events with its next instruction (plus, at times, a
:class:`~.instructions.Release` to carry out first). Per trial::

              Claim ─► SlotsGranted ─► (slot taken) ─► Ask ─► Asked
                                                         │ Failed: slot kept, loop aborts
                                                         ▼
    ┌──────────────► Submit(stage) ─► Submitted ─► [AwaitTail ─► TailReached ─► look-ahead]
    │                                                 │
    │                                                 ▼
    │                                       Await ─► StageDone ──failed──► Tell FAIL
    │                                                 │ ok, last stage ──► Tell COMPLETE
    │                                                 ▼ ok, not last
    └──────── survivors ◄── Decide ─► Decided ──pruned──► Tell PRUNED
                                                   └──cancelled──► Tell FAIL
                                Tell ─► Told: the trial is done (Failed: lost, recovered as stale)

Invariants, asserted after every event (``invariants.py``; the sums over all
loops after every event of no loop, and in the tests after every event;
:class:`SchedulerInvariantError` when one breaks, which is a bug):

- slots: ``granted == asked + ask_failed + released + reserve + taking``: every
  slot the ledger granted is asked, kept by a failed ask, given back, waiting in
  the reserve, or being asked — once. So this coordinator never holds more
  trials than it was granted (a pruned trial is one asked trial: one slot);
- trials: ``asked == told + lost + in flight``; a trial is told once (a second
  tell, or a tell of a trial not being told, raises);
- flight: ``flying == in flight + admissions not yet asked``; a parallel loop
  holds at most one trial, two only with a look-ahead; a batched round at
  most its claims. With a ramp, a trial is admitted only while fewer than
  the ramp's limit fly; a look-ahead may exceed it only once the limit is the
  full target (checked at each admission). A resize down retires loops after
  their trials are told, so the trials in flight may exceed a lowered target
  until then.

A failed ask keeps its slot (counted in ``ask_failed``, never released): the
ask may have created the trial before it raised (an insert committed before
its connection dropped, an enqueued trial taken before its parameters were
written). Released, that slot could be asked again by another coordinator and
the study would end one trial over its budget; kept, the ledger's count for
this coordinator stays at least its trials, so ``Ledger.settle`` gives back
exactly the slots that became no trial, and ``reconcile`` on the next start
the rest.
"""

from __future__ import annotations

from collections import deque

from modelops_calabaria.calibration.scheduler import events as ev
from modelops_calabaria.calibration.scheduler import instructions as ins
from modelops_calabaria.calibration.scheduler.invariants import check
from modelops_calabaria.calibration.scheduler.rules import Rules
from modelops_calabaria.calibration.scheduler.state import Loop, Phase, SchedulerInvariantError

__all__ = ["Loop", "Phase", "Scheduler", "SchedulerInvariantError"]


class Scheduler:
    """The state of one wire's run; :meth:`handle` is the only way to change it."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.target = rules.concurrency
        self.loops: dict[int, Loop] = {}
        # slots
        self.granted = self.released = self.reserve = self.taking = 0
        self.asked = self.ask_failed = 0
        # trials
        self.in_flight: dict[int, int] = {}  # trial -> loop holding it
        self.telling: set[int] = set()
        self.tasks: dict[int, int] = {}  # submitted trial -> its tasks (look-ahead)
        self.told = self.lost = 0
        # admission (the ramp's counts start from what the study knew)
        self.admitted = self.finished = rules.known
        self.flying = 0
        # run
        self.stopping = self.fatal = self.cancelled = self.budget_spent = self.done = False
        self._stages = len(rules.stages)

    # -- the one entry point -------------------------------------------------------------------

    def handle(self, event: ev.Event) -> list[ins.Instruction]:
        """Apply ``event``; return what to do next (for a loop's event: its next step last)."""
        if self.done:
            raise SchedulerInvariantError(f"{event} after the run finished")
        out = self._dispatch(event)
        check(self, getattr(event, "loop", None))
        return out

    def _dispatch(self, e: ev.Event) -> list[ins.Instruction]:
        if isinstance(e, ev.Start):
            ids = range(self.target) if self.rules.parallel else range(1)
            return [self._start_loop(i) for i in ids]
        if isinstance(e, ev.Resized):
            return self._resized(e.live_threads)
        if isinstance(e, ev.StopRequested):
            self.stopping = True
            return []
        if isinstance(e, ev.Cancelled):
            self.cancelled = True
            return []
        if isinstance(e, ev.Finished):
            return self._finished()
        lp = self.loops.get(e.loop)
        if lp is None:
            raise SchedulerInvariantError(f"{e} from a loop that is not running")
        return self._loop_event(lp, e)

    def _loop_event(self, lp: Loop, e: ev.Event) -> list[ins.Instruction]:
        if isinstance(e, ev.Failed):
            return self._failed(lp)
        if isinstance(e, ev.Crashed):
            return self._crashed(lp)
        expected = {Phase.STARTING: ev.Idle, Phase.HOLDING: ev.Idle, Phase.CLAIMING: ev.SlotsGranted,
                    Phase.ASKING: ev.Asked, Phase.SUBMITTING: ev.Submitted, Phase.TAIL: ev.TailReached,
                    Phase.AWAITING: ev.StageDone, Phase.DECIDING: ev.Decided, Phase.TELLING: ev.Told}[lp.phase]
        if not isinstance(e, expected):
            raise SchedulerInvariantError(f"{e} does not answer loop {lp.id}'s step ({lp.phase.value})")
        if isinstance(e, ev.Idle):
            return self._next(lp)
        if isinstance(e, ev.SlotsGranted):
            return self._granted(lp, e.granted)
        if isinstance(e, ev.Asked):
            return self._asked(lp, e.trial)
        if isinstance(e, ev.Submitted):
            return [self._submitted(lp, e.tasks)]
        if isinstance(e, ev.TailReached):
            return self._tail(lp)
        if isinstance(e, ev.StageDone):
            return self._stage_done(lp, e.failed)
        if isinstance(e, ev.Decided):
            return self._decided(lp, e.pruned)
        assert isinstance(e, ev.Told)
        return self._told(lp, e.trial)

    # -- loops ---------------------------------------------------------------------------------

    def _start_loop(self, loop_id: int) -> ins.StartLoop:
        self.loops[loop_id] = Loop(loop_id)
        return ins.StartLoop(loop_id)

    def _exit(self, lp: Loop, fatal: bool = False) -> list[ins.Instruction]:
        if lp.held() or lp.admitted or lp.round_left:
            raise SchedulerInvariantError(f"loop {lp.id} exits holding trials {lp.held()} or slots")
        del self.loops[lp.id]
        return [ins.Exit(lp.id, fatal)]

    def _resized(self, live_threads: int) -> list[ins.Instruction]:
        if self.rules.loop_cap is None:
            return []
        self.target = self.rules.target_for(live_threads)
        if not self.rules.parallel or self.stopping or self.fatal or self.budget_spent:
            return []  # batched: the next round takes the new target; a stopping run starts nothing
        return [self._start_loop(i) for i in range(self.target) if i not in self.loops]

    def _finished(self) -> list[ins.Instruction]:
        if self.loops or self.in_flight:
            raise SchedulerInvariantError(f"finished with loops {sorted(self.loops)} and trials {sorted(self.in_flight)}")
        n, self.reserve = self.reserve, 0
        self.released += n
        self.done = True
        return [ins.Release(n)] if n else []

    def _next(self, lp: Loop) -> list[ins.Instruction]:
        """The step of a loop that holds no trial: exit, hold, or admit one (a batched round: claim it)."""
        if self.stopping or self.fatal:
            return self._exit(lp)
        if not self.rules.parallel:
            if self.budget_spent:
                return self._exit(lp)
            return [self._claim(lp, self.rules.limit(self.admitted, self.finished, self.target))]
        if lp.id >= self.target or (self.budget_spent and self.reserve == 0):
            return self._exit(lp)  # retiring (above the target), or nothing left to ask
        if not self.rules.may_admit(self.flying, self.admitted, self.finished, self.target, look_ahead=False):
            lp.phase = Phase.HOLDING
            return [ins.Hold(lp.id)]
        self._admit(lp, look_ahead=False)
        return [self._take_or_claim(lp)]

    def _admit(self, lp: Loop, look_ahead: bool, checked: bool = True) -> None:
        """Count one more trial in flight. ``checked``: against the rules now (a batched round's
        asks were sized when its slots were claimed, and a resize may lower the target meanwhile)."""
        if checked and not self.rules.may_admit(self.flying, self.admitted, self.finished, self.target, look_ahead):
            raise SchedulerInvariantError(f"loop {lp.id} admitted over the limit ({self.flying} flying)")
        self.admitted += 1
        self.flying += 1
        lp.admitted += 1
        lp.ahead = look_ahead

    def _unadmit(self, lp: Loop) -> None:
        self.admitted -= lp.admitted
        self.flying -= lp.admitted
        lp.admitted = 0
        lp.ahead = False

    def _take_or_claim(self, lp: Loop) -> ins.Instruction:
        if self.reserve > 0:
            self.reserve -= 1
            self.taking += 1
            lp.phase = Phase.ASKING
            return ins.Ask(lp.id)
        return self._claim(lp, self.rules.claim_block)

    def _claim(self, lp: Loop, n: int) -> ins.Instruction:
        lp.phase, lp.claim = Phase.CLAIMING, n
        return ins.Claim(lp.id, n)

    def _granted(self, lp: Loop, granted: int) -> list[ins.Instruction]:
        if not 0 <= granted <= lp.claim:
            raise SchedulerInvariantError(f"{granted} slots granted to a claim of {lp.claim}")
        self.granted += granted
        if granted == 0:
            self.budget_spent = True
        if not self.rules.parallel:
            if granted == 0:
                return self._exit(lp)
            if self.stopping or self.fatal:  # stopped while claiming: nothing more is asked
                self.released += granted
                return [ins.Release(granted), *self._exit(lp)]
            self.taking += granted
            lp.round_size = lp.round_left = granted
            return [self._ask_in_round(lp)]
        self.reserve += granted
        if self.reserve > 0 and not (self.stopping or self.fatal):  # this grant, or another loop's refill
            return [self._take_or_claim(lp)]
        self._unadmit(lp)
        if lp.group:  # a look-ahead found no slot: the loop waits for its current trial
            lp.phase = Phase.AWAITING
            return [ins.Await(lp.id, tuple(lp.group))]
        return self._exit(lp)

    def _ask_in_round(self, lp: Loop) -> ins.Instruction:
        self._admit(lp, look_ahead=False, checked=False)
        lp.phase = Phase.ASKING
        return ins.Ask(lp.id)

    def _asked(self, lp: Loop, trial: int) -> list[ins.Instruction]:
        if trial in self.in_flight:
            raise SchedulerInvariantError(f"trial {trial} asked twice")
        self.taking -= 1
        self.asked += 1
        lp.admitted -= 1
        self.in_flight[trial] = lp.id
        if not self.rules.parallel:
            lp.round_left -= 1
            lp.asked.append(trial)
            if lp.round_left:
                return [self._ask_in_round(lp)]
            lp.group, lp.asked, lp.stage = lp.asked, [], 0
            return [self._submit(lp, lp.group)]
        if lp.ahead:
            lp.following, lp.ahead = trial, False
            return [self._submit(lp, [trial])]
        lp.group, lp.stage = [trial], 0
        return [self._submit(lp, lp.group)]

    def _submit(self, lp: Loop, trials: list[int]) -> ins.Instruction:
        lp.phase = Phase.SUBMITTING
        start, end = self.rules.stages[lp.stage if trials is lp.group else 0]
        return ins.Submit(lp.id, tuple(trials), start, end)

    def _submitted(self, lp: Loop, tasks: int) -> ins.Instruction:
        if lp.following is not None and lp.following not in self.tasks:
            self.tasks[lp.following] = tasks  # the look-ahead is running: wait for the current trial
            lp.phase = Phase.AWAITING
            return ins.Await(lp.id, tuple(lp.group))
        if self.rules.look_ahead:
            self.tasks[lp.group[0]] = tasks
        return self._await_current(lp)

    def _await_current(self, lp: Loop) -> ins.Instruction:
        if self.rules.look_ahead and self.tasks.get(lp.group[0], 1) > 1:
            lp.phase = Phase.TAIL
            return ins.AwaitTail(lp.id, lp.group[0])
        lp.phase = Phase.AWAITING
        return ins.Await(lp.id, tuple(lp.group))

    def _tail(self, lp: Loop) -> list[ins.Instruction]:
        """The current trial's last task runs: look ahead when the loop stays and a slot is there to take."""
        stays = not (self.stopping or self.fatal) and lp.id < self.target
        if stays and not (self.budget_spent and self.reserve == 0) and self.rules.may_admit(
                self.flying, self.admitted, self.finished, self.target, look_ahead=True):
            self._admit(lp, look_ahead=True)
            return [self._take_or_claim(lp)]
        lp.phase = Phase.AWAITING
        return [ins.Await(lp.id, tuple(lp.group))]

    # -- stages and tells ----------------------------------------------------------------------

    def _stage_done(self, lp: Loop, failed: frozenset[int]) -> list[ins.Instruction]:
        if not failed <= set(lp.group):
            raise SchedulerInvariantError(f"stage results for trials {sorted(failed - set(lp.group))} loop {lp.id} does not hold")
        last = lp.stage == self._stages - 1
        lp.verdicts = {}
        for t in lp.group:
            if t in failed:
                lp.verdicts[t] = ins.Tell(lp.id, t, "FAIL")
            elif last:
                lp.verdicts[t] = ins.Tell(lp.id, t, "COMPLETE")
        undecided = tuple(t for t in lp.group if t not in lp.verdicts)
        if undecided:
            lp.phase = Phase.DECIDING
            return [ins.Decide(lp.id, undecided)]
        return self._tell_verdicts(lp)

    def _decided(self, lp: Loop, pruned: frozenset[int]) -> list[ins.Instruction]:
        for t in lp.group:
            if t in lp.verdicts:
                continue
            if t in pruned:
                lp.verdicts[t] = ins.Tell(lp.id, t, "PRUNED")
            elif self.cancelled:
                lp.verdicts[t] = ins.Tell(lp.id, t, "FAIL", "cancelled")
            else:
                lp.verdicts[t] = None
        return self._tell_verdicts(lp)

    def _tell_verdicts(self, lp: Loop) -> list[ins.Instruction]:
        lp.tells = deque(v for v in (lp.verdicts[t] for t in lp.group) if v is not None)
        return self._tell_next(lp)

    def _tell_next(self, lp: Loop) -> list[ins.Instruction]:
        if lp.tells:
            tell = lp.tells.popleft()
            if tell.trial in self.telling or self.in_flight.get(tell.trial) != lp.id:
                raise SchedulerInvariantError(f"trial {tell.trial} told twice or by a loop that does not hold it")
            self.telling.add(tell.trial)
            lp.phase = Phase.TELLING
            return [tell]
        if lp.aborting:
            return self._exit(lp, fatal=True)
        if lp.group:  # the trials that go on: their next stage
            lp.stage, lp.verdicts = lp.stage + 1, {}
            return [self._submit(lp, lp.group)]
        lp.group, lp.stage, lp.verdicts = [], 0, {}
        if lp.following is not None:  # the look-ahead becomes the current trial
            lp.group, lp.following = [lp.following], None
            return [self._await_current(lp)]
        return self._next(lp)

    def _land(self, trial: int, told: bool) -> None:
        del self.in_flight[trial]
        self.telling.discard(trial)
        self.tasks.pop(trial, None)
        self.flying -= 1
        if told:
            self.told += 1
            self.finished += 1
        else:
            self.lost += 1

    def _told(self, lp: Loop, trial: int) -> list[ins.Instruction]:
        if trial not in self.telling or self.in_flight.get(trial) != lp.id:
            raise SchedulerInvariantError(f"trial {trial} told without a tell under way")
        self._drop(lp, trial, told=True)
        return self._tell_next(lp)

    # -- errors ----------------------------------------------------------------------------------

    def _failed(self, lp: Loop) -> list[ins.Instruction]:
        """The loop's step raised: the run stops; the loop tells FAIL every trial it holds, then exits."""
        if lp.phase in (Phase.STARTING, Phase.HOLDING):
            raise SchedulerInvariantError(f"loop {lp.id} failed a step it was not given")
        out = self._drop_slots(lp)
        if lp.phase is Phase.TELLING:
            for t in [t for t in lp.held() if t in self.telling]:
                self._drop(lp, t, told=False)  # its tell raised: left RUNNING, recovered as stale
        if lp.aborting:
            return out + self._tell_next(lp)
        lp.aborting = True
        lp.tells = deque(ins.Tell(lp.id, t, "FAIL", "coordinator error") for t in lp.held())
        return out + self._tell_next(lp)

    def _crashed(self, lp: Loop) -> list[ins.Instruction]:
        """The loop is gone: what it holds is lost (recovered as stale), its slots handled as on a failure."""
        out = self._drop_slots(lp)
        for t in lp.held():
            self._drop(lp, t, told=False)
        lp.tells.clear()
        self._exit(lp, fatal=True)  # no thread is left to carry out the Exit
        return out

    def _drop(self, lp: Loop, trial: int, told: bool) -> None:
        """``trial`` leaves flight: told, or lost (left RUNNING for recovery)."""
        self._land(trial, told)
        for held in (lp.group, lp.asked):
            if trial in held:
                held.remove(trial)
        if lp.following == trial:
            lp.following = None

    def _drop_slots(self, lp: Loop) -> list[ins.Instruction]:
        """A failed or crashed step: the run stops; an ask under way keeps its slot, the rest of a
        batched round goes back, an admission not yet a trial is undone."""
        self.fatal = self.stopping = True
        out: list[ins.Instruction] = []
        if lp.phase is Phase.ASKING:
            self.taking -= 1
            self.ask_failed += 1  # kept: the ask may have created the trial (module docstring)
            if not self.rules.parallel:
                lp.round_left -= 1
                if lp.round_left:
                    out.append(ins.Release(lp.round_left))
                    self.taking -= lp.round_left
                    self.released += lp.round_left
                    lp.round_left = 0
        if lp.phase in (Phase.CLAIMING, Phase.ASKING):
            self._unadmit(lp)
        return out

    # -- invariants ------------------------------------------------------------------------------

    def check_invariants(self, full: bool = True) -> None:
        """Raise :class:`SchedulerInvariantError` when a count disagrees (module docstring).
        :meth:`handle` runs it after every event: the counts and the event's loop (O(1)), or
        (``full``, and after events of no loop) every loop and their sums (O(loops))."""
        check(self, None if full else -1)
