"""modelops-calabaria: calibrate stochastic epidemiological models with Optuna and Dask.

Public API::

    from modelops_calabaria import CalibrationJob, load_job, run_calibration

    job = load_job("examples/seir/job.yaml")
    result = run_calibration(job)
    print(result.best_params, result.best_loss)
"""

from typing import TYPE_CHECKING, Any

from modelops_calabaria.errors import CalabariaError
from modelops_calabaria.job import CalibrationJob, ParameterSpec, ScoreSpec, TargetSpec, job_from_dict, load_job
from modelops_calabaria.settings import Settings, resolve_settings

if TYPE_CHECKING:
    from modelops_calabaria.calibration.runner import run_calibration
    from modelops_calabaria.reporting.results import RunResult

__version__ = "0.1.0"

__all__ = [
    "CalabariaError",
    "CalibrationJob",
    "ParameterSpec",
    "RunResult",
    "ScoreSpec",
    "Settings",
    "TargetSpec",
    "__version__",
    "job_from_dict",
    "load_job",
    "project",
    "resolve_settings",
    "run_calibration",
]


def __getattr__(name: str) -> Any:
    # Optuna, Dask and SQLAlchemy load only when a run starts, so that `calabaria validate`
    # and `schema` answer in a fraction of a second.
    if name == "run_calibration":
        from modelops_calabaria.calibration.runner import run_calibration

        return run_calibration
    if name == "RunResult":
        from modelops_calabaria.reporting.results import RunResult

        return RunResult
    if name == "project":  # projections and scenarios from a calibrated run (docs/projections.md)
        from modelops_calabaria.projection import project

        return project
    raise AttributeError(f"module 'modelops_calabaria' has no attribute {name!r}")
