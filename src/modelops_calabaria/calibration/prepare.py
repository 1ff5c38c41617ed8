"""Prepare a run: everything checked and resolved that needs no service.

:func:`prepare` resolves a job once into :class:`Prepared` — the model reference, the
compiled targets (observed data loaded and checked), the storage target, the run
directory (checked, not created) and the job's stored form — which every later step
uses instead of resolving again. :func:`simulation_service` builds the run's
(not yet started) simulation service from it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from modelops_calabaria.calibration.elastic import loop_cap, target_loops
from modelops_calabaria.calibration.study import build_sampler
from modelops_calabaria.errors import JobSpecError
from modelops_calabaria.job import CalibrationJob
from modelops_calabaria.models import canonical_ref, load_model
from modelops_calabaria.models.catalog import range_problems
from modelops_calabaria.outputs import check_output_dir
from modelops_calabaria.settings import Settings
from modelops_calabaria.simulation import (INLINE, DeferredService, SimulationService, connect_service, local_cluster_shape,
                                           local_processes)
from modelops_calabaria.simulation.task import SimContext
from modelops_calabaria.storage import StorageTarget, parse_storage_url
from modelops_calabaria.targets.evaluate import CompiledTarget, compile_targets


@dataclass(frozen=True)
class Prepared:
    """A job checked without any service: resolved model, loaded data, storage target."""

    job: CalibrationJob
    model_ref: str
    targets: tuple[CompiledTarget, ...]
    storage: StorageTarget
    output_dir: Path
    stored: dict[str, Any]  # the job as stored with the study (:func:`stored_form`), made once
    sampler: optuna.samplers.BaseSampler | None = None  # built once, when the trials at once are known (runner.py)


@dataclass(frozen=True)
class RunOptions:
    """How this coordinator runs the job (``run_calibration``'s keyword arguments)."""

    max_trials: int | None = None
    extend: int | None = None
    concurrency: int | None = None
    handle_signals: bool = False
    shutdown_grace_s: float = 30.0
    show_progress: bool | None = None
    joining: bool = False
    accept_changes: bool = False  # resume a study whose observed data or model changed


def prepare(job: CalibrationJob, settings: Settings, output_dir: Path | None = None) -> Prepared:
    """Check everything that needs no server. Raises JobSpecError / ConfigurationError."""
    model_ref = canonical_ref(job.model, job.base_dir)
    bounds = {n: (p.lower, p.upper) for n, p in job.parameters.items() if p.kind != "categorical"}
    if problems := range_problems(job.model, job.fixed, bounds):  # a built-in's parameters, before anything runs
        raise JobSpecError(f"job values outside what model {job.model} accepts:", problems=problems)
    model = load_model(model_ref)
    targets = compile_targets(job, model.outputs)
    check_sampler(job)
    out = Path(output_dir) if output_dir else Path("runs") / job.study
    check_output_dir(out, "run directory")  # never over a file or device
    storage = parse_storage_url(settings.storage, out / "study.db")
    return Prepared(job, model_ref, targets, storage, out, stored_form(job, model_ref, targets))


def stored_form(job: CalibrationJob, model_ref: str, targets: Sequence[CompiledTarget]) -> dict[str, Any]:
    """The job as stored with the study: model path absolute, observed data inline."""
    data = job.to_storable()
    data["model"] = model_ref
    data["execution"] = {}  # settings belong to each coordinator, and a storage URL may hold a password
    for spec, compiled in zip(data["targets"], targets):
        spec.update(compiled.observed.inline(spec["score"]["trials_column"]))
        spec["columns"] = None  # the inline table carries the renamed columns already
        if compiled.score.function is not None:  # a custom score's file, absolute (targets/custom.py)
            spec["score"]["function"] = compiled.score.function
    return data


def storable_job(p: Prepared) -> dict[str, Any]:
    """The job as stored with the study (made once by :func:`prepare`; a copy)."""
    return copy.deepcopy(p.stored)


def check_sampler(job: CalibrationJob) -> None:
    """Build the job's sampler once, to refuse options Optuna rejects before anything is created.

    Raises:
        JobSpecError: an option value the sampler refuses (e.g. ``qmc_type: nope``).
    """
    make_sampler(job, job.concurrency or 1)


def make_sampler(job: CalibrationJob, loops: int) -> optuna.samplers.BaseSampler:
    """The run's sampler for ``loops`` trials at once (its start-up depends on them: study.py)."""
    try:
        return build_sampler(job, loops)
    except (ValueError, TypeError) as e:
        raise JobSpecError(f"sampler {job.sampler.name!r} rejected its options: {e}",
                           problems=[("sampler.options", f"see Optuna's {job.sampler.name} sampler for valid options")]) from None


def default_concurrency(slots: int, n_replicates: int, parallel: bool) -> int:
    """Trials at once at the start: enough to fill every slot (parallel: 2x, to hide ask/tell latency).
    With ``concurrency: auto`` the wire then follows the cluster's live size (elastic.py)."""
    return target_loops(slots, n_replicates, loop_cap(n_replicates), parallel)


def simulation_service(p: Prepared, settings: Settings) -> DeferredService:
    """The run's simulation service, not yet started: a local cluster (threads or worker
    processes: ``simulation/local.py``) knows its slots before it exists."""
    job = p.job
    context = SimContext(p.model_ref, dict(job.fixed), p.targets, job.timeout_s, job.replicate_retries,
                         summaries=tuple(job.sweep.summaries) if job.sweep is not None else None)  # a sweep keeps them
    processes = local_processes(p.model_ref, settings.local_processes)
    slots = None  # a remote cluster's size is asked of it once connected
    if not settings.scheduler:
        workers, threads = local_cluster_shape(settings.local_workers, processes)
        slots = workers * threads
    elif settings.scheduler.strip().lower() == INLINE:
        slots = settings.local_workers or max(1, os.cpu_count() or 1)

    def connect() -> SimulationService:
        return connect_service(settings.scheduler, context, local_workers=settings.local_workers,
                               replicates_per_task=settings.replicates_per_task, listen_host=settings.listen_host,
                               processes=processes)

    return DeferredService(connect, slots=slots, description="local cluster" if not settings.scheduler else settings.scheduler)
