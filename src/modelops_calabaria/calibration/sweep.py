"""Running a sweep: the design as enqueued trials on the calibration wire, then the outputs and indices.

A sweep job (``sweep:`` in the job) is run as a calibration of its own kind
(:func:`sweep_job`): budget = the number of design rows, ``sweep.replicates`` replicates
per trial, no re-evaluation. The study's creator enqueues row ``i`` of the design as a
trial carrying ``i`` (``provenance.on_study_created``), so every coordinator — ``calabaria
sweep`` or a joining ``calabaria worker`` — takes each row exactly once (the enqueued-trial
pop), the budget ledger keeps the count exact, and a killed coordinator's
unfinished rows are found again:

1. run the wire until the budget is spent;
2. look at the study: rows still RUNNING on another coordinator are waited for (a silent
   coordinator's are failed "coordinator lost" after the grace period); rows lost with a
   coordinator, or never enqueued (a creator killed while enqueuing), are enqueued again
   and the budget extended by as many; then 1 again. A row whose model failed is not
   re-run: it is reported as missing.
3. write ``sweep.parquet`` (long: point, replicate, parameter values, summary, value),
   ``sensitivity.json`` / ``sensitivity.csv`` (sensitivity/analysis.py) and
   ``sensitivity.html`` (sensitivity/html.py).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from modelops_calabaria.backend.base import FAIL_REASON
from modelops_calabaria.backend.factory import open_store
from modelops_calabaria.calibration.recovery import LOST_REASON, recover_stale_trials
from modelops_calabaria.calibration.runner import prepare, run_calibration
from modelops_calabaria.dbretry import retry_db
from modelops_calabaria.errors import ConfigurationError, JobSpecError, StudyNotFoundError
from modelops_calabaria.job import CalibrationJob, ReevaluateSpec, ReportSpec, SamplerSpec
from modelops_calabaria.job.sweep import POINT_ATTR, SUMMARIES_ATTR
from modelops_calabaria.logging import get_logger
from modelops_calabaria.models import load_model
from modelops_calabaria.sensitivity.analysis import indices
from modelops_calabaria.sensitivity.design import design_points, problem, scaled_design
from modelops_calabaria.sensitivity.html import write_page
from modelops_calabaria.settings import Settings, resolve_settings

log = get_logger(__name__)
MAX_ROUNDS = 20  # top-up rounds (each one re-runs only what a lost coordinator left)


def sweep_job(job: CalibrationJob) -> CalibrationJob:
    """The job a sweep runs: its budget the design's size, its replicates the sweep's, nothing sampled."""
    if job.sweep is None:
        raise JobSpecError("the job has no 'sweep' block", problems=[("sweep", "add {design, points, replicates, summaries}")])
    n = job.sweep.size(len(job.parameters))
    return job.model_copy(update={
        "max_trials": n, "n_replicates": job.sweep.replicates, "sampler": SamplerSpec(name="random"),
        "reevaluate": ReevaluateSpec(top_k=0), "report": ReportSpec(replicates=0, others=0), "retry_lost_trials": False,
        "start": [], "ramp": None,
    })


@dataclass
class PointsState:
    """Where each design row stands in the study."""

    complete: dict[int, optuna.trial.FrozenTrial] = field(default_factory=dict)  # first COMPLETE trial per row
    running: set[int] = field(default_factory=set)
    waiting: set[int] = field(default_factory=set)
    lost: set[int] = field(default_factory=set)  # FAIL "coordinator lost", and not done since
    failed: dict[int, str] = field(default_factory=dict)  # the model failed: not re-run

    def to_rerun(self, n: int) -> list[int]:
        """Rows to enqueue again: lost, or never enqueued, and nowhere else."""
        seen = set(self.complete) | self.running | self.waiting | set(self.failed)
        return [i for i in range(n) if i not in seen]


def points_state(study: optuna.Study) -> PointsState:
    s = PointsState()
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        i = t.user_attrs.get(POINT_ATTR)
        if not isinstance(i, int):
            continue
        if t.state == TrialState.COMPLETE:
            s.complete.setdefault(i, t)
        elif t.state == TrialState.RUNNING:
            s.running.add(i)
        elif t.state == TrialState.WAITING:
            s.waiting.add(i)
        elif t.state == TrialState.FAIL:
            reason = str(t.user_attrs.get(FAIL_REASON, ""))
            if reason.startswith(LOST_REASON) or reason.startswith("cancelled"):
                s.lost.add(i)
            else:
                s.failed.setdefault(i, reason.splitlines()[0] if reason else "failed")
    for i in s.complete:
        s.failed.pop(i, None)
    return s


def run_sweep(job: CalibrationJob, settings: Settings | None = None, *, output_dir: str | Path | None = None,
              concurrency: int | None = None, handle_signals: bool = False, shutdown_grace_s: float = 30.0,
              show_progress: bool | None = None, poll_s: float = 1.0) -> dict[str, Any]:
    """Run (or resume) a sweep; write sweep.parquet, sensitivity.json/.csv and sensitivity.html.

    Returns the content of sensitivity.json. Raises like ``run_calibration``; a storage that
    cannot be read again (``memory``) is a ConfigurationError (exit 2), before anything runs.
    """
    sj = sweep_job(job)
    settings = settings or resolve_settings(job.execution.model_dump())
    out = Path(output_dir) if output_dir else Path("runs") / job.study
    p = prepare(sj, settings, out)
    _check_outputs(sj, p.model_ref)
    if p.storage.kind == "memory":
        raise ConfigurationError("a sweep keeps its outputs in the study: it needs a storage that outlives the run",
                                 hint="use the run directory's SQLite file (the default), a journal file or PostgreSQL")
    design = design_points(sj)
    stopped = False
    last_waiting: set[int] | None = None
    for _ in range(MAX_ROUNDS):
        # The budget is every trial that carries a row (re-enqueued ones included), at least the design:
        # the same answer for a first run, a resumed one and a top-up round.
        budget = max(len(design), _trials_with_rows(p.storage, sj, leaked=last_waiting is not None))
        result = run_calibration(sj, settings, output_dir=out, concurrency=concurrency, handle_signals=handle_signals,
                                 shutdown_grace_s=shutdown_grace_s, show_progress=show_progress, max_trials=budget)
        if result.stop_reason not in (None, "budget spent"):
            stopped = True  # a signal or a stop rule: keep what there is, top nothing up
            break
        rerun, waiting = _settle(p.storage, sj, settings, design, poll_s)
        if not rerun and (not waiting or waiting == last_waiting):
            break  # done, or rows left waiting that another round would not take either (reported missing)
        last_waiting = waiting
    return collect(sj, p.storage, out, partial=stopped)


def _check_outputs(job: CalibrationJob, model_ref: str) -> None:
    """A summary of an output the model does not declare would fail every replicate: refuse it first."""
    declared = load_model(model_ref).outputs
    assert job.sweep is not None
    for i, spec in enumerate(job.sweep.summaries):
        if declared is not None and spec.output not in declared:
            raise JobSpecError(f"summary '{spec.label}': model '{job.model}' has no output '{spec.output}'",
                               problems=[(f"sweep.summaries[{i}].output", f"expected one of: {', '.join(declared)}")])


def _trials_with_rows(target: Any, job: CalibrationJob, leaked: bool = False) -> int:
    """Trials that carry a row, any state. With ``leaked`` (a later round: nothing running) the claims
    spent so far plus the rows waiting instead: a claim can be spent without a row (a coordinator
    killed between claim and ask, or one declared lost while alive asking past the design)."""
    try:
        backend = open_store(target, 1, read_only=True)
    except StudyNotFoundError:
        return 0
    try:
        study = optuna.load_study(study_name=job.study, storage=backend.optuna_storage)
        trials = study.get_trials(deepcopy=False)
        if leaked:
            claimed, _ = backend.ledger.budget(job.study)
            return claimed + sum(1 for t in trials if t.state == TrialState.WAITING)
        return sum(1 for t in trials if POINT_ATTR in t.user_attrs)
    except KeyError:  # no such study yet
        return 0
    finally:
        backend.close()


def _settle(target: Any, job: CalibrationJob, settings: Settings, design: list[dict[str, Any]],
            poll_s: float) -> tuple[list[int], set[int]]:
    """Wait for rows running elsewhere (failing those of silent coordinators); enqueue the lost ones again.

    Returns the rows enqueued, and the rows still waiting: enqueued rows a run left when the
    budget ran out first (a claim lost with a killed coordinator, given back by the ledger
    when nobody else works on the study): the next round runs them."""
    backend = open_store(target, 1)
    try:
        study = optuna.load_study(study_name=job.study, storage=backend.optuna_storage)
        deadline = time.monotonic() + 4 * settings.grace_period_s + 60
        while True:
            state = points_state(study)
            if not state.running or time.monotonic() > deadline:
                break
            recover_stale_trials(study, backend.ledger, settings.grace_period_s, backend=backend)
            time.sleep(poll_s)
        rerun = state.to_rerun(len(design))
        for i in rerun:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry_db("enqueue design", lambda i=i: study.enqueue_trial(design[i], user_attrs={POINT_ATTR: i}))
        if rerun:
            log.info("sweep rows lost with a coordinator enqueued again", rows=len(rerun))
        return rerun, set(state.waiting)
    finally:
        backend.close()


def collect(job: CalibrationJob, target: Any, out: Path, partial: bool = False) -> dict[str, Any]:
    """Read the kept summaries from the study; write sweep.parquet, the indices and the page."""
    backend = open_store(target, 1, read_only=True)
    try:
        study = optuna.load_study(study_name=job.study, storage=backend.optuna_storage)
        state = points_state(study)
    finally:
        backend.close()
    sweep = job.sweep
    assert sweep is not None
    names = [s.label for s in sweep.summaries] + [f"loss:{t.name}" for t in job.targets]
    scaled = scaled_design(job)
    n, reps = len(scaled), sweep.replicates
    values = {name: np.full((n, reps), np.nan) for name in names}
    for i, t in state.complete.items():
        kept = t.user_attrs.get(SUMMARIES_ATTR) or {}
        for name in names:
            row = kept.get(name) or []
            values[name][i, : len(row)] = row[:reps]
    _write_parquet(out / "sweep.parquet", job, state, names, values)
    prob = problem(job)
    result: dict[str, Any] = {
        "study": job.study, "design": sweep.design, "points": n, "replicates": reps, "parameters": prob["names"],
        "complete_points": len(state.complete), "failed_points": len(state.failed), "partial": partial,
        "confidence": sweep.confidence, "second_order": sweep.second_order,
        "first_failure": next(iter(state.failed.values()), None),
        "outputs": {name: indices(sweep.design, prob, scaled, values[name], second_order=sweep.second_order,
                                  levels=sweep.levels, resamples=sweep.bootstrap, confidence=sweep.confidence,
                                  seed=job.seed) for name in names},
    }
    (out / "sensitivity.json").write_text(json.dumps(result, indent=2))
    _write_csv(out / "sensitivity.csv", result)
    write_page(out / "sensitivity.html", result)
    log.info("sweep written", output=str(out), points=n, complete=len(state.complete), failed=len(state.failed))
    return result


def _write_parquet(path: Path, job: CalibrationJob, state: PointsState, names: list[str], values: dict[str, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, list[Any]] = {"point": [], "replicate": [], "trial": []}
    params = list(job.parameters)
    cols.update({name: [] for name in params})
    cols.update({"summary": [], "value": []})
    for i in sorted(state.complete):
        t = state.complete[i]
        for name in names:
            for r, v in enumerate(values[name][i]):
                if not np.isfinite(v):
                    continue
                cols["point"].append(i)
                cols["replicate"].append(r)
                cols["trial"].append(t.number)
                for k in params:
                    cols[k].append(float(t.params[k]))
                cols["summary"].append(name)
                cols["value"].append(float(v))
    pq.write_table(pa.table(cols), path)


def _write_csv(path: Path, result: dict[str, Any]) -> None:
    import csv

    fields = ["output", "parameter", "S1", "S1_conf", "ST", "ST_conf", "mu", "mu_star", "mu_star_conf", "sigma", "noise_share"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for name, res in result["outputs"].items():
            for j, param in enumerate(result["parameters"]):
                row = {"output": name, "parameter": param, "noise_share": res["noise_share"]}
                for k in fields[2:-1]:
                    if k in res:
                        row[k] = res[k][j]
                w.writerow(row)
