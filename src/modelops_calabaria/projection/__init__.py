"""Projections and scenarios from a calibrated model (docs/projections.md).

``project(run_dir, scenarios)`` draws parameter sets from the run (posterior,
re-evaluated top trials, or the best), runs every scenario on the same seeds on
the simulation service, and writes the long table, quantiles, a hubverse file
and projection.html. Modules: ``spec`` (scenarios.yaml), ``schedules`` (changes
→ parameters), ``draws``, ``grid`` (the points reported), ``run``, ``store``
(resumable chunks), ``outputs``, ``hubverse``, ``wis``, ``holdout``, ``page``, ``api``.
"""

from modelops_calabaria.projection.api import ProjectionResult, calibrate_holdout, project, read_run
from modelops_calabaria.projection.spec import Change, Scenario, ScenarioSpec, load_spec, spec_from_dict

__all__ = ["Change", "ProjectionResult", "Scenario", "ScenarioSpec", "calibrate_holdout", "load_spec", "project",
           "read_run", "spec_from_dict"]
