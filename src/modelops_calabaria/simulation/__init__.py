"""Simulation service: runs replicates on a cluster and returns only scores."""

from modelops_calabaria.simulation.base import SimulationService, TrialHandle
from modelops_calabaria.simulation.dask import DaskSimulationService
from modelops_calabaria.simulation.inline import INLINE, InlineSimulationService
from modelops_calabaria.simulation.task import ReplicateResult, SimContext, TrialEvaluation

__all__ = [
    "DaskSimulationService", "InlineSimulationService", "ReplicateResult", "SimContext", "SimulationService",
    "TrialEvaluation", "TrialHandle", "connect_service",
]


def connect_service(scheduler: str | None, context: SimContext, *, local_workers: int | None = None,
                    replicates_per_task: int | None = None, listen_host: str = "127.0.0.1") -> SimulationService:
    """The simulation service a ``scheduler`` setting names.

    ``inline``: replicates run on ``local_workers`` threads of this process (no
    Dask); empty: a local Dask cluster of ``local_workers`` processes; else the
    address of a Dask scheduler. ``replicates_per_task`` (Dask only): replicates
    one task runs one after the other; empty = chosen from measured durations.
    ``listen_host``: the interface every server of a local cluster listens on.

    Raises:
        ServiceUnavailableError: the scheduler does not answer, or what answers is not a
            Dask scheduler (within a bounded time).
        ConfigurationError: the address is malformed.
    """
    if scheduler is not None and scheduler.strip().lower() == INLINE:
        return InlineSimulationService(context, local_workers)
    return DaskSimulationService.connect(scheduler, context, local_workers=local_workers,
                                         replicates_per_task=replicates_per_task, listen_host=listen_host)
