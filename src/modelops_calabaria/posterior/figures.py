"""Posterior figures for the report: marginal densities and a posterior predictive fit.

:func:`posterior_figures` returns ``[(figure, caption), ...]`` (matplotlib
``Figure`` objects made without pyplot, so no global state and no display);
the report decides where they go. The predictive fit runs the model here, in
this process, on equally weighted resamples of the posterior: a few dozen
simulations, as ``calabaria simulate`` does (its caption says how many), and
by default draws new observations around them from each target's observation
model (:mod:`.predictive`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from modelops_calabaria.job import CalibrationJob
from modelops_calabaria.posterior.predictive import band, coverage, observation_draw, observation_model, on_data_scale
from modelops_calabaria.posterior.prior import JointPrior, joint_prior
from modelops_calabaria.posterior.records import WeightedSample
from modelops_calabaria.posterior.summary import resample, weighted_quantile


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # matplotlib is the 'plot' extra: imported only when drawing

    return Figure(figsize=(width, height), layout="constrained")


def _span(values: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    lo, hi = weighted_quantile(values, weights, [0.001, 0.999])
    pad = 0.25 * (hi - lo) or 1e-6 * max(abs(lo), 1.0)
    return float(lo - pad), float(hi + pad)


def _kde(values: np.ndarray, weights: np.ndarray) -> Any:
    """A weighted Gaussian KDE (Scott's bandwidth from the effective sample size), or None when the
    weight sits on too few distinct points for one (the figure then falls back to a histogram)."""
    from scipy.stats import gaussian_kde

    keep = weights > weights.max() * 1e-6  # negligible weights change nothing but the cost
    try:
        return gaussian_kde(np.atleast_2d(values[keep].T) if values.ndim > 1 else values[keep], weights=weights[keep])
    except (np.linalg.LinAlgError, ValueError):
        return None


def corner_figure(names: Sequence[str], sample: WeightedSample, bins: int = 40,
                  prior: JointPrior | None = None) -> tuple[Any, str]:
    """1-D marginal densities on the diagonal (weighted KDE, prior dashed), 2-D joint densities
    below it. A weighted histogram of an importance sample is a few spikes where a few trials
    carry the weight; the KDE's bandwidth follows the effective sample size instead."""
    d = len(names)
    fig = _figure(2.6 * d + 0.6, 2.4 * d + 0.4)
    axes = np.atleast_2d(fig.subplots(d, d, squeeze=False))
    x, w = sample.x, sample.weights
    spans = [_span(x[:, j], w) for j in range(d)]  # where the weight is, not where the prior draws went
    smooth = "weighted KDE"
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                ax.set_visible(False)
                continue
            if i == j:
                grid = np.linspace(*spans[i], 200)
                kde = _kde(x[:, i], w)
                if kde is not None:
                    ax.fill_between(grid, kde(grid), color="#4c72b0", alpha=0.6, label="posterior")
                else:
                    smooth = "weighted histogram (too few effective points for a KDE)"
                    ax.hist(x[:, i], bins=bins, range=spans[i], weights=w, density=True, color="#4c72b0", alpha=0.8)
                if prior is not None:
                    dens = np.exp(prior.parameters[i].log_pdf_x(grid))
                    ax.plot(grid, dens, "--", color="0.4", lw=1, label="prior")
                lo, hi = weighted_quantile(x[:, i], w, [0.025, 0.975])
                ax.axvspan(lo, hi, color="#dd8452", alpha=0.2, label="95 % interval")
                ax.set_yticks([])
                if i == 0:
                    ax.legend(loc="upper right", fontsize=7)
            else:
                kde = _kde(x[:, [j, i]], w)
                if kde is not None:
                    gx, gy = np.meshgrid(np.linspace(*spans[j], 60), np.linspace(*spans[i], 60))
                    z = kde(np.vstack([gx.ravel(), gy.ravel()])).reshape(gx.shape)
                    ax.contourf(gx, gy, z, levels=8, cmap="Blues")
                else:
                    ax.hist2d(x[:, j], x[:, i], bins=bins, range=[spans[j], spans[i]], weights=w, cmap="Blues")
            if i == d - 1:
                ax.set_xlabel(names[j])
            if j == 0 and i > 0:
                ax.set_ylabel(names[i])
    caption = (f"Posterior marginals: 1-D densities (diagonal; {smooth}, prior dashed, 95 % credible interval "
               f"shaded) and 2-D joint densities (below), from {len(sample.numbers)} weighted trials, ESS {sample.ess:.0f}.")
    return fig, caption


BAND_TITLES = {"observed": "new observations (with observation noise)", "mean": "simulated mean only"}


def predictive_figure(job: CalibrationJob, sample: WeightedSample, draws: int = 40, replicates: int = 2,
                      seed: int = 0, band: str | None = None) -> tuple[Any, str]:
    """Observed data over 50 % and 95 % bands from parameter sets resampled by weight.

    ``band`` (default ``job.posterior.band``): ``observed`` draws new observations from each
    target's observation model around every simulation (:mod:`.predictive`), the band new
    data should fall in; ``mean`` the simulations alone; ``both`` side by side.
    """
    from modelops_calabaria.models import canonical_ref, load_model
    from modelops_calabaria.targets.evaluate import compile_targets
    from modelops_calabaria.targets.scores import dispersion_of

    mode = band or (job.posterior.band if job.posterior else "observed")
    kinds = ["observed", "mean"] if mode == "both" else [mode]
    model = load_model(canonical_ref(job.model, job.base_dir))
    targets = compile_targets(job, model.outputs)
    rng = np.random.default_rng(seed)
    picks = resample(sample.weights, draws, rng)
    names = list(job.parameters)
    sims: dict[str, dict[str, list[np.ndarray]]] = {t.name: {"observed": [], "mean": []} for t in targets}
    for k, i in enumerate(picks):
        params = {**job.fixed, **{n: float(v) for n, v in zip(names, sample.x[i])}}
        for r in range(replicates):
            outputs = model.run(params, int(rng.integers(2**31)) + k * replicates + r)
            for t in targets:
                sim = t.align(outputs)
                disp = dispersion_of(t.score, outputs, t.name) if t.score.dispersion_output else None
                sims[t.name]["mean"].append(on_data_scale(t.score, sim, t.observed.trials))
                sims[t.name]["observed"].append(observation_draw(t.score, t.aggregation, sim, t.observed.trials, rng, disp))
    fig = _figure(6.0 * len(kinds), 3.0 * len(targets))
    axes = np.atleast_2d(fig.subplots(len(targets), len(kinds), squeeze=False))
    outside = []
    for row, t in enumerate(targets):
        idx = t.observed.index if t.observed.index is not None else np.arange(len(t.observed.values))
        for c, kind in enumerate(kinds):
            ax = axes[row, c]
            arr = np.stack(sims[t.name][kind])  # (draws * replicates, n, m)
            bands = predictive_band(arr)
            for col in range(arr.shape[2]):
                lo95, hi95 = bands[0.95][0][:, col], bands[0.95][1][:, col]
                ax.fill_between(idx, lo95, hi95, color="#4c72b0", alpha=0.2, label="95 %" if col == 0 else None)
                ax.fill_between(idx, bands[0.5][0][:, col], bands[0.5][1][:, col], color="#4c72b0", alpha=0.4,
                                label="50 %" if col == 0 else None)
                ax.plot(idx, np.median(arr[:, :, col], axis=0), color="#4c72b0", lw=1)
                ax.plot(idx, t.observed.values[:, col], "o", ms=3, color="black", label="observed" if col == 0 else None)
            _, inside, n = coverage(t.observed.values, *bands[0.95])
            if kind == kinds[0]:
                outside.append(f"{t.name}: {n - inside} of {n} outside the 95 % band")
            noise = observation_model(t.score, t.aggregation)
            sub = BAND_TITLES[kind] if kind == "mean" or noise else "simulations (the likelihood's own noise)" \
                if t.aggregation == "synthetic_likelihood" else "simulations (the score has no observation model)"
            ax.set_title(f"{t.name}: {sub}", fontsize=9)
            ax.set_xlabel("index")
            ax.set_ylabel(", ".join(t.observed.columns))
            ax.legend(loc="upper right", fontsize=8)
    models = sorted({f"{t.name}: {observation_model(t.score, t.aggregation) or 'none'}" for t in targets})
    what = {"observed": "new observations drawn from each target's observation model around every simulation "
                        f"({'; '.join(models)})",
            "mean": "the simulated values alone (no observation noise: narrower than data should be)",
            "both": "left, new observations drawn from each target's observation model "
                    f"({'; '.join(models)}); right, the simulated values alone"}[mode]
    caption = (f"Posterior predictive fit: {draws} parameter sets resampled by weight, {replicates} replicate(s) each "
               f"({draws * replicates} simulations); bands hold 50 % and 95 % of {what}; dots are the observations "
               f"({'; '.join(outside)}).")
    return fig, caption


def predictive_band(draws: np.ndarray) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """The 50 % and 95 % bands over the draws' first axis."""
    return band(draws, (0.5, 0.95))


def posterior_figures(job: CalibrationJob, sample: WeightedSample, *, predictive_draws: int = 40,
                      replicates: int = 2, seed: int = 0, band: str | None = None) -> list[tuple[Any, str]]:
    """Figures and captions for the report's posterior section (empty when nothing was weighed)."""
    if not sample.numbers or not sample.weights.any():
        return []
    figures = [corner_figure(list(job.parameters), sample, prior=joint_prior(job.parameters))]
    if predictive_draws > 0:
        figures.append(predictive_figure(job, sample, predictive_draws, replicates, seed, band))
    return figures
