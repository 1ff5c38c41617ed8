"""The end of a coordinator's run: its result from the study as it now stands, results files written.

:func:`collect` reads the study once, names the study's best (``reporting/best.py``;
re-evaluated on fresh seeds by the coordinator that ends with every trial finished),
writes the posterior sample of a posterior run and the results files, and raises
:class:`~modelops_calabaria.errors.RunFailedError` for a failure storm or a run in
which no trial completed.
"""

from __future__ import annotations

import statistics
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from modelops_calabaria import __version__
from modelops_calabaria.backend.base import BUSY_ATTR, StudyBackend
from modelops_calabaria.calibration.prepare import Prepared
from modelops_calabaria.calibration.reevaluate import apply_selection, reevaluate_at_end
from modelops_calabaria.calibration.run_state import RunState
from modelops_calabaria.calibration.startup import study_state_key
from modelops_calabaria.calibration.study import TARGETS_ATTR
from modelops_calabaria.errors import RunFailedError
from modelops_calabaria.logging import get_logger
from modelops_calabaria.outcome import RunResult
from modelops_calabaria.posterior import count_reevaluation, write_posterior
from modelops_calabaria.reporting.best import read_stored as read_stored_best
from modelops_calabaria.reporting.best import store as store_best
from modelops_calabaria.reporting.best import study_best
from modelops_calabaria.reporting.results import state_counts, write_results
from modelops_calabaria.settings import Settings
from modelops_calabaria.simulation import DeferredService, InlineSimulationService, SimulationService, few_runs_inline, per_run_seconds
from modelops_calabaria.simulation.task import SimContext

log = get_logger(__name__)


def collect(p: Prepared, study: optuna.Study, backend: StudyBackend, latencies: tuple[list[float], list[float]],
             stop_reason: str | None, shutdown_reason: str | None, state: RunState, parallel: bool, loops: int,
             slots: int, wall: float, service: DeferredService | None = None,
             settings: Settings | None = None) -> RunResult:
    """The run's result from the study as it now stands; results files written.
    With ``service``, the best trials are re-evaluated on fresh seeds first (reevaluate.py):
    on its cluster if it was started, else in this process when that is cheap
    (:func:`_reevaluation_service`)."""
    trials = study.get_trials(deepcopy=False)
    study_id = backend.study_id(study.study_name)
    # One definition of the study's best for every coordinator and command (reporting/best.py).
    best, stored_selection = study_best(trials, read_stored_best(backend, study_id), p.job.direction == "maximize")
    asks, tells = latencies
    result = RunResult(
        study=study.study_name,
        storage=p.storage.display,
        mode="parallel" if parallel else "batched",
        concurrency=loops,
        slots=slots,
        best_params=dict(best.params) if best else None,
        best_loss=float(best.value) if best and best.value is not None else None,
        best_trial=best.number if best else None,
        best_targets=dict(best.user_attrs.get(TARGETS_ATTR, {})) if best else {},
        trials=state_counts(trials),
        this_run={"told": state.completed + state.failed + state.pruned, "completed": state.completed, "failed": state.failed,
                  "pruned": state.pruned},
        wall_time_s=round(wall, 3),
        trials_per_minute=round(60 * (state.completed + state.failed + state.pruned) / max(wall, 1e-9), 2),
        utilization=round(state.utilization(time.monotonic(), slots), 4),
        stop_reason=stop_reason,
        first_failure=state.first_failure,
        output_dir=str(p.output_dir),
        latency_ms={
            "ask_p50": _pct(asks, 50), "ask_p95": _pct(asks, 95), "tell_p50": _pct(tells, 50), "tell_p95": _pct(tells, 95)
        },
    )
    if p.job.posterior is not None:
        result.posterior = write_posterior(p.output_dir, p.job, backend, backend.study_id(study.study_name))
    if stored_selection is not None:
        result.selection = stored_selection  # chosen by a coordinator that ended on these same trials
    elif (service is not None and shutdown_reason is None and not state.failure_storm
          and not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)):
        # Re-evaluate only once every trial is finished: a coordinator that ends while others still
        # run reports the in-sample best, and the last one to end chooses for the whole study.
        reevaluation = _reevaluation_service(p, trials, service, settings)
        try:
            apply_selection(result, reevaluate_at_end(p.job, trials, reevaluation), trials)
            if result.posterior is not None:  # its n_simulations counts the re-evaluation's model runs too
                count_reevaluation(result.posterior, result.selection)
        finally:
            if reevaluation is not service:
                reevaluation.close()
        if result.selection is not None:
            store_best(backend, study_id, trials, result.selection)
    result.study_state = study_state_key(p.stored, p.storage.display, __version__, [t.number for t in trials],
                                         [t.state for t in trials], [t.value for t in trials])
    write_results(p.output_dir, result, trials)
    log.info("calibration finished", study=result.study, best_loss=result.best_loss, best_params=result.best_params,
             trials=result.trials, wall_time_s=result.wall_time_s, utilization=result.utilization,
             stop_reason=result.stop_reason, output=str(p.output_dir))
    if state.failure_storm:
        raise RunFailedError(
            f"stopped after {state.storm_count or state.consecutive_failures} consecutive failed trials; the first failure was:\n{state.first_failure}",
            hint="run `calabaria simulate` with one parameter set to debug the model",
        )
    if result.trials.get("COMPLETE", 0) == 0 and state.completed + state.failed > 0 and shutdown_reason is None:
        raise RunFailedError(f"no trial completed; the first failure was:\n{state.first_failure}",
                             hint="run `calabaria simulate` with one parameter set to debug the model")
    return result


def _reevaluation_service(p: Prepared, trials: list[FrozenTrial], service: DeferredService,
                          settings: Settings | None) -> SimulationService:
    """Where the end-of-run re-evaluation runs: the run's cluster when it was started; else
    (nothing was simulated) threads of this process when its few simulations are cheap
    (:func:`few_runs_inline`, from the trials' measured durations), else the cluster."""
    if service.started or settings is None:
        return service
    job = p.job
    k = job.reevaluate.top_k
    n = k * (job.reevaluate.replicates or 2 * job.n_replicates)
    per_run = per_run_seconds((t.user_attrs.get(BUSY_ATTR) for t in trials if t.state == TrialState.COMPLETE),
                              job.n_replicates)
    if k <= 0 or not few_runs_inline(settings.scheduler, n, per_run):
        return service
    log.info("re-evaluating in this process: no cluster for a few short simulations", simulations=n,
             seconds_each=round(per_run or 0.0, 4))
    context = SimContext(p.model_ref, dict(job.fixed), p.targets, job.timeout_s, job.replicate_retries)
    return InlineSimulationService(context, settings.local_workers)


def _pct(values: list[float], q: int) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return round(values[0], 3)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 3)
