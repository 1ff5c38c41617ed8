"""Plan a projection (every check, nothing created) and run it on a simulation service.

:func:`plan_projection` turns a job, its parameter sets and a scenarios spec into
a :class:`Plan`: the points reported (:mod:`.grid`), the days simulated, the
draws, the seeds and each scenario's changes, with every input checked
(JobSpecError / ConfigurationError) before anything runs or is written.
:func:`run_plan` submits one trial per (scenario, draw) with its ``R`` replicate
seeds to a :class:`~modelops_calabaria.simulation.SimulationService` (a window of
them in flight), writes each as it returns (:mod:`.store`), and skips those a
previous, interrupted run already wrote.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelops_calabaria.errors import ConfigurationError, JobSpecError, SimulationError
from modelops_calabaria.job import CalibrationJob
from modelops_calabaria.models import LoadedModel
from modelops_calabaria.projection.draws import ParameterSets, sim_seed
from modelops_calabaria.projection.grid import TargetGrid, build_grids, days_needed, last_observed
from modelops_calabaria.projection.schedules import apply_changes, check_changes, schedulable_of
from modelops_calabaria.projection.spec import Change, ScenarioSpec
from modelops_calabaria.projection.store import ChunkStore
from modelops_calabaria.simulation.base import SimulationService
from modelops_calabaria.targets.evaluate import CompiledTarget

MAX_DRAWS = 100_000
MAX_REPLICATES = 1_000


@dataclass(frozen=True)
class Plan:
    """Everything a projection runs, decided and checked before it runs."""

    job: CalibrationJob
    model_ref: str
    sets: ParameterSets
    scenarios: tuple[tuple[str, tuple[Change, ...]], ...]
    grids: tuple[TargetGrid, ...]
    start: dt.date
    n_days: int
    days_parameter: str | None
    reference_date: dt.date
    draws: tuple[int, ...]  # index into sets.params, per draw
    replicates: int
    seed: int
    common_seeds: bool

    @property
    def probes(self) -> tuple[CompiledTarget, ...]:
        return tuple(p for g in self.grids for p in g.probes)

    def seeds(self, scenario: int, draw: int) -> list[int]:
        return [sim_seed(self.seed, draw, r, None if self.common_seeds else scenario) for r in range(self.replicates)]

    def params(self, scenario: int, draw: int) -> dict[str, Any]:
        """The full parameters of one simulation: fixed, the draw's, the simulated days, the scenario's changes."""
        base = {**self.job.fixed, **self.sets.params[self.draws[draw]]}
        if self.days_parameter:
            base[self.days_parameter] = self.n_days
        return apply_changes(base, self.scenarios[scenario][1], self.start, self.n_days)

    def fingerprint(self) -> str:
        body = {"model": self.model_ref, "fixed": self.job.fixed, "source": self.sets.source,
                "params": [self.sets.params[i] for i in self.draws], "replicates": self.replicates, "seed": self.seed,
                "common": self.common_seeds, "n_days": self.n_days, "start": self.start,
                "scenarios": [(n, [c.model_dump(mode="json") for c in ch]) for n, ch in self.scenarios],
                "grids": [(g.name, g.points, str(g.dates[0]), str(g.dates[-1])) for g in self.grids]}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _start_date(spec: ScenarioSpec, job: CalibrationJob) -> dt.date:
    if spec.start_date is not None:
        return spec.start_date
    starts = {t.start_date for t in job.targets if t.start_date is not None}
    if len(starts) == 1:
        return starts.pop()
    raise JobSpecError("the scenarios file needs start_date (the date of model day 0): "
                       + ("the targets give none" if not starts else f"the targets give several ({', '.join(map(str, sorted(starts)))})"),
                       hint="add start_date: YYYY-MM-DD to the scenarios file")


def plan_projection(job: CalibrationJob, model: LoadedModel, targets: Sequence[CompiledTarget], sets: ParameterSets,
                    spec: ScenarioSpec, *, draws: int = 200, replicates: int = 2, seed: int | None = None,
                    horizon: int | None = None, until: dt.date | None = None, reference_date: dt.date | None = None,
                    common_seeds: bool = True) -> Plan:
    """Check every input and decide the projection (runs nothing, writes nothing).

    ``horizon``: periods past the last observation (default 8 when ``until`` is not given);
    ``reference_date``: the date the projection is made from (default: the last observation).

    Raises:
        JobSpecError, ConfigurationError: a bad count, date, change or target (one line each).
    """
    if horizon is not None and until is not None:
        raise ConfigurationError("--horizon and --until both say how far to project", hint="pass one of them")
    if horizon is not None and not 1 <= horizon <= 520:
        raise ConfigurationError(f"--horizon {horizon}: expected 1 to 520 periods")
    if not 1 <= draws <= MAX_DRAWS or not 1 <= replicates <= MAX_REPLICATES:
        raise ConfigurationError(f"--draws {draws} / --replicates {replicates}: expected 1..{MAX_DRAWS} draws and 1..{MAX_REPLICATES} replicates")
    if until is None and horizon is None:
        horizon = 8
    start = _start_date(spec, job)
    grids = build_grids(targets, start, spec.step_days, horizon, until)
    last = last_observed(grids)
    if until is not None and until <= last:
        raise ConfigurationError(f"--until {until} is not after the last observation ({last})", hint="pass a later date")
    n_days = days_needed(grids, start)
    declared = schedulable_of(model.run)
    known = set(job.parameters) | set(job.fixed) | set(declared or ()) | ({spec.days_parameter} if spec.days_parameter else set())
    scenarios = tuple((name, tuple(changes)) for name, changes in spec.all())
    check_changes(scenarios, known, set(job.parameters) | set(job.fixed), declared, job.model, start, n_days)
    run_seed = job.seed if seed is None else seed
    picks = tuple(sets.draw(draws, run_seed))
    return Plan(job, model.ref, sets, scenarios, grids, start, n_days, spec.days_parameter, reference_date or last,
                picks, replicates, run_seed, common_seeds)


class Progress:
    """One line of progress: a live line on a terminal, a line per tenth otherwise."""

    def __init__(self, total: int, done: int, stream: Any = None) -> None:
        self.total, self.done, self.started_at = total, done, time.monotonic()
        self.first = done
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_tenth = -1

    def step(self, n: int) -> None:
        self.done += n
        ran = self.done - self.first
        elapsed = time.monotonic() - self.started_at
        rate = ran / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        line = (f"projection: {self.done}/{self.total} simulations ({100 * self.done / max(1, self.total):.0f} %), "
                f"{rate:.1f}/s, ETA {eta:.0f} s")
        tenth = int(10 * self.done / max(1, self.total))
        if self.live:
            self.stream.write("\r" + line + ("\n" if self.done >= self.total else ""))
        elif tenth != self._last_tenth:
            self.stream.write(line + "\n")
        self._last_tenth = tenth
        self.stream.flush()


def run_plan(plan: Plan, service: SimulationService, store: ChunkStore, *, window: int | None = None,
             progress: Callable[[int], None] | None = None) -> float:
    """Run every (scenario, draw) not yet in ``store``; return the simulation-seconds this call used.

    Raises:
        SimulationError: a simulation failed (its model error, first line); chunks written so far stay.
        ServiceUnavailableError: the cluster is gone.
    """
    todo = deque((s, d) for s in range(len(plan.scenarios)) for d in range(len(plan.draws))
                 if not store.done(plan.scenarios[s][0], d))
    in_flight: deque[tuple[int, int, list[int], Any]] = deque()
    width = window or max(4, 2 * max(1, service.slots))
    names = [p.name for p in plan.probes]
    busy = 0.0
    try:
        while todo or in_flight:
            while todo and len(in_flight) < width:
                s, d = todo.popleft()
                seeds = plan.seeds(s, d)
                number = -1 - (s * len(plan.draws) + d)  # never a trial's number
                in_flight.append((s, d, seeds, service.submit(number, plan.params(s, d), seeds)))
            s, d, seeds, handle = in_flight.popleft()
            evaluation = handle.result()
            if evaluation.error is not None:
                raise SimulationError(f"scenario '{plan.scenarios[s][0]}', draw {d}: {evaluation.error.strip().splitlines()[0]}")
            values = [[float(rep[n]) for n in names] for rep in evaluation.replicate_scores]
            store.write(plan.scenarios[s][0], d, seeds, values, evaluation.busy_s)
            busy += evaluation.busy_s
            if progress is not None:
                progress(len(seeds))
    finally:
        for *_, handle in in_flight:
            handle.cancel()
    return busy


def collect(plan: Plan, store: ChunkStore) -> np.ndarray:
    """Every value: array (scenarios, draws, replicates, points), points in grid-then-probe order."""
    out = np.empty((len(plan.scenarios), len(plan.draws), plan.replicates, len(plan.probes)))
    for s, (name, _) in enumerate(plan.scenarios):
        for d in range(len(plan.draws)):
            out[s, d] = np.asarray(store.read(name, d)["values"], dtype=float)
    return out
