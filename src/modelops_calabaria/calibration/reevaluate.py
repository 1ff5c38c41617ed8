"""Re-evaluate the best trials on fresh seeds; the reported best is chosen by that loss.

The in-sample best of a stochastic model is optimistic: of many trials scored on
a few replicates, the lowest loss is partly the luck of those replicates (and,
with common random numbers, the parameters that best fit *those* seeds' noise).
At the end of a run the ``top_k`` best COMPLETE trials (distinct parameters)
are run again through the same simulation service with ``replicates`` fresh,
independent replicates whose seeds no trial of the study used (``seeds.fresh_seeds``),
aggregated exactly as the trials were. The reported best is the candidate with
the best re-evaluated loss; a candidate whose re-evaluation fails ranks last,
and if every one fails the in-sample best is kept (``selected_by: in_sample``).

Nothing here writes to the study: the re-evaluation is a result of the run
(``results.json`` / ``best.yaml``), not trials. Re-evaluation replicates are
submitted under trial numbers ``-1, -2, ...`` (never a trial's number, so a
Dask key never names a real trial).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from modelops_calabaria.backend.base import TARGETS_ATTR
from modelops_calabaria.calibration.seeds import fresh_seeds, used_seeds
from modelops_calabaria.errors import ServiceUnavailableError
from modelops_calabaria.job import CalibrationJob
from modelops_calabaria.logging import get_logger
from modelops_calabaria.outcome import RunResult
from modelops_calabaria.simulation.base import SimulationService

log = get_logger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One re-evaluated trial: its in-sample loss and its loss on the fresh seeds."""

    trial: int
    params: dict[str, Any]
    in_sample_loss: float
    loss: float | None  # None: the re-evaluation failed (``error`` says why)
    targets: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Selection:
    """Which trial is reported as the best, and by what."""

    selected_by: str  # "reevaluation" or "in_sample"
    best: Candidate  # the reported best
    in_sample_best: Candidate  # the trial with the best in-sample loss
    reevaluated: tuple[Candidate, ...]  # in in-sample order
    replicates: int
    seeds: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "selected_by": self.selected_by,
            "best_trial": self.best.trial,
            "in_sample_best": {"trial": self.in_sample_best.trial, "loss": self.in_sample_best.in_sample_loss,
                               "params": self.in_sample_best.params},
            "reevaluated": [_candidate_json(c) for c in self.reevaluated],
            "replicates": self.replicates,
            "seeds": list(self.seeds),
        }


def _candidate_json(c: Candidate) -> dict[str, Any]:
    out = asdict(c)
    if out["error"] is None:
        del out["error"]
    return out


