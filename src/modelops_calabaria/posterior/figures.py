"""Posterior figures for the report: marginal densities and a posterior predictive fit.

:func:`posterior_figures` returns ``[(figure, caption), ...]`` (matplotlib
``Figure`` objects made without pyplot, so no global state and no display);
the report decides where they go. The predictive fit runs the model here, in
this process, on equally weighted resamples of the posterior: a few dozen
simulations, as ``calabaria simulate`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from modelops_calabaria.job import CalibrationJob
from modelops_calabaria.posterior.records import WeightedSample
from modelops_calabaria.posterior.summary import resample, weighted_quantile


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # matplotlib is the 'plot' extra: imported only when drawing

    return Figure(figsize=(width, height), layout="constrained")


def _span(values: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    lo, hi = weighted_quantile(values, weights, [0.001, 0.999])
    pad = 0.25 * (hi - lo) or 1e-6 * max(abs(lo), 1.0)
    return float(lo - pad), float(hi + pad)


def corner_figure(names: Sequence[str], sample: WeightedSample, bins: int = 40) -> tuple[Any, str]:
    """1-D marginal densities on the diagonal, 2-D joint densities below it (weighted histograms)."""
    d = len(names)
    fig = _figure(2.6 * d + 0.6, 2.4 * d + 0.4)
    axes = np.atleast_2d(fig.subplots(d, d, squeeze=False))
    x, w = sample.x, sample.weights
    spans = [_span(x[:, j], w) for j in range(d)]  # where the weight is, not where the prior draws went
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                ax.set_visible(False)
                continue
            if i == j:
                ax.hist(x[:, i], bins=bins, range=spans[i], weights=w, density=True, color="#4c72b0", alpha=0.8)
                lo, hi = weighted_quantile(x[:, i], w, [0.025, 0.975])
                ax.axvspan(lo, hi, color="#dd8452", alpha=0.2, label="95 % interval")
                ax.set_yticks([])
            else:
                ax.hist2d(x[:, j], x[:, i], bins=bins, range=[spans[j], spans[i]], weights=w, cmap="Blues")
            if i == d - 1:
                ax.set_xlabel(names[j])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i])
    caption = (f"Posterior marginals: 1-D densities (diagonal, 95 % credible interval shaded) and 2-D joint densities "
               f"(below), weighted histograms of {len(sample.numbers)} trials, ESS {sample.ess:.0f}.")
    return fig, caption


def predictive_figure(job: CalibrationJob, sample: WeightedSample, draws: int = 40, replicates: int = 2,
                      seed: int = 0) -> tuple[Any, str]:
    """Observed data over bands of simulations from resampled parameter sets (50 % and 95 %)."""
    from modelops_calabaria.models import canonical_ref, load_model
    from modelops_calabaria.targets.evaluate import compile_targets

    model = load_model(canonical_ref(job.model, job.base_dir))
    targets = compile_targets(job, model.outputs)
    rng = np.random.default_rng(seed)
    picks = resample(sample.weights, draws, rng)
    names = list(job.parameters)
    sims: dict[str, list[np.ndarray]] = {t.name: [] for t in targets}
    for k, i in enumerate(picks):
        params = {**job.fixed, **{n: float(v) for n, v in zip(names, sample.x[i])}}
        for r in range(replicates):
            outputs = model.run(params, int(rng.integers(2**31)) + k * replicates + r)
            for t in targets:
                sims[t.name].append(t.align(outputs))
    fig = _figure(6.0, 3.0 * len(targets))
    axes = np.atleast_1d(fig.subplots(len(targets), 1, squeeze=False)[:, 0])
    for ax, t in zip(axes, targets):
        arr = np.stack(sims[t.name])  # (draws * replicates, n, m)
        idx = t.observed.index
        for col in range(arr.shape[2]):
            q = np.quantile(arr[:, :, col], [0.025, 0.25, 0.5, 0.75, 0.975], axis=0)
            ax.fill_between(idx, q[0], q[4], color="#4c72b0", alpha=0.2, label="95 %" if col == 0 else None)
            ax.fill_between(idx, q[1], q[3], color="#4c72b0", alpha=0.4, label="50 %" if col == 0 else None)
            ax.plot(idx, q[2], color="#4c72b0", lw=1)
            ax.plot(idx, t.observed.values[:, col], "o", ms=3, color="black", label="observed" if col == 0 else None)
        ax.set_title(t.name)
        ax.set_xlabel("index")
        ax.set_ylabel(", ".join(t.observed.columns))
        ax.legend(loc="upper right", fontsize=8)
    caption = (f"Posterior predictive fit: {draws} parameter sets resampled by weight, {replicates} replicate(s) each; "
               "bands hold 50 % and 95 % of the simulations, dots are the observations.")
    return fig, caption


def posterior_figures(job: CalibrationJob, sample: WeightedSample, *, predictive_draws: int = 40,
                      replicates: int = 2, seed: int = 0) -> list[tuple[Any, str]]:
    """Figures and captions for the report's posterior section (empty when nothing was weighed)."""
    if not sample.numbers or not sample.weights.any():
        return []
    figures = [corner_figure(list(job.parameters), sample)]
    if predictive_draws > 0:
        figures.append(predictive_figure(job, sample, predictive_draws, replicates, seed))
    return figures
