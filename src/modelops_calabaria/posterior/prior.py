"""Priors of the searched parameters, and the unconstrained space IMIS works in. Pure, no I/O.

Every parameter is a float with bounds ``[lower, upper]``. IMIS fits Gaussian
components in an unconstrained space ``u``: ``t = (z - a) / (b - a)`` with
``z = x`` (or ``log x`` for ``log: true``, ``logit x`` for ``transform: logit``) and ``[a, b]`` the bounds of ``z``,
then ``u = logit(t)``. A Gaussian in ``u`` never proposes a point outside the
bounds, so no proposal needs truncating. Densities in ``u`` carry the Jacobian:
``log p_u(u) = log p_x(x) + log |dx/du|``.

Prior of ``x``: uniform on the bounds, log-uniform with ``log: true``, uniform on the
logit scale with ``transform: logit`` (the default prior is uniform on the scale the
parameter is searched on: density ``1 / (b - a) × |dz/dx|`` in ``x``), or an explicit
normal / beta / gamma truncated to the bounds, always stated for the natural ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logit

from modelops_calabaria.job import ParameterSpec

_EDGE = 1e-12  # keeps logit finite for points that sit exactly on a bound


@dataclass(frozen=True)
class ParameterPrior:
    """The prior of one float parameter and its map to the unconstrained line."""

    name: str
    lower: float
    upper: float
    log: bool = False
    dist: str = "uniform"  # uniform | normal | beta | gamma
    args: tuple[float, ...] = ()
    logit: bool = False  # transform: logit (z = log(x / (1 - x)))

    def _z(self, x: np.ndarray) -> np.ndarray:
        return np.log(x) - np.log1p(-x) if self.logit else np.log(x) if self.log else x

    def _x(self, z: np.ndarray) -> np.ndarray:
        return expit(z) if self.logit else np.exp(z) if self.log else z

    def _log_dx_dz(self, x: np.ndarray) -> np.ndarray:
        """``log |dx/dz|`` at ``x`` (0 on the natural scale)."""
        if self.logit:
            return np.log(x) + np.log1p(-x)
        return np.log(x) if self.log else np.zeros_like(x)

    @property
    def _a(self) -> float:
        return float(self._z(np.float64(self.lower)))

    @property
    def _b(self) -> float:
        return float(self._z(np.float64(self.upper)))

    def _frozen(self):  # type: ignore[no-untyped-def]
        from scipy import stats  # imported only for explicit priors: it costs the CLI a second at start

        if self.dist == "normal":
            return stats.norm(self.args[0], self.args[1])
        if self.dist == "beta":
            return stats.beta(self.args[0], self.args[1])
        if self.dist == "gamma":
            return stats.gamma(self.args[0], scale=1.0 / self.args[1])
        raise ValueError(f"no frozen distribution for {self.dist}")

    def to_u(self, x: np.ndarray) -> np.ndarray:
        x = np.clip(np.asarray(x, dtype=float), self.lower, self.upper)
        z = self._z(x)
        t = np.clip((z - self._a) / (self._b - self._a), _EDGE, 1 - _EDGE)
        return logit(t)

    def from_u(self, u: np.ndarray) -> np.ndarray:
        t = expit(np.asarray(u, dtype=float))
        z = self._a + (self._b - self._a) * t
        return np.clip(self._x(z), self.lower, self.upper)

    def log_jacobian(self, u: np.ndarray) -> np.ndarray:
        """``log |dx/du|`` at ``u``."""
        u = np.asarray(u, dtype=float)
        log_t, log_1mt = -np.logaddexp(0.0, -u), -np.logaddexp(0.0, u)
        return math.log(self._b - self._a) + log_t + log_1mt + self._log_dx_dz(self.from_u(u))

    def log_pdf_x(self, x: np.ndarray) -> np.ndarray:
        """Log prior density of ``x`` (``-inf`` outside the bounds)."""
        x = np.asarray(x, dtype=float)
        inside = (x >= self.lower) & (x <= self.upper)
        if self.dist == "uniform":
            if self.log or self.logit:  # uniform in z: 1 / (b - a) × |dz/dx|
                dens = -self._log_dx_dz(np.where(inside, x, self.lower)) - math.log(self._b - self._a)
            else:
                dens = np.full(x.shape, -math.log(self.upper - self.lower))
        else:
            f = self._frozen()
            mass = float(f.cdf(self.upper) - f.cdf(self.lower))
            if not mass > 0:
                raise ValueError(f"prior of '{self.name}' puts no mass between its bounds")
            dens = f.logpdf(np.where(inside, x, self.lower)) - math.log(mass)
        return np.where(inside, dens, -np.inf)

    def log_pdf_u(self, u: np.ndarray) -> np.ndarray:
        """Log prior density in the unconstrained space."""
        return self.log_pdf_x(self.from_u(u)) + self.log_jacobian(u)

    def sample_x(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` prior draws of ``x`` (inverse CDF, so truncation is exact)."""
        v = rng.random(n)
        if self.dist == "uniform":
            return self.from_u(logit(np.clip(v, _EDGE, 1 - _EDGE)))
        f = self._frozen()
        lo, hi = f.cdf(self.lower), f.cdf(self.upper)
        return np.clip(f.ppf(lo + v * (hi - lo)), self.lower, self.upper)


def prior_of(name: str, spec: ParameterSpec) -> ParameterPrior:
    """The prior of one parameter spec (float parameters only: see checks.py)."""
    lower, upper = float(spec.lower), float(spec.upper)  # type: ignore[arg-type]
    p = spec.prior
    if p is None:
        return ParameterPrior(name, lower, upper, spec.log, logit=spec.logit)
    args = {"normal": (p.mean, p.sd), "beta": (p.a, p.b), "gamma": (p.shape, p.rate)}[p.dist]
    return ParameterPrior(name, lower, upper, spec.log, p.dist, tuple(float(a) for a in args), logit=spec.logit)  # type: ignore[arg-type]


@dataclass(frozen=True)
class JointPrior:
    """Independent priors of every searched parameter, in declaration order."""

    parameters: tuple[ParameterPrior, ...]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    @property
    def dim(self) -> int:
        return len(self.parameters)

    def to_u(self, x: np.ndarray) -> np.ndarray:
        """Rows of parameter values (n, d) to the unconstrained space."""
        x = np.atleast_2d(np.asarray(x, dtype=float))
        return np.column_stack([p.to_u(x[:, j]) for j, p in enumerate(self.parameters)])

    def from_u(self, u: np.ndarray) -> np.ndarray:
        u = np.atleast_2d(np.asarray(u, dtype=float))
        return np.column_stack([p.from_u(u[:, j]) for j, p in enumerate(self.parameters)])

    def log_pdf_u(self, u: np.ndarray) -> np.ndarray:
        u = np.atleast_2d(np.asarray(u, dtype=float))
        return np.sum([p.log_pdf_u(u[:, j]) for j, p in enumerate(self.parameters)], axis=0)

    def sample_u(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.to_u(np.column_stack([p.sample_x(rng, n) for p in self.parameters]))

    def rows(self, params: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Parameter dicts to an (n, d) array in declaration order."""
        return np.array([[float(q[name]) for name in self.names] for q in params], dtype=float).reshape(len(params), self.dim)


def joint_prior(parameters: Mapping[str, ParameterSpec]) -> JointPrior:
    """The joint prior of a job's parameters."""
    return JointPrior(tuple(prior_of(name, spec) for name, spec in parameters.items()))
