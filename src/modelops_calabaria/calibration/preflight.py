"""The dry run: the model once, in this process, before any trial.

``validate`` runs it strictly (every problem is bad input, exit 2);
``calibrate`` runs it for jobs with keyed targets, where a missing key column
or an unmatched key would otherwise fail every trial, and reports only the
problems that no parameter set can fix (signature, missing package, missing
output or key column, unmatched keys). The model runs with every searched
parameter at the middle of its range, the fixed ones, and the job's seed.

``validate`` then runs the job's remaining replicates (seeds ``seed + 1`` ...)
and the job's real aggregation over all of them, as a trial would: a
per-replicate score can be finite while the trial loss is not (a synthetic
likelihood whose covariance is singular), and every trial would then fail.
"""

from __future__ import annotations

import math
import threading
import traceback
from collections.abc import Mapping
from typing import Any

from modelops_calabaria.errors import JobSpecError, SimulationError
from modelops_calabaria.job import CalibrationJob, midpoint
from modelops_calabaria.logging import get_logger
from modelops_calabaria.models import SIGNATURE, load_model, missing_package_hint
from modelops_calabaria.targets.align import AlignmentError
import numpy as np

from modelops_calabaria.targets.evaluate import CompiledTarget, aggregate_trial, evaluate_replicate
from modelops_calabaria.targets.scores import is_zero_likelihood

log = get_logger(__name__)


def midpoint_params(job: CalibrationJob) -> dict[str, Any]:
    """Every searched parameter at the middle of its range (geometric on log scale)."""
    return {name: midpoint(spec) for name, spec in job.parameters.items()}


def _run(fn: Any, params: Mapping[str, Any], seed: int, timeout_s: float) -> tuple[bool, Any]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(params, seed)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name="calabaria-dry-run", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return False, None
    if "error" in box:
        raise box["error"]
    return True, box["value"]


def dry_run(job: CalibrationJob, model_ref: str, targets: tuple[CompiledTarget, ...], timeout_s: float,
            strict: bool = True) -> dict[str, float]:
    """Run the model once and score every target; returns the per-target scores.

    Raises:
        JobSpecError: (exit 2) the model's signature or packages are wrong, an
            output, key column or value column is missing, a key matches no
            output row; with ``strict`` also: the model raised or timed out, or
            a score is not finite.
    """
    model = load_model(model_ref)
    params = {**job.fixed, **midpoint_params(job)}
    try:
        finished, outputs = _run(model.run, params, job.seed, timeout_s)
    except ModuleNotFoundError as e:
        raise JobSpecError(f"model {job.model} needs '{e.name}', which is not installed here", hint=missing_package_hint(e)) from e
    except TypeError as e:
        if SIGNATURE in str(e) or not strict:
            if SIGNATURE in str(e):
                raise JobSpecError(str(e), problems=[("model", f"expected {SIGNATURE}")]) from e
            log.warning("dry run: the model raised at the midpoint parameters", error=f"{type(e).__name__}: {e}")
            return {}
        raise _raised(job, e) from e
    except Exception as e:  # noqa: BLE001 - the model's own failure
        if not strict:
            log.warning("dry run: the model raised at the midpoint parameters", error=f"{type(e).__name__}: {e}")
            return {}
        raise _raised(job, e) from e
    if not finished:
        if not strict:
            log.warning("dry run: no result in time; output checks left to the trials", timeout_s=timeout_s)
            return {}
        raise JobSpecError(f"model {job.model} did not finish within {timeout_s:g} s at the midpoint parameters",
                           hint="raise --timeout, or skip the dry run with --no-run")
    if not isinstance(outputs, Mapping):
        raise JobSpecError(f"model {job.model} returned {type(outputs).__name__}, expected a mapping of output name to "
                           f"array, {{column: array}} or DataFrame", problems=[("model", f"expected {SIGNATURE}")])
    scores: dict[str, float] = {}
    for i, t in enumerate(targets):
        try:
            sim = t.align(outputs)
        except AlignmentError as e:
            raise JobSpecError(str(e), problems=[(f"targets[{i}].on", "return the keys the data has, or change 'on' / 'match'")]) from e
        except SimulationError as e:
            if t.output not in outputs:
                raise JobSpecError(str(e), problems=[(f"targets[{i}].output", "return this output from the model")]) from e
            if strict:
                raise JobSpecError(str(e), problems=[(f"targets[{i}]", "match the target's form to the output's (see above)")]) from e
            log.warning("dry run: a target cannot be scored at the midpoint parameters", target=t.name, error=str(e))
            continue
        if t.score.kind == "custom":  # the user's function: finite and the same twice on the same inputs
            value = _custom_twice(t, sim, i)
        else:
            value = t.loss(sim)
        if strict and not math.isfinite(value):
            raise JobSpecError(f"target '{t.name}': score {t.score.kind} is {value} at the midpoint parameters",
                               problems=[(f"targets[{i}].score", "check the output's scale against the data (counts vs rates)")])
        scores[t.name] = value
    if strict and job.n_replicates > 1:
        _aggregate_replicates(job, model, params, targets, outputs, timeout_s)
    return scores


