"""Incremental mixture importance sampling (Raftery & Bao 2010): the math. Pure, no I/O.

Points live in the unconstrained space of :mod:`.prior`. Each trial was drawn
either from the prior or from one Gaussian component; given which (its
*source*), the deterministic-mixture weight of a trial with log-likelihood
``l`` is ``prior(u) exp(l) / q_total(u)``, where ``q_total`` is the mixture of
every source, each weighted by the number of evaluated trials drawn from it
(a failed trial, or one whose likelihood estimate is 0, was drawn all the
same: it counts, with weight 0). The self-normalised estimator with these
weights is consistent however the components were chosen (multiple importance
sampling with the balance heuristic; Owen & Zhou 2000, Cornuet et al. 2012 on
adaptive multiple IS: the adaptive choice makes it consistent as the sample
grows, not exact at any finite size), so the proposal may adapt to the trials
told so far, in any order, on any coordinator.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from modelops_calabaria.posterior.prior import JointPrior

PRIOR = "prior"  # the source of a trial drawn from the prior


@dataclass(frozen=True)
class Component:
    """One Gaussian of the mixture, in the unconstrained space."""

    mean: tuple[float, ...]
    cov: tuple[tuple[float, ...], ...]

    @property
    def id(self) -> str:
        """A content hash: two coordinators that build the same component name it alike."""
        return "c" + hashlib.sha1(self.to_json().encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps({"mean": list(self.mean), "cov": [list(r) for r in self.cov]})

    @classmethod
    def from_json(cls, text: str) -> Component:
        data = json.loads(text)
        return cls(tuple(float(v) for v in data["mean"]), tuple(tuple(float(v) for v in r) for r in data["cov"]))

    def log_pdf(self, u: np.ndarray) -> np.ndarray:
        u = np.atleast_2d(u)
        mean, cov = np.asarray(self.mean), np.asarray(self.cov)
        chol = np.linalg.cholesky(cov)
        z = np.linalg.solve(chol, (u - mean).T)
        return -0.5 * np.sum(z * z, axis=0) - np.log(np.diag(chol)).sum() - 0.5 * len(mean) * math.log(2 * math.pi)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.multivariate_normal(np.asarray(self.mean), np.asarray(self.cov), size=n, method="cholesky")


def log_q_total(u: np.ndarray, sources: Sequence[str], components: Mapping[str, Component], prior: JointPrior,
                counts: Mapping[str, int] | None = None) -> np.ndarray:
    """Log density at ``u`` of the mixture of every source, weighted by its count: in ``counts``
    (every evaluated draw, including those with zero weight), or else in ``sources``."""
    counts = Counter(sources) if counts is None else counts
    n = sum(counts.values())
    terms = []
    for source, count in counts.items():
        dens = prior.log_pdf_u(u) if source == PRIOR else components[source].log_pdf(u)
        terms.append(math.log(count / n) + dens)
    return logsumexp(np.vstack(terms), axis=0)


def log_weights(u: np.ndarray, loglik: np.ndarray, sources: Sequence[str], components: Mapping[str, Component],
                prior: JointPrior, counts: Mapping[str, int] | None = None) -> np.ndarray:
    """Unnormalised log importance weights (deterministic-mixture form; ``counts`` as :func:`log_q_total`)."""
    return prior.log_pdf_u(u) + np.asarray(loglik, dtype=float) - log_q_total(u, sources, components, prior, counts)


def normalise(logw: np.ndarray) -> np.ndarray:
    """Weights summing to 1 (all-``-inf`` weights give all zeros)."""
    logw = np.asarray(logw, dtype=float)
    if logw.size == 0 or not np.isfinite(logw).any():
        return np.zeros_like(logw)
    return np.exp(logw - logsumexp(logw))


def ess(weights: np.ndarray) -> float:
    """Kish's effective sample size ``(Σw)² / Σw²``."""
    w = np.asarray(weights, dtype=float)
    s2 = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / s2 if s2 > 0 else 0.0


def new_component(u: np.ndarray, weights: np.ndarray, neighbours: int, exclude: Sequence[int] = (),
                  scale: np.ndarray | None = None) -> tuple[Component, int]:
    """The next IMIS component: centred on the highest-weight point, covariance from its neighbours.

    As Raftery & Bao (2010): the ``neighbours`` points nearest the centre (Mahalanobis
    distance under ``scale``, default the sample covariance of all points) give the
    covariance, each weighted by the mean of its importance weight and ``1/n``.

    Args:
        u: Points (n, d) in the unconstrained space.
        weights: Their normalised importance weights.
        neighbours: How many points inform the covariance.
        exclude: Indices that may not be centres (already centres of earlier components).
        scale: Covariance defining the distance.

    Returns:
        The component and the index of its centre.
    """
    n, d = u.shape
    order = np.argsort(-weights, kind="stable")
    banned = set(exclude)
    centre = next((int(i) for i in order if int(i) not in banned), int(order[0]))
    if scale is None:
        scale = np.atleast_2d(np.cov(u.T)) if n > d else np.eye(d)
    scale = scale + 1e-9 * np.eye(d)
    diff = u - u[centre]
    dist = np.einsum("ij,ij->i", diff @ np.linalg.inv(scale), diff)
    near = np.argsort(dist, kind="stable")[: max(neighbours, d + 1)]
    w = (weights[near] + 1.0 / n) / 2
    w = w / w.sum()
    dev = u[near] - u[centre]
    cov = (dev * w[:, None]).T @ dev
    cov = 0.5 * (cov + cov.T) + 1e-6 * np.diag(np.diag(scale))  # keep it positive definite
    return Component(tuple(float(v) for v in u[centre]), tuple(tuple(float(v) for v in r) for r in cov)), centre
