"""The JSON schema of a job file (`calabaria schema`).
"""

from __future__ import annotations

from typing import Any

from modelops_calabaria.job.calibration import CalibrationJob


def job_schema() -> dict[str, Any]:
    """The JSON schema of a job file; every field's description comes from its ``Field(description=...)``."""
    return CalibrationJob.model_json_schema()
