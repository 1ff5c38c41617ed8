"""What a calibration produces, as plain data: one record per told trial, one result per run.

The run (``calibration/``) makes them, reporting turns them into files and
progress lines; neither needs the other's modules for it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from modelops_calabaria.redaction import redact_value


@dataclass(frozen=True)
class TrialRecord:
    """What the wire reports about each told trial."""

    number: int
    state: str
    loss: float | None
    params: dict
    per_target: dict
    duration_s: float
    reason: str | None = None
    new_best: bool = False



@dataclass
class RunResult:
    """The outcome of a calibration run (also the content of results.json)."""

    study: str
    storage: str
    mode: str
    concurrency: int
    slots: int
    best_params: dict[str, Any] | None
    best_loss: float | None
    best_trial: int | None
    best_targets: dict[str, float]
    trials: dict[str, int]
    this_run: dict[str, int]
    wall_time_s: float
    trials_per_minute: float
    utilization: float
    stop_reason: str | None
    first_failure: str | None = None
    output_dir: str | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    posterior: dict[str, Any] | None = None  # a posterior run's summary (docs/posterior.md)
    selection: dict[str, Any] | None = None  # how the best was chosen (calibration/reevaluate.py)
    study_state: str | None = None  # what the outputs were made of (calibration/startup.py: study_state_key)

    def to_json(self) -> dict[str, Any]:
        return redact_value(asdict(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        """The result as ``to_json`` wrote it (keys it does not know are ignored).

        Raises:
            TypeError: a field is missing.
        """
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
