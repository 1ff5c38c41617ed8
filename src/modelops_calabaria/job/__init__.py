"""The calibration job: what to fit, against what, and how hard to search.

A :class:`CalibrationJob` is plain data (pydantic v2), loaded from YAML or JSON
by :func:`load_job`. Every validation problem is reported as a
:class:`~modelops_calabaria.errors.JobSpecError` whose ``problems`` name the
field path (``parameters.beta.upper``, ``targets[0].score``) and what is
expected. Loading observed data and resolving the model are separate steps
(:mod:`modelops_calabaria.targets`, :mod:`modelops_calabaria.models`) so that
the spec itself stays pure.

One mechanism per class of bad input: numbers are strict (a boolean or a quoted
number is not a number, inf/NaN are refused) for every field; the loader refuses a
key given twice in a YAML or JSON mapping, with its line; and what a job may make
the service allocate or store is bounded by the ``MAX_*`` limits (:mod:`.limits`),
documented in docs/reliability.md ("Limits"). Every field carries its description
in ``Field(description=...)``, which is what ``calabaria schema`` prints.

Modules: ``limits`` (bounds and the checks that apply them), ``parameters``,
``targets``, ``options`` (the option blocks), ``sweep`` (a sweep's design and summaries), ``calibration`` (the job as a whole),
``problems`` (validation errors as field paths), ``loading`` (YAML/JSON),
``schema``.
"""

from modelops_calabaria.job._base import (
    COUNT_SCORES,
    LIKELIHOOD_SCORES,
    Aggregation,
    Match,
    SamplerName,
    ScoreKind,
)
from modelops_calabaria.job.calibration import CalibrationJob, check_same_model
from modelops_calabaria.job.limits import (
    MAX_ABS_BOUND,
    MAX_CHOICES,
    MAX_CONCURRENCY,
    MAX_DATA_CELL,
    MAX_DATA_FILE_BYTES,
    MAX_FIXED_VALUES,
    MAX_GRID_CELLS,
    MAX_GRID_POINTS,
    MAX_JOB_FILE_BYTES,
    MAX_JOB_VALUES,
    MAX_NESTING,
    MAX_PARAMETERS,
    MAX_REPLICATES,
    MAX_REPLICATES_IN_FLIGHT,
    MAX_SEED,
    MAX_START_POINTS,
    MAX_STUDY_NAME,
    MAX_TARGETS,
    MAX_TRIALS,
    STUDY_NAME_PATTERN,
    check_in_flight,
    check_run_flags,
    check_study_name,
    count_values,
)
from modelops_calabaria.job.loading import job_from_dict, load_job
from modelops_calabaria.job.options import (
    ExecutionSpec,
    PosteriorSpec,
    PruningSpec,
    RampSpec,
    ReevaluateSpec,
    ReportSpec,
    SamplerSpec,
    StopSpec,
)
from modelops_calabaria.job.parameters import ParameterSpec, PriorSpec, midpoint
from modelops_calabaria.job.problems import format_loc, validation_problems
from modelops_calabaria.job.schema import job_schema
from modelops_calabaria.job.sweep import SummarySpec, SweepSpec
from modelops_calabaria.job.targets import ScoreSpec, TargetSpec

__all__ = [
    "COUNT_SCORES", "LIKELIHOOD_SCORES", "MAX_ABS_BOUND", "MAX_CHOICES", "MAX_CONCURRENCY", "MAX_DATA_CELL", "MAX_DATA_FILE_BYTES", "MAX_FIXED_VALUES",
    "MAX_GRID_CELLS", "MAX_GRID_POINTS", "MAX_JOB_FILE_BYTES", "MAX_JOB_VALUES", "MAX_NESTING", "MAX_PARAMETERS",
    "MAX_REPLICATES", "MAX_REPLICATES_IN_FLIGHT", "MAX_SEED", "MAX_START_POINTS", "MAX_STUDY_NAME", "MAX_TARGETS", "MAX_TRIALS",
    "STUDY_NAME_PATTERN", "Aggregation", "CalibrationJob", "ExecutionSpec", "Match", "ParameterSpec", "PosteriorSpec",
    "PriorSpec", "PruningSpec", "RampSpec", "ReevaluateSpec", "ReportSpec", "SamplerName", "SamplerSpec", "ScoreKind",
    "ScoreSpec", "StopSpec", "SummarySpec", "SweepSpec", "TargetSpec", "check_in_flight", "check_run_flags", "check_same_model", "check_study_name",
    "count_values", "format_loc", "job_from_dict", "job_schema", "load_job", "midpoint", "validation_problems",
]
