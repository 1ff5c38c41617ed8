"""Is a job fit for a posterior run? One clear JobSpecError (exit 2) when not. Pure, no I/O."""

from __future__ import annotations

from modelops_calabaria.errors import JobSpecError
from modelops_calabaria.job import CalibrationJob
from modelops_calabaria.posterior.prior import prior_of

SYNTHETIC = "synthetic_likelihood"


def check_posterior_job(job: CalibrationJob) -> None:
    """Raise JobSpecError unless the trial loss is a negative log-likelihood over float parameters.

    The loss is ``Σ weight × aggregated NLL``: a likelihood when every target is
    scored by a likelihood and aggregated honestly (docs/posterior.md); a
    weight other than 1 tempers its target (its likelihood raised to that power).
    """
    if job.posterior is not None and job.posterior.arviz:
        from modelops_calabaria.posterior.export import load_arviz

        load_arviz()  # missing: one line naming the extra, before anything is created
    if job.direction != "minimize":
        raise JobSpecError("a posterior run needs direction: minimize (the loss is a negative log-likelihood)",
                           problems=[("direction", "remove it or set it to minimize")])
    for name, spec in job.parameters.items():
        where = f"parameters.{name}"
        if spec.kind != "float" or spec.step is not None:
            raise JobSpecError(f"a posterior run needs continuous parameters; '{name}' is {spec.kind}"
                               f"{' with a step' if spec.step is not None else ''}",
                               problems=[(where, "use kind: float without 'step', or move it to 'fixed'")])
        try:
            prior_of(name, spec).log_pdf_x(spec.lower)  # type: ignore[arg-type]
        except ValueError as e:
            raise JobSpecError(f"{where}.prior: {e}", problems=[(f"{where}.prior", "widen the bounds or move the prior")]) from e
    for i, t in enumerate(job.targets):
        where = f"targets[{i}]"
        if t.aggregation == SYNTHETIC:
            if job.n_replicates < 3:
                raise JobSpecError(f"target '{t.name}': synthetic_likelihood needs n_replicates >= 3 (got {job.n_replicates})",
                                   problems=[("n_replicates", "use 10 or more replicates for a stable covariance")])
            continue
        if not t.score.is_likelihood:  # a custom score only with log_likelihood: true
            raise JobSpecError(
                f"target '{t.name}': a posterior needs a likelihood score, and {t.score.kind} is not one",
                problems=[(f"{where}.score", "use poisson_nll or negbin_nll (counts), binomial_nll or betabinomial_nll "
                           "(proportions), normal_nll (continuous), aggregation: synthetic_likelihood, or a custom score "
                           "that returns a negative log-likelihood with log_likelihood: true")])
        if t.aggregation == "mean_of_scores" and job.n_replicates > 1:
            raise JobSpecError(
                f"target '{t.name}': aggregation mean_of_scores is not a likelihood over {job.n_replicates} replicates "
                "(it is the log of their geometric mean, biased low)",
                problems=[(f"{where}.aggregation", "use logmeanexp (an unbiased likelihood estimate), "
                           "synthetic_likelihood, or score_of_mean (observation noise around the mean path)")])