def top_trials(trials: Sequence[FrozenTrial], k: int, maximize: bool = False) -> list[FrozenTrial]:
    """The ``k`` best COMPLETE trials with distinct parameters, best first (ties: lower number)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    complete.sort(key=lambda t: ((-t.value if maximize else t.value), t.number))  # type: ignore[operator]
    out: list[FrozenTrial] = []
    seen: set[tuple] = set()
    for t in complete:
        key = tuple(sorted((k_, repr(v)) for k_, v in t.params.items()))
        if key in seen:
            continue
        seen.add(key)
        out.append(t)
        if len(out) == k:
            break
    return out


def choose(candidates: Sequence[Candidate], maximize: bool = False) -> tuple[Candidate, str]:
    """The reported best of ``candidates`` (given in in-sample order) and how it was chosen.

    By re-evaluated loss; a failed re-evaluation ranks after every success, ties
    keep the in-sample order; if none succeeded, the in-sample best.
    """
    ok = [c for c in candidates if c.loss is not None and math.isfinite(c.loss)]
    if not ok:
        return candidates[0], "in_sample"
    rank = {c.trial: i for i, c in enumerate(candidates)}
    best = min(ok, key=lambda c: ((-c.loss if maximize else c.loss), rank[c.trial]))  # type: ignore[operator]
    return best, "reevaluation"


def reevaluation_seeds(job: CalibrationJob, trials: Sequence[FrozenTrial], replicates: int, round_: int = 0) -> list[int]:
    """``replicates`` seeds that no trial of ``trials`` ran with (whatever ``replicate_seeds`` mode)."""
    numbers = range(max((t.number for t in trials), default=-1) + 1)
    exclude = set()
    for mode in ("common", "independent", "staged"):  # the study may have been run in another mode before
        exclude |= used_seeds(job.seed, job.n_replicates, numbers, mode)
    return fresh_seeds(job.seed, replicates, exclude, round_)


def reevaluate(job: CalibrationJob, trials: Sequence[FrozenTrial], service: SimulationService, *,
               top_k: int | None = None, replicates: int | None = None, round_: int = 0) -> Selection | None:
    """Re-evaluate the best trials of ``trials`` through ``service`` and choose the reported best.

    ``top_k`` / ``replicates`` default to the job's ``reevaluate`` block
    (replicates: 2 x ``n_replicates``); ``round_`` > 0 draws another set of fresh
    seeds (e.g. an on-demand re-evaluation after the run's own). Returns None when
    there is nothing to re-evaluate (``top_k`` 0, or no COMPLETE trial).

    Raises:
        ServiceUnavailableError: the simulation service is gone.
    """
    k = job.reevaluate.top_k if top_k is None else top_k
    n = replicates or job.reevaluate.replicates or 2 * job.n_replicates
    maximize = job.direction == "maximize"
    top = top_trials(trials, k, maximize) if k > 0 else []
    if not top:
        return None
    seeds = reevaluation_seeds(job, trials, n, round_)
    handles = [service.submit(-(i + 1), dict(t.params), seeds) for i, t in enumerate(top)]
    evaluations = service.gather(handles)
    candidates = []
    for t, ev in zip(top, evaluations):
        failed = ev.error is not None or ev.loss is None
        candidates.append(Candidate(
            trial=t.number, params=dict(t.params), in_sample_loss=float(t.value),  # type: ignore[arg-type]
            loss=None if failed else float(ev.loss),  # type: ignore[arg-type]
            targets={} if failed else dict(ev.per_target),
            error=(ev.error or "no loss").strip().splitlines()[0] if failed else None,
        ))
    best, how = choose(candidates, maximize)
    return Selection(how, best, candidates[0], tuple(candidates), n, tuple(seeds))


def reevaluate_at_end(job: CalibrationJob, trials: Sequence[FrozenTrial], service: SimulationService) -> Selection | None:
    """:func:`reevaluate` with the job's options, for the end of a run: a service that is
    gone by now costs the re-evaluation (logged), not the run's results."""
    try:
        selection = reevaluate(job, trials, service)
    except ServiceUnavailableError as e:
        log.warning("re-evaluation of the best trials skipped: simulation service unavailable", error=str(e),
                    hint="the reported best is the in-sample best")
        return None
    if selection is not None:
        log.info("best trials re-evaluated on fresh seeds", selected_by=selection.selected_by,
                 in_sample_best=selection.in_sample_best.trial, reported_best=selection.best.trial,
                 replicates=selection.replicates,
                 losses={c.trial: (c.in_sample_loss, c.loss) for c in selection.reevaluated})
    return selection


def apply_selection(result: RunResult, selection: Selection | None, trials: Sequence[FrozenTrial]) -> RunResult:
    """Report ``selection.best`` as the run's best: ``best_trial``, ``best_params``,
    ``best_loss`` (its in-sample loss, the study's value) and ``best_targets`` (in-sample);
    the re-evaluated loss and the whole selection go to ``result.selection``."""
    if selection is None:
        return result
    chosen = next(t for t in trials if t.number == selection.best.trial)
    result.best_trial = chosen.number
    result.best_params = dict(chosen.params)
    result.best_loss = float(chosen.value)  # type: ignore[arg-type]
    result.best_targets = dict(chosen.user_attrs.get(TARGETS_ATTR, {}))
    result.selection = {**selection.to_json(), "reevaluated_loss": selection.best.loss}
    return result
