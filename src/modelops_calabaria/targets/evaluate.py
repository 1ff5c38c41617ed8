"""Evaluate a replicate against every target, and aggregate replicates into a trial loss.

Pure functions: they run on Dask workers (replicate scoring and trial
aggregation) and in tests, with no I/O.

Aggregations over the R replicates of one trial:

- ``mean_of_scores``: mean of the R per-replicate scores;
- ``score_of_mean``: the score of the replicate-mean simulated series;
- ``logmeanexp``: ``-log(mean(exp(-nll_r)))``, the NLL of the averaged likelihood.

Trial loss = Σ weight × aggregated score, over targets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelops_calabaria.errors import JobSpecError, SimulationError
from modelops_calabaria.job import CalibrationJob, ScoreSpec
from modelops_calabaria.targets.data import Observed, load_observed
from modelops_calabaria.targets.scores import dispersion_of, log_mean_exp_loss, score


@dataclass(frozen=True)
class CompiledTarget:
    """A target with its observed data loaded: everything a worker needs to score it."""

    name: str
    output: str
    observed: Observed
    score: ScoreSpec
    aggregation: str
    weight: float

    def align(self, outputs: Mapping[str, Any]) -> np.ndarray:
        """The simulated values at the observed index, shape (n, m).

        Raises:
            SimulationError: the output is missing, too short, of the wrong
                width, or not finite.
        """
        if self.output not in outputs:
            raise SimulationError(
                f"target '{self.name}': model returned no output '{self.output}' (it returned: {', '.join(map(str, outputs)) or 'nothing'})"
            )
        raw = outputs[self.output]
        arr = np.asarray(raw.to_numpy() if hasattr(raw, "to_numpy") else raw, dtype=float)
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
        """Score an aligned simulated array against the observations (``outputs``: the
        replicate's, for a score whose dispersion is a model output)."""
        label = f"target '{self.name}' (output '{self.output}')"
        dispersion = dispersion_of(self.score, outputs or {}, label) if self.score.dispersion_output else None
        return score(self.score, sim, self.observed.values, self.observed.trials, dispersion, label)


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
        compiled.append(CompiledTarget(t.name, t.output, observed, t.score, t.aggregation, t.weight))
    return tuple(compiled)


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
        if t.aggregation == "score_of_mean":
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
        elif t.aggregation == "logmeanexp":
            value = log_mean_exp_loss(np.array([s[t.name] for s in replicate_scores]))
        else:
            value = float(np.mean([s[t.name] for s in replicate_scores]))
        per_target[t.name] = value
    loss = float(sum(t.weight * per_target[t.name] for t in targets))
    return per_target, loss
