"""Simulation service: runs replicates on a cluster and returns only scores.

Dask is imported only when a Dask service is asked for (``connect_service`` or
the ``DaskSimulationService`` attribute): a run with nothing to simulate, or
one whose few simulations run in this process, never pays for it.
"""

from typing import TYPE_CHECKING, Any

from modelops_calabaria.simulation.base import SimulationService, TrialHandle
from modelops_calabaria.simulation.deferred import DeferredService, few_runs_inline, per_run_seconds
from modelops_calabaria.simulation.inline import INLINE, InlineSimulationService
from modelops_calabaria.simulation.local import local_cluster_shape, local_processes
from modelops_calabaria.simulation.task import ReplicateResult, SimContext, TrialEvaluation

if TYPE_CHECKING:
    from modelops_calabaria.simulation.dask import DaskSimulationService

__all__ = [
    "DaskSimulationService", "DeferredService", "InlineSimulationService", "ReplicateResult", "SimContext",
    "SimulationService", "TrialEvaluation", "TrialHandle", "connect_service", "few_runs_inline", "local_cluster_shape",
    "local_processes", "per_run_seconds",
]


def __getattr__(name: str) -> Any:
    if name == "DaskSimulationService":
        from modelops_calabaria.simulation.dask import DaskSimulationService

        return DaskSimulationService
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def connect_service(scheduler: str | None, context: SimContext, *, local_workers: int | None = None,
                    replicates_per_task: int | None = None, listen_host: str = "127.0.0.1",
                    processes: bool = True) -> SimulationService:
    """The simulation service a ``scheduler`` setting names.

    ``inline``: replicates run on ``local_workers`` threads of this process (no
    Dask); empty: a local Dask cluster of ``local_workers`` slots (default: cores),
    worker processes or, with ``processes`` False, threads of this process
    (:mod:`.local`); else the address of a Dask scheduler. ``replicates_per_task``
    (Dask only): replicates one task runs one after the other; empty = chosen from
    measured durations. ``listen_host``: the interface every server of a local
    cluster listens on.

    Raises:
        ServiceUnavailableError: the scheduler does not answer, or what answers is not a
            Dask scheduler (within a bounded time).
        ConfigurationError: the address is malformed.
    """
    if scheduler is not None and scheduler.strip().lower() == INLINE:
        return InlineSimulationService(context, local_workers)
    from modelops_calabaria.simulation.dask import DaskSimulationService

    return DaskSimulationService.connect(scheduler, context, local_workers=local_workers,
                                         replicates_per_task=replicates_per_task, listen_host=listen_host,
                                         processes=processes)
