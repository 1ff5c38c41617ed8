"""The IMIS weighted sample kept up to date as trials finish, at a cost per update
proportional to what is new. Pure, no I/O.

:func:`.records.weigh` computes the deterministic-mixture weights from scratch: every
trial's density under every source, each time. A running sampler instead keeps
:class:`MixtureState`: each weighted point's log prior density and its mixture density.
A batch of new trials updates the mixture density at the old points only for the
sources whose draw counts changed, and gives each new point its density under every
source once. The weights equal :func:`.records.weigh`'s on the same trials (tests/test_posterior_incremental.py).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

import numpy as np
from optuna.trial import FrozenTrial, TrialState
from scipy.special import logsumexp

from modelops_calabaria.posterior.imis import PRIOR, Component, ess, normalise
from modelops_calabaria.posterior.prior import JointPrior
from modelops_calabaria.posterior.records import FINISHED, RETRY_ATTR, WeightedSample, draw_key
from modelops_calabaria.targets.scores import is_zero_likelihood


class MixtureState:
    """Finished trials folded in one batch at a time; :meth:`sample` gives the weighted sample.

    Kept per weighted point: its log prior density, log-likelihood and ``log S`` with
    ``S(u) = Σ_s n_s q_s(u)`` (so ``q_total = S / N``). A batch that adds ``Δn_s`` draws to
    source s adds ``Δn_s q_s(u)`` to every old point's S (one density evaluation per point
    per source whose count changed, usually one or two), and computes S at the new points
    over every source. Memory is O(points), not O(points × sources).
    """

    def __init__(self, prior: JointPrior) -> None:
        self.prior = prior
        self.components: dict[str, Component] = {}
        self.counts: Counter[str] = Counter()  # evaluated draws per source (zero-weight ones included)
        self.numbers: list[int] = []
        d = prior.dim
        self._x = np.zeros((0, d))
        self._u = np.zeros((0, d))
        self._loglik = np.zeros(0)
        self.sources: list[str] = []
        self._log_prior = np.zeros(0)
        self._log_s = np.zeros(0)
        self.unrecorded = 0
        self.seen: set[int] = set()  # trial numbers folded in

    def add_component(self, cid: str, component: Component) -> None:
        """A new source (it enters S when draws from it are counted)."""
        self.components.setdefault(cid, component)

    def _log_pdf(self, sid: str, u: np.ndarray) -> np.ndarray:
        return self.prior.log_pdf_u(u) if sid == PRIOR else self.components[sid].log_pdf(u)

    def add_trials(self, trials: list[FrozenTrial], sources: Mapping[str, str], final: bool = False) -> list[FrozenTrial]:
        """Fold in FINISHED trials (each once); return those whose source is not known yet (a
        component not read yet): call again after reading the records, with ``final`` to count
        them as unrecorded, as :func:`.records.weigh` does."""
        later: list[FrozenTrial] = []
        new_x: list[np.ndarray] = []
        new_loglik: list[float] = []
        delta: Counter[str] = Counter()
        for t in trials:
            if t.number in self.seen or t.state not in FINISHED:
                continue
            source = None if t.system_attrs.get(RETRY_ATTR) else sources.get(draw_key(self.prior.names, t.params))
            known = source is not None and (source == PRIOR or source in self.components)
            if not known and not final:
                later.append(t)
                continue
            self.seen.add(t.number)
            weighed = t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)
            if not known:
                self.unrecorded += int(weighed)
                continue
            delta[source] += 1  # type: ignore[index]
            if not weighed:
                continue
            self.numbers.append(t.number)
            new_loglik.append(-math.inf if is_zero_likelihood(float(t.value)) else -float(t.value))  # type: ignore[arg-type]
            self.sources.append(source)  # type: ignore[arg-type]
            new_x.append(self.prior.rows([t.params])[0])
        if len(self._u):  # old points: S gains the new draws' sources
            for sid, dn in delta.items():
                self._log_s = np.logaddexp(self._log_s, math.log(dn) + self._log_pdf(sid, self._u))
        self.counts.update(delta)
        if new_x:  # new points: S over every counted source, one batch per source
            x = np.array(new_x)
            u = self.prior.to_u(x)
            lp = self.prior.log_pdf_u(u)
            terms = [math.log(c) + (lp if sid == PRIOR else self.components[sid].log_pdf(u))
                     for sid, c in self.counts.items() if c > 0]
            self._x, self._u = np.vstack([self._x, x]), np.vstack([self._u, u])
            self._loglik = np.concatenate([self._loglik, new_loglik])
            self._log_prior = np.concatenate([self._log_prior, lp])
            self._log_s = np.concatenate([self._log_s, logsumexp(np.vstack(terms), axis=0)])
        return later

    def log_weights(self) -> np.ndarray:
        """Unnormalised deterministic-mixture log weights of the weighted points."""
        if not self.numbers:
            return np.zeros(0)
        log_q = self._log_s - math.log(sum(self.counts.values()))
        return self._log_prior + self._loglik - log_q

    def sample(self) -> WeightedSample:
        """The weighted sample of every trial folded in so far."""
        logw = self.log_weights()
        w = normalise(logw)
        return WeightedSample(list(self.numbers), self._x.copy(), self._u.copy(), self._loglik.copy(), list(self.sources),
                              w, ess(w), self.unrecorded, len(set(self.sources) - {PRIOR}), logw, sum(self.counts.values()))
