"""Evaluate a replicate against every target, and aggregate replicates into a trial loss.

Pure functions: they run on Dask workers (replicate scoring and trial
aggregation) and in tests, with no I/O.

Aggregations over the R replicates of one trial:

- ``mean_of_scores``: mean of the R per-replicate scores;
- ``score_of_mean``: the score of the replicate-mean simulated series;
- ``logmeanexp``: ``-log(mean(exp(-nll_r)))``, the NLL of the averaged likelihood;
- ``synthetic_likelihood``: the NLL of the observations under a Gaussian with the
  replicate series' mean and (shrunk) covariance (Wood 2010), or with
  ``synthetic_estimator: ubsl`` minus the log of the unbiased estimate of that
  Gaussian density (Price et al. 2018); the score is unused.

Gaps (blank observed cells) contribute nothing to any of them (targets/scores.py).

Trial loss = Σ weight × aggregated score, over targets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelops_calabaria.errors import JobSpecError, SimulationError
from modelops_calabaria.job import CalibrationJob, ScoreSpec, TargetSpec
from modelops_calabaria.logging import get_logger
from modelops_calabaria.targets.align import Aligner, date_days
from modelops_calabaria.targets.custom import custom_score, resolved
from modelops_calabaria.targets.data import Observed, load_observed
from modelops_calabaria.targets.scores import (ZERO_LIKELIHOOD_NLL, dispersion_of, log_mean_exp_loss, score, synthetic_nll, ubsl_min_replicates,
                                               ubsl_nll)

KEEPS_SERIES = ("score_of_mean", "synthetic_likelihood")  # aggregations that need the replicate series

log = get_logger(__name__)


@dataclass(frozen=True)
class CompiledTarget:
    """A target with its observed data loaded: everything a worker needs to score it."""

    name: str
    output: str
    observed: Observed
    score: ScoreSpec
    aggregation: str
    weight: float
    aligner: Aligner | None = None
    estimator: str = "plugin"  # synthetic_likelihood only: plugin | ubsl

    def align(self, outputs: Mapping[str, Any]) -> np.ndarray:
        """The simulated values at the observed rows, shape (n, m).

        Raises:
            SimulationError: the output is missing, too short, of the wrong
                width, or not finite; AlignmentError (a SimulationError) when
                keys do not match.
        """
        if self.output not in outputs:
            raise SimulationError(
                f"target '{self.name}': model returned no output '{self.output}' (it returned: {', '.join(map(str, outputs)) or 'nothing'})"
            )
        raw = outputs[self.output]
        if self.aligner is not None:
            return self.aligner.simulated(raw)
        try:
            arr = np.asarray(raw.to_numpy() if hasattr(raw, "to_numpy") else raw, dtype=float)
        except (TypeError, ValueError) as e:  # a table (columns by name, dates): rows by number cannot select from it
            raise SimulationError(
                f"target '{self.name}': output '{self.output}' is a table ({type(raw).__name__}), not an array of numbers: "
                "a target without 'on' selects rows by number; name the table's key columns with 'on' (e.g. on: [week])"
            ) from e
        if arr.ndim == 1:
            arr = arr.reshape(-1, 1)
        if arr.ndim != 2:
            raise SimulationError(f"target '{self.name}': output '{self.output}' must be 1-D or 2-D, got shape {arr.shape}")
        m = self.observed.values.shape[1]
        if arr.shape[1] != m:
            raise SimulationError(
                f"target '{self.name}': output '{self.output}' has {arr.shape[1]} column(s), observed data has {m} ({', '.join(self.observed.columns)})"
            )
        last = int(self.observed.index.max())
        if last >= arr.shape[0]:
            raise SimulationError(
                f"target '{self.name}': observed index goes to {last} but output '{self.output}' has only {arr.shape[0]} rows"
            )
        sim = arr[self.observed.index]
        if not np.isfinite(sim).all():
            raise SimulationError(f"target '{self.name}': output '{self.output}' has NaN or infinite values")
        return sim

    def loss(self, sim: np.ndarray, outputs: Mapping[str, Any] | None = None) -> float:
        """Score an aligned simulated array against the observations (gaps left out;
        ``outputs``: the replicate's, for a score whose dispersion is a model output)."""
        label = f"target '{self.name}' (output '{self.output}')"
        if self.score.kind == "custom":  # the user's function sees every cell, gaps as NaN (custom.py)
            return custom_score(self.score, self.observed, sim, label)
        dispersion = dispersion_of(self.score, outputs or {}, label) if self.score.dispersion_output else None
        obs = self.observed
        if obs.present is None:
            return score(self.score, sim, obs.values, obs.trials, dispersion, label)
        mask = obs.present
        trials = None if obs.trials is None else np.broadcast_to(obs.trials, mask.shape)[mask]
        return score(self.score, np.asarray(sim)[mask], obs.values[mask], trials, dispersion, label)


def compile_targets(job: CalibrationJob, declared_outputs: Sequence[str] | None = None) -> tuple[CompiledTarget, ...]:
    """Load every target's data; check outputs against the model's declared ones.

    Raises:
        JobSpecError: a data problem or an output the model does not declare,
            naming ``targets[i].data`` / ``targets[i].output``.
    """
    compiled = []
    for i, t in enumerate(job.targets):
        if declared_outputs is not None and t.output not in declared_outputs:
            raise JobSpecError(
                f"target '{t.name}': model '{job.model}' has no output '{t.output}'",
                problems=[(f"targets[{i}].output", f"expected one of: {', '.join(declared_outputs)}")],
            )
        extra = t.score.dispersion_output
        if declared_outputs is not None and extra is not None and extra not in declared_outputs:
            raise JobSpecError(
                f"target '{t.name}': model '{job.model}' has no output '{extra}' (the score's dispersion_output)",
                problems=[(f"targets[{i}].score.dispersion_output", f"expected one of: {', '.join(declared_outputs)}")],
            )
        observed = load_observed(t, job.base_dir, f"targets[{i}].data")
        cells = int((~np.isnan(observed.values)).sum())
        if t.synthetic_estimator == "ubsl" and job.n_replicates < ubsl_min_replicates(cells):
            raise JobSpecError(
                f"target '{t.name}': synthetic_estimator ubsl needs n_replicates >= {ubsl_min_replicates(cells)} "
                f"({cells} observed cells + 4), got {job.n_replicates}",
                problems=[("n_replicates", f"use {ubsl_min_replicates(cells)} or more, or synthetic_estimator: plugin")])
        spec = resolved(t.score, job.base_dir)  # a custom score's file, absolute for the workers
        compiled.append(CompiledTarget(t.name, t.output, observed, spec, t.aggregation, t.weight, _aligner(t, observed),
                                       t.synthetic_estimator))
        if observed.gap_rows:
            log.warning(gap_note(t, observed), target=t.name, gaps=int((~observed.present).sum()), rows=len(observed.values))
    return tuple(compiled)


def gap_note(t: TargetSpec, observed: Observed) -> str:
    """One line on a target's blank cells: cells and times counted apart (90 cells over 30
    dates with 14 blanks on 8 dates is "14 of 90 cells ..., on 8 of 30 dates")."""
    gaps = ~observed.present  # type: ignore[operator]
    rows, n = observed.gap_rows, len(observed.values)
    time = next((k for k in observed.keys or () if k.name == observed.time_key), None)
    if time is None:
        unit = f"{t.index_column}s" if t.index_column else "rows"
        return f"target {t.name}: {rows} of {n} {unit} have no data"
    times = np.unique(time.values)
    if len(times) == n and gaps.shape[1] == 1:  # one row per time: rows are times
        return f"target {t.name}: {rows} of {n} {time.name}s have no data"
    on = np.unique(time.values[gaps.any(axis=1)])
    return (f"target {t.name}: {int(gaps.sum())} of {gaps.size} cells have no data, "
            f"on {len(on)} of {len(times)} {time.name}s")


def _aligner(t: TargetSpec, observed: Observed) -> Aligner | None:
    if observed.keys is None:
        return None
    start = float(date_days([t.start_date])[0]) if t.start_date is not None else None
    return Aligner(t.name, t.output, observed.keys, t.match or "exact", observed.time_key, start, t.period, observed.columns)


def evaluate_replicate(
    targets: Sequence[CompiledTarget], outputs: Mapping[str, Any]
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Score one replicate's outputs against every target.

    Returns:
        ``(scores, kept)``: each target's loss for this replicate, and the
        aligned simulated arrays of the ``score_of_mean`` targets only (needed
        to score the replicate mean; as small as the observed data).
    """
    scores: dict[str, float] = {}
    kept: dict[str, np.ndarray] = {}
    for t in targets:
        sim = t.align(outputs)
        scores[t.name] = t.loss(sim, outputs)
        if t.aggregation in KEEPS_SERIES:
            kept[t.name] = sim
    return scores, kept


def aggregate_trial(
    targets: Sequence[CompiledTarget],
    replicate_scores: Sequence[Mapping[str, float]],
    replicate_kept: Sequence[Mapping[str, np.ndarray]],
) -> tuple[dict[str, float], float]:
    """Aggregate R replicates into per-target values and the weighted trial loss."""
    per_target: dict[str, float] = {}
    for t in targets:
        if t.aggregation == "score_of_mean":
            value = t.loss(np.mean([k[t.name] for k in replicate_kept], axis=0))
        elif t.aggregation == "synthetic_likelihood":
            series = np.stack([k[t.name] for k in replicate_kept])
            if t.estimator == "ubsl":  # an estimate of 0 is a valid value of an unbiased estimator: weight 0, not a failure
                value = min(ubsl_nll(series, t.observed.values), ZERO_LIKELIHOOD_NLL)
            else:
                value = synthetic_nll(series, t.observed.values)
        elif t.aggregation == "logmeanexp":
            value = log_mean_exp_loss(np.array([s[t.name] for s in replicate_scores]))
        else:
            value = float(np.mean([s[t.name] for s in replicate_scores]))
        per_target[t.name] = value
    loss = float(sum(t.weight * per_target[t.name] for t in targets))
    return per_target, loss
