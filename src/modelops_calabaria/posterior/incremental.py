"""The IMIS weighted sample kept up to date as trials finish, at a cost per update
proportional to what is new. Pure, no I/O.

:func:`.records.weigh` computes the deterministic-mixture weights from scratch: every
trial's density under every source, each time. A running sampler instead keeps
:class:`MixtureState`: each weighted point's log prior density and its log density under
every source, computed once; a new trial adds one row (its density under each known
source), a new component adds one column (its density at each point). Combining them
(a log-sum-exp over sources) is the only step that touches every point, in memory.
The weights equal :func:`.records.weigh`'s on the same trials (tests/test_posterior_incremental.py).
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


class MixtureState:
    """Finished trials folded in one at a time; :meth:`sample` gives the weighted sample."""

    def __init__(self, prior: JointPrior) -> None:
        self.prior = prior
        self.components: dict[str, Component] = {}
        self.counts: Counter[str] = Counter()  # evaluated draws per source (zero-weight ones included)
        self.numbers: list[int] = []
        self._x: list[np.ndarray] = []
        self._u: list[np.ndarray] = []
        self._loglik: list[float] = []
        self.sources: list[str] = []
        self._log_prior: list[float] = []
        self._dens: dict[str, list[float]] = {PRIOR: []}  # log density of each source at each weighted point
        self.unrecorded = 0
        self.seen: set[int] = set()  # trial numbers folded in

    def add_component(self, cid: str, component: Component) -> None:
        """A new source: its density at every weighted point so far (one column)."""
        if cid in self.components:
            return
        self.components[cid] = component
        self._dens[cid] = component.log_pdf(np.array(self._u)).tolist() if self._u else []

    def add_trials(self, trials: list[FrozenTrial], sources: Mapping[str, str], final: bool = False) -> list[FrozenTrial]:
        """Fold in FINISHED trials (each once); return those whose source is not known yet (a
        component not read yet): call again after reading the records, with ``final`` to count
        them as unrecorded, as :func:`.records.weigh` does."""
        later: list[FrozenTrial] = []
        new_x: list[np.ndarray] = []
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
            self.counts[source] += 1  # type: ignore[index]
            if not weighed:
                continue
            self.numbers.append(t.number)
            self._loglik.append(-float(t.value))  # type: ignore[arg-type]
            self.sources.append(source)  # type: ignore[arg-type]
            new_x.append(self.prior.rows([t.params])[0])
        if new_x:
            x = np.array(new_x)
            u = self.prior.to_u(x)
            self._x += list(x)
            self._u += list(u)
            lp = self.prior.log_pdf_u(u)
            self._log_prior += lp.tolist()
            for sid, column in self._dens.items():  # one batch per source: K Cholesky factorisations, not K per trial
                column += (lp if sid == PRIOR else self.components[sid].log_pdf(u)).tolist()
        return later

    def log_weights(self) -> np.ndarray:
        """Unnormalised deterministic-mixture log weights of the weighted points."""
        if not self.numbers:
            return np.zeros(0)
        n = sum(self.counts.values())
        terms = [math.log(c / n) + np.asarray(self._dens[s]) for s, c in self.counts.items() if c > 0]
        log_q = logsumexp(np.vstack(terms), axis=0)
        return np.asarray(self._log_prior) + np.asarray(self._loglik) - log_q

    def sample(self) -> WeightedSample:
        """The weighted sample of every trial folded in so far."""
        logw = self.log_weights()
        w = normalise(logw)
        d = self.prior.dim
        x = np.array(self._x).reshape(len(self._x), d)
        u = np.array(self._u).reshape(len(self._u), d)
        return WeightedSample(list(self.numbers), x, u, np.array(self._loglik), list(self.sources), w, ess(w),
                              self.unrecorded, len(set(self.sources) - {PRIOR}), logw, sum(self.counts.values()))