def _custom_twice(t: CompiledTarget, sim: Any, i: int) -> float:
    """A custom score at the midpoint, called twice: a failure, a non-number or two answers is exit 2."""
    where = f"targets[{i}].score.function"
    try:
        first, second = t.loss(sim), t.loss(sim)
    except SimulationError as e:
        raise JobSpecError(str(e), problems=[(where, "return a finite float from fn(observed, simulated, keys)")]) from e
    if first != second:
        raise JobSpecError(f"target '{t.name}': custom score {t.score.function} gave {first!r} and then {second!r} "
                           "for the same inputs", problems=[(where, "make the score a function of its inputs only")])
    return first


def _aggregate_replicates(job: CalibrationJob, model: Any, params: Mapping[str, Any], targets: tuple[CompiledTarget, ...],
                          first: Mapping[str, Any], timeout_s: float) -> None:
    """Run replicates 2..R and the job's aggregation over all R; JobSpecError (one line naming the
    target and the cause) when a trial loss would not be finite."""
    runs = [evaluate_replicate(targets, first)]
    for r in range(1, job.n_replicates):
        try:
            finished, outputs = _run(model.run, params, job.seed + r, timeout_s)
        except Exception as e:  # noqa: BLE001 - the model's own failure
            raise _raised(job, e) from e
        if not finished:
            raise JobSpecError(f"model {job.model} did not finish replicate {r + 1} within {timeout_s:g} s at the "
                               "midpoint parameters", hint="raise --timeout, or skip the dry run with --no-run")
        try:
            runs.append(evaluate_replicate(targets, outputs))
        except SimulationError as e:
            raise JobSpecError(f"replicate {r + 1} at the midpoint parameters: {e}") from e
    try:
        per_target, _ = aggregate_trial(targets, [s for s, _ in runs], [k for _, k in runs])
    except ValueError as e:
        raise JobSpecError(f"the aggregation over {len(runs)} replicates failed at the midpoint parameters: {e}") from e
    for i, t in enumerate(targets):
        value = per_target[t.name]
        if math.isfinite(value) and is_zero_likelihood(value):
            log.warning(f"dry run: target {t.name}: the unbiased synthetic likelihood estimate is 0 at the midpoint "
                        "parameters (the data lie outside the replicates' spread); such trials weigh 0", target=t.name)
        if not math.isfinite(value):
            raise JobSpecError(
                f"target '{t.name}': aggregation {t.aggregation} over {len(runs)} replicates is {value} at the midpoint "
                f"parameters ({_cause(t, runs)}); every trial would fail",
                problems=[(f"targets[{i}].aggregation", "see the cause; or try another aggregation")])


def _cause(t: CompiledTarget, runs: list[tuple[dict[str, float], dict[str, np.ndarray]]]) -> str:
    """Why a target's aggregated loss is not finite, in a few words."""
    bad = [s[t.name] for s, _ in runs if not math.isfinite(s[t.name])]
    if bad:
        return f"{len(bad)} of {len(runs)} replicate scores are not finite ({bad[0]})"
    if t.aggregation == "synthetic_likelihood":
        x = np.stack([k[t.name] for _, k in runs]).reshape(len(runs), -1)[:, ~np.isnan(t.observed.values.reshape(-1))]
        if np.ptp(x, axis=0).max() == 0:
            return "every replicate is identical, so the replicate covariance is zero: the model is not stochastic here"
        return (f"the covariance of {len(runs)} replicates is singular even after shrinkage; use more replicates "
                "(10 or more)")
    if t.aggregation == "logmeanexp":
        return "every replicate's likelihood underflows to 0"
    return "the replicate mean cannot be scored"


def _raised(job: CalibrationJob, e: BaseException) -> JobSpecError:
    frame = traceback.extract_tb(e.__traceback__)[-1]
    return JobSpecError(f"model {job.model} raised at the midpoint parameters: {type(e).__name__}: {e} "
                        f"({frame.filename}, line {frame.lineno})",
                        hint="run `calabaria simulate JOB -p NAME=VALUE` to see the full traceback")
