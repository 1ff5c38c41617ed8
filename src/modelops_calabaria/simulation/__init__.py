"""Simulation service: runs replicates on a cluster and returns only scores."""

from modelops_calabaria.simulation.base import SimulationService, TrialHandle
from modelops_calabaria.simulation.dask import DaskSimulationService
from modelops_calabaria.simulation.task import ReplicateResult, SimContext, TrialEvaluation

__all__ = ["DaskSimulationService", "ReplicateResult", "SimContext", "SimulationService", "TrialEvaluation", "TrialHandle"]
