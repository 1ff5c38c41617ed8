"""``calabaria project`` and :func:`project`: from a calibration's run directory to projections by scenario.

Order, so that bad input creates nothing: read the run (its job, stored with the
study; its parameter sets), the scenarios file, the model and the targets; plan
(every check); check the output directory; connect the simulation service
(unreachable: exit 1, nothing created); then create the output directory, run
what is not yet done there, and write the outputs:

- ``projections.parquet``: the long table (scenario, draw, replicate, target, output, date, keys, value);
- ``quantiles.csv``: per scenario, target, keys and date, the 23 hub quantile levels;
- ``hubverse.csv``: the hub model-output file (:mod:`.hubverse`);
- ``summary.csv`` and ``projection.json``: peaks, cumulative totals, paired differences, the
  forecast check, and the facts of the run (parameter source, draws, seeds, scenarios);
- ``projection.html``: the self-contained page (:mod:`.page`).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelops_calabaria.errors import ConfigurationError, JobSpecError
from modelops_calabaria.job import CalibrationJob, job_from_dict, load_job
from modelops_calabaria.models import canonical_ref, load_model
from modelops_calabaria.projection import holdout as ho
from modelops_calabaria.projection.draws import ParameterSets, parameter_sets
from modelops_calabaria.projection.hubverse import hub_csv
from modelops_calabaria.projection.outputs import key_columns, long_table, quantile_rows, summaries, write_parquet
from modelops_calabaria.projection.run import Plan, Progress, collect, plan_projection, run_plan
from modelops_calabaria.projection.spec import ScenarioSpec, load_spec
from modelops_calabaria.projection.store import ChunkStore
from modelops_calabaria.targets.evaluate import compile_targets


@dataclass
class ProjectionResult:
    """What a projection wrote, and its headline numbers (also in projection.json)."""

    output_dir: Path
    files: list[Path]
    facts: dict[str, Any]
    summaries: list[dict[str, Any]] = field(default_factory=list)
    forecast_check: dict[str, Any] | None = None


def read_run(run_dir: Path, storage: str | None = None) -> CalibrationJob:
    """The job stored with a run directory's study (read only).

    Raises:
        ConfigurationError: no such run directory or no study named in it.
        StudyNotFoundError, ServiceUnavailableError: as the report's reading.
    """
    from modelops_calabaria.reporting.report import load_study, resolve_source

    if not run_dir.is_dir():
        raise ConfigurationError(f"run directory {run_dir} does not exist" if not run_dir.exists() else f"{run_dir} is not a directory",
                                 hint="pass the --output directory of a calibration (e.g. runs/seir-demo)")
    src = resolve_source(run_dir, None, storage, None)  # the run's study.db, else ``storage`` (as `report` reads)
    _, stored, *_ = load_study(src.study, src.target)
    if not stored:
        raise ConfigurationError(f"the study of {run_dir} holds no job", hint="project from a run made by calabaria calibrate")
    return job_from_dict(stored, source=f"job stored with study '{src.study}'", base_dir=run_dir)


def project(run_dir: Path | str, scenarios: Path | str | ScenarioSpec, *, until: dt.date | None = None,
            horizon: int | None = None, draws: int = 200, replicates: int = 2, output: Path | str | None = None,
            seed: int | None = None, scheduler: str | None = None, local_workers: int | None = None,
            holdout_after: dt.date | None = None, truth: Path | str | None = None, common_seeds: bool = True,
            job: CalibrationJob | None = None, sets: ParameterSets | None = None, progress_stream: Any = None,
            storage: str | None = None) -> ProjectionResult:
    """Project a calibrated model under each scenario; write the outputs (module docstring) into ``output``
    (default ``RUN_DIR/projection``). A run interrupted earlier into the same ``output`` resumes.

    ``holdout_after`` with ``truth`` (the job file holding every observation): score the
    projection against the observations after that date; the run must have been
    calibrated on data up to it (:func:`calibrate_holdout`). When ``run_dir`` does not
    exist, that calibration runs first, into it (SQLite study ``run_dir/study.db``), once
    every input has been checked. ``job``/``sets``: use these instead of reading them
    from ``run_dir`` (from Python). ``storage``: the study's storage URL when the run
    directory holds no ``study.db`` (a PostgreSQL study), as ``report`` takes it.

    Raises:
        JobSpecError, ConfigurationError: bad input (nothing created).
        ServiceUnavailableError: the scheduler does not answer (nothing created).
        SimulationError: a simulation failed (the chunks done so far are kept for a resume).
    """
    run_dir = Path(run_dir)
    spec = scenarios if isinstance(scenarios, ScenarioSpec) else load_spec(Path(scenarios))
    if job is None and holdout_after is not None and truth is not None and not run_dir.exists():
        _calibrate_first(run_dir, spec, holdout_after, Path(truth), Path(output) if output is not None else run_dir / "projection",
                         dict(draws=draws, replicates=replicates, seed=seed, horizon=horizon, until=until),
                         scheduler=scheduler, local_workers=local_workers)
    if job is None:
        job = read_run(run_dir, storage)
    model = load_model(canonical_ref(job.model, job.base_dir))
    targets = compile_targets(job, model.outputs)
    if sets is None:
        sets = parameter_sets(run_dir, list(job.parameters), {n: p.kind for n, p in job.parameters.items()})
    truth_targets = None
    if holdout_after is not None:
        if truth is None:
            raise ConfigurationError("--holdout-after needs --truth JOB.yaml: the job whose data run past the hold-out date")
        truth_targets = compile_targets(load_job(Path(truth)), model.outputs)
    elif truth is not None:
        raise ConfigurationError("--truth is for --holdout-after DATE", hint="pass both, or neither")
    plan = plan_projection(job, model, targets, sets, spec, draws=draws, replicates=replicates, seed=seed, horizon=horizon,
                           until=_truth_end(truth_targets, spec, job) if holdout_after is not None and until is None and horizon is None else until,
                           reference_date=holdout_after, common_seeds=common_seeds)
    points = None
    if holdout_after is not None:
        assert truth_targets is not None
        last = max(g.dates[g.obs_rows].max() for g in plan.grids)
        if last > dt_np(holdout_after):
            raise ConfigurationError(f"the run's data go to {last}, after the hold-out date {holdout_after}: "
                                     "it saw what it is to be scored on", hint="calibrate on the data up to the date first (calibrate_holdout)")
        points = ho.held_back(plan, truth_targets, holdout_after, spec.step_days)
    out_dir = Path(output) if output is not None else run_dir / "projection"
    from modelops_calabaria.reporting.simulate import check_output_dir

    check_output_dir(out_dir)
    store = ChunkStore(out_dir, plan.fingerprint())
    store.check()
    from modelops_calabaria.simulation import SimContext, connect_service

    context = SimContext(plan.model_ref, {}, plan.probes, job.timeout_s, job.replicate_retries)
    service = connect_service(scheduler, context, local_workers=local_workers)
    try:
        store.open(_facts(plan))
        total = len(plan.scenarios) * len(plan.draws) * plan.replicates
        done = sum(store.done(n, d) for n, _ in plan.scenarios for d in range(len(plan.draws))) * plan.replicates
        bar = Progress(total, done, progress_stream)
        busy = run_plan(plan, service, store, progress=bar.step)
        values = collect(plan, store)
    finally:
        store.close()
        service.close()
    check = ho.score(plan, values, points, holdout_after) if points is not None else None
    return write_outputs(plan, values, out_dir, check, busy)


def dt_np(date: dt.date) -> Any:
    import numpy as np

    return np.datetime64(date, "D")


def _truth_end(truth: Any, spec: ScenarioSpec, job: CalibrationJob) -> dt.date:
    """The last date of the held-back observations: how far a forecast check projects by default."""
    from modelops_calabaria.projection.grid import build_grids, last_observed
    from modelops_calabaria.projection.run import _start_date

    return last_observed(build_grids(truth, _start_date(spec, job), spec.step_days, 0, None))


def _facts(plan: Plan) -> dict[str, Any]:
    return {"parameter_source": plan.sets.source, "candidates": len(plan.sets.params), "draws": len(plan.draws),
            "replicates": plan.replicates, "seed": plan.seed, "common_random_numbers": plan.common_seeds,
            "drawn_trials": [plan.sets.trials[i] for i in plan.draws], "scenarios": [n for n, _ in plan.scenarios],
            "start_date": str(plan.start), "reference_date": str(plan.reference_date), "n_days": plan.n_days,
            "model": plan.model_ref, "study": plan.job.study}


def _atomic(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _csv(rows: list[dict[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, list) and len(v) == 3:
            out.update({f"{k}_median": v[1], f"{k}_lower_95": v[0], f"{k}_upper_95": v[2]})
        else:
            out[k] = v
    return out


def write_outputs(plan: Plan, values: Any, out_dir: Path, check: dict[str, Any] | None, busy_s: float = 0.0) -> ProjectionResult:
    """Write every output of a finished projection (each file atomically)."""
    from modelops_calabaria.projection import page

    files = []
    path = out_dir / "projections.parquet"
    write_parquet(path, long_table(plan, values))
    files.append(path)
    rows = list(quantile_rows(plan, values))
    files.append(_atomic(out_dir / "quantiles.csv", _csv(rows)))
    files.append(_atomic(out_dir / "hubverse.csv", hub_csv(rows, key_columns(plan), str(plan.reference_date))))
    sums = summaries(plan, values)
    files.append(_atomic(out_dir / "summary.csv", _csv([_flat(r) for r in sums])))
    facts = {**_facts(plan), "simulations": int(values.shape[0] * values.shape[1] * values.shape[2]),
             "simulation_seconds_this_run": round(busy_s, 3)}
    doc = {"facts": facts, "summaries": sums, "forecast_check": check}
    files.append(_atomic(out_dir / "projection.json", json.dumps(doc, indent=1, default=str) + "\n"))
    files.append(page.write_page(plan, values, out_dir, sums, check))
    return ProjectionResult(out_dir, files, facts, sums, check)


def _holdout_job(job_file: Path, after: dt.date, start_date: dt.date | None, step_days: int) -> tuple[CalibrationJob, Any]:
    """The job of ``job_file`` cut to the observations up to ``after``, and its model."""
    job = load_job(job_file)
    model = load_model(canonical_ref(job.model, job.base_dir))
    start = start_date or next((t.start_date for t in job.targets if t.start_date is not None), None)
    if start is None:
        raise JobSpecError("a hold-out of a target by row number needs start_date (the date of model day 0)",
                           hint="add start_date: YYYY-MM-DD to the scenarios file")
    return ho.truncate_job(job, compile_targets(job, model.outputs), after, start, step_days), model


def _calibrate_first(run_dir: Path, spec: ScenarioSpec, after: dt.date, truth: Path, out_dir: Path,
                     sizes: dict[str, Any], *, scheduler: str | None, local_workers: int | None) -> None:
    """Calibrate the truth job on its data up to ``after`` into ``run_dir``, after checking every input
    the projection will check (the job's midpoints standing in for the parameters it will find)."""
    import numpy as np

    from modelops_calabaria.calibration.runner import run_calibration
    from modelops_calabaria.job import midpoint
    from modelops_calabaria.reporting.simulate import check_output_dir
    from modelops_calabaria.settings import Settings

    short, model = _holdout_job(truth, after, spec.start_date, spec.step_days)
    stand_in = ParameterSets("best", ({n: midpoint(p) for n, p in short.parameters.items()},), np.ones(1), (None,))
    until = sizes["until"]
    if until is None and sizes["horizon"] is None:
        until = _truth_end(compile_targets(load_job(truth), model.outputs), spec, short)
    plan_projection(short, model, compile_targets(short, model.outputs), stand_in, spec, draws=sizes["draws"],
                    replicates=sizes["replicates"], seed=sizes["seed"], horizon=sizes["horizon"], until=until, reference_date=after)
    check_output_dir(run_dir)
    check_output_dir(out_dir)
    run_calibration(short, Settings(storage=f"sqlite:///{run_dir.resolve() / 'study.db'}", scheduler=scheduler,
                                    local_workers=local_workers), output_dir=run_dir)


def calibrate_holdout(job_file: Path | str, after: dt.date, output: Path | str, *, start_date: dt.date | None = None,
                      step_days: int = 7, max_trials: int | None = None, **settings: Any) -> Any:
    """Calibrate ``job_file`` on its observations up to ``after`` only, into ``output`` (for a forecast check).

    ``start_date``: the date of model day 0 when a target counts rows (as in the scenarios file).
    ``settings``: passed to :class:`~modelops_calabaria.settings.Settings` (storage, scheduler, ...).
    """
    from modelops_calabaria.calibration.runner import run_calibration
    from modelops_calabaria.settings import Settings

    short, _ = _holdout_job(Path(job_file), after, start_date, step_days)
    if max_trials is not None:
        short = short.model_copy(update={"max_trials": max_trials}).with_base_dir(short.base_dir)
    out = Path(output)
    settings.setdefault("storage", f"sqlite:///{out / 'study.db'}")
    return run_calibration(short, Settings(**settings), output_dir=out)
