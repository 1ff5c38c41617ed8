"""The posterior stage: IMIS through the calibration wire (docs/posterior.md).

Pure math (:mod:`.prior`, :mod:`.imis`, :mod:`.summary`, :mod:`.records`,
:mod:`.checks`) has no I/O; :mod:`.sampler` reads and writes the shared study;
:mod:`.outputs` writes posterior.csv; :mod:`.figures` draws with matplotlib.
"""

from __future__ import annotations

from typing import Any

from modelops_calabaria.job import CalibrationJob
from modelops_calabaria.posterior.checks import check_posterior_job
from modelops_calabaria.posterior.figures import posterior_figures
from modelops_calabaria.posterior.outputs import count_reevaluation, posterior_summary, study_sample, write_posterior
from modelops_calabaria.posterior.sampler import ImisSampler


def build_posterior_sampler(job: CalibrationJob) -> ImisSampler:
    """The job's IMIS sampler, after checking the job fits a posterior (JobSpecError otherwise)."""
    assert job.posterior is not None
    check_posterior_job(job)
    return ImisSampler(job.parameters, job.posterior, job.seed)


def posterior_stop(job: CalibrationJob, sampler: Any) -> dict[str, Any]:
    """RunState keyword arguments for the ESS stop rule (none for a calibration)."""
    if job.posterior is None or job.posterior.target_ess is None or not isinstance(sampler, ImisSampler):
        return {}
    return {"target_ess": job.posterior.target_ess, "ess_probe": lambda: sampler.ess}


__all__ = ["ImisSampler", "build_posterior_sampler", "check_posterior_job", "count_reevaluation", "posterior_figures",
           "posterior_stop",
           "posterior_summary",
           "study_sample", "write_posterior"]
