"""What runs on a Dask worker: one replicate, and the reduction of one trial.

:func:`run_replicate` never raises for a model problem: an exception, a
timeout, a missing output or a NaN becomes ``ReplicateResult.error`` (with the
model's traceback), so that failures are data the coordinator stores on the
trial. Only scores and small diagnostics leave the worker, never the outputs. A model
that calls ``sys.exit`` fails its replicate too; in a local worker process, one that
ends the process or leaves processes behind is contained by :mod:`.containment`.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelops_calabaria.job import SummarySpec
from modelops_calabaria.models import load_model
from modelops_calabaria.simulation import containment
from modelops_calabaria.simulation.summaries import summarize
from modelops_calabaria.targets.evaluate import CompiledTarget, aggregate_trial, evaluate_replicate


@dataclass(frozen=True)
class SimContext:
    """Everything a replicate needs besides its parameters and seed (same for a whole run)."""

    model_ref: str
    fixed: Mapping[str, Any]
    targets: tuple[CompiledTarget, ...]
    timeout_s: float | None = None
    retries: int = 0
    summaries: tuple[SummarySpec, ...] | None = None  # a sweep's (simulation/summaries.py); None: a calibration keeps none


@dataclass
class ReplicateResult:
    """Scores of one replicate (or why it failed) and how long it ran."""

    index: int
    seed: int
    scores: dict[str, float] = field(default_factory=dict)
    kept: dict[str, np.ndarray] = field(default_factory=dict)
    duration_s: float = 0.0
    error: str | None = None
    abandoned_on: str | None = None  # where a timed-out model thread still runs (see module docstring)
    summaries: dict[str, float] = field(default_factory=dict)  # a sweep's, by name


@dataclass
class TrialEvaluation:
    """A trial's result as the coordinator receives it.

    ``abandoned_on``: the processes (Dask worker addresses, or ``THIS_PROCESS``)
    left running a timed-out model thread by this trial's replicates.
    """

    per_target: dict[str, float]
    loss: float | None
    busy_s: float
    error: str | None = None
    replicate_scores: list[dict[str, float]] = field(default_factory=list)
    abandoned_on: tuple[str, ...] = ()
    summaries: dict[str, list[float]] | None = None  # a sweep's: {name: value per replicate}, targets as loss:<name>


THIS_PROCESS = "this process"  # abandoned_on outside a Dask worker (inline service)


def _worker_address() -> str:
    """The address of the Dask worker running this task, else ``THIS_PROCESS``."""
    worker = sys.modules.get("distributed.worker")  # never imported here just to ask
    if worker is None:
        return THIS_PROCESS
    try:
        return str(worker.get_worker().address)
    except ValueError:  # not in a Dask task
        return THIS_PROCESS


class _Timeout(Exception):
    pass


def _call_with_timeout(fn: Any, params: Mapping[str, Any], seed: int, timeout_s: float | None) -> Any:
    if timeout_s is None:
        return fn(params, seed)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(params, seed)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    # A daemon thread: a hung model cannot be killed from Python, but the task
    # returns at the timeout, freeing the Dask slot's bookkeeping.
    thread = threading.Thread(target=target, name="calabaria-model", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise _Timeout(f"simulation timed out after {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def run_replicate(ctx: SimContext, params: Mapping[str, Any], seed: int, index: int) -> ReplicateResult:
    """Run the model once with ``params`` (plus the fixed ones) and score every target."""
    result = ReplicateResult(index=index, seed=seed)
    started = time.perf_counter()
    attempts = ctx.retries + 1
    for attempt in range(attempts):
        try:
            model = load_model(ctx.model_ref)
            with containment.guarded(index):
                outputs = _call_with_timeout(model.run, {**ctx.fixed, **params}, seed, ctx.timeout_s)
            if not isinstance(outputs, Mapping):
                raise TypeError(f"model returned {type(outputs).__name__}, expected a mapping of output name to array")
            result.scores, result.kept = evaluate_replicate(ctx.targets, outputs)
            if ctx.summaries is not None:
                result.summaries = summarize(ctx.summaries, outputs)
            result.error = None
            break
        except _Timeout as e:
            result.error = f"replicate {index} (seed {seed}): {e}"
            result.abandoned_on = _worker_address()
            break  # a hang is not retried: it would hold another slot just as long
        except containment.EarlierAttemptDied as e:
            result.error = f"replicate {index} (seed {seed}): {e}"
            break
        except (SystemExit, KeyboardInterrupt) as e:
            # The model asked to end the process it runs in (a worker, or the coordinator
            # with the inline scheduler): that ends this trial, not the process.
            what = f"called sys.exit({e.code!r})" if isinstance(e, SystemExit) else "raised KeyboardInterrupt"
            result.error = f"replicate {index} (seed {seed}): the model {what}; a model must return its outputs, not end the process"
            break
        except Exception as e:  # noqa: BLE001 - any model failure is data for the trial
            tb = traceback.format_exc(limit=8)
            result.error = f"replicate {index} (seed {seed}), attempt {attempt + 1}/{attempts}: {type(e).__name__}: {e}\n{tb}"
    result.duration_s = time.perf_counter() - started
    return result


def run_replicates(ctx: SimContext, params: Mapping[str, Any], seeds: Sequence[int], first: int) -> list[ReplicateResult]:
    """Run replicates ``first``, ``first + 1``, ... (one per seed) one after the other, in one task.

    For short simulations: one task's scheduling overhead serves several replicates.
    After a replicate times out, the rest are not run (error "not run: ...").
    """
    results: list[ReplicateResult] = []
    for i, seed in enumerate(seeds):
        if results and results[-1].abandoned_on is not None:
            skipped = ReplicateResult(index=first + i, seed=seed,
                                      error=f"replicate {first + i} (seed {seed}) not run: {results[-1].error}")
            results.append(skipped)
            continue
        results.append(run_replicate(ctx, params, seed, first + i))
    return results


def reduce_trial(ctx: SimContext, results: Sequence[ReplicateResult | Sequence[ReplicateResult]]) -> TrialEvaluation:
    """Aggregate a trial's replicates (or chunks of them) on the worker; only scalars go back."""
    results = [r for item in results for r in ([item] if isinstance(item, ReplicateResult) else item)]
    busy = float(sum(r.duration_s for r in results))
    failed = [r for r in results if r.error is not None]
    if failed:
        abandoned = tuple(dict.fromkeys(r.abandoned_on for r in failed if r.abandoned_on is not None))
        return TrialEvaluation({}, None, busy, error=failed[0].error + (f" ({len(failed)}/{len(results)} replicates failed)" if len(failed) > 1 else ""),
                               abandoned_on=abandoned)
    per_target, loss = aggregate_trial(ctx.targets, [r.scores for r in results], [r.kept for r in results])
    reps = [r.scores for r in sorted(results, key=lambda r: r.index)]
    if not np.isfinite(loss):
        bad = [k for k, v in per_target.items() if not np.isfinite(v)]
        return TrialEvaluation(per_target, None, busy, error=f"non-finite loss {loss} (targets: {', '.join(bad)})", replicate_scores=reps)
    return TrialEvaluation(per_target, loss, busy, replicate_scores=reps, summaries=_kept(ctx, results))


def _kept(ctx: SimContext, results: Sequence[ReplicateResult]) -> dict[str, list[float]] | None:
    """A sweep's summaries and target losses per replicate, in replicate order (None in a calibration)."""
    if ctx.summaries is None:
        return None
    ordered = sorted(results, key=lambda r: r.index)
    kept = {s.label: [r.summaries[s.label] for r in ordered] for s in ctx.summaries}
    kept.update({f"loss:{t.name}": [r.scores[t.name] for r in ordered] for t in ctx.targets})
    return kept
