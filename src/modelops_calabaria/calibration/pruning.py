"""Replicate-level pruning: stop a trial whose first replicates show it will not beat the k-th best.

Pure logic, no I/O, no Dask: the wire runs a trial's replicates in the stages
its scheduler core (``scheduler/``) gives it, and asks :func:`decide` between stages; :class:`Board` holds the
completed trials it compares against.

The rule (a one-sided prediction bound on a mean of replicate losses). With
``aggregation: mean_of_scores`` on every target (the only aggregation pruning
accepts, checked in ``job/calibration.py``), a trial's loss is the mean over its ``n``
replicates of the per-replicate loss ``l_r = Σ weight × score_r``. Compare a
running trial A with a completed reference B (the ``k``-th best trial so far):

- paired (A and B ran replicate ``r`` on the same seed: ``replicate_seeds:
  common``, or the same stage of ``staged``): ``x_r = l_A,r - l_B,r``;
- unpaired (other seeds): ``x_r = l_A,r - loss_B``.

Either way ``loss_A - loss_B`` is the mean of all ``n`` values ``x_r``, and the
first ``m`` are known. If the ``x_r`` are independent normal draws with one
mean and variance (the replicate noise), then

    L = x̄_m - t_{1-α, m-1} · s_m · (n - m)/n · sqrt(1/m + 1/(n - m))

is a one-sided ``1 - α`` lower prediction bound on ``loss_A - loss_B`` (the
unseen ``n - m`` replicates' mean differs from ``x̄_m`` by a t-distributed
amount). A is pruned when ``L > 0`` (minimizing; mirrored when maximizing).
Error rate: for every trial, the probability that it is pruned although its
loss over all ``n`` replicates would have been at least as good as the
reference's is at most ``α``; with several looks (``after``), each uses
``error_rate / looks`` (Bonferroni), so the bound holds per trial over all its
looks. Under common random numbers the paired differences are far less noisy
than the losses themselves, which is what makes the bound sharp. A reference
only gets better as the run goes on, so a trial that beats the final k-th best
is protected at least as well.

What the partial loss is, per aggregation (why only ``mean_of_scores`` is accepted):

- ``mean_of_scores``: the mean of the first ``m`` per-replicate losses, an
  unbiased estimate of the full loss, and the full loss is a mean of the same
  terms: the bound above applies as stated.
- ``score_of_mean`` (the default): the score of the mean of ``m`` paths. It is
  not a mean of per-replicate terms, and it is biased upward with fewer
  replicates (the spread of an m-path mean adds to a squared error or a
  likelihood's misfit, by about 1/m of the replicate variance), so a trial
  scored on 2 replicates looks worse than one scored on all: the comparison
  would favour pruning, and no paired bound follows.
- ``logmeanexp``: ``-log mean exp(-nll)`` over ``m`` replicates, also biased
  upward for small ``m`` (the log of a small average), and dominated by the
  best replicate: not a mean of per-replicate terms either.
- ``synthetic_likelihood``: needs the covariance of the replicates; from
  ``m`` (often fewer than the observed cells) it is singular or dominated by
  shrinkage.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import stdtrit


@dataclass(frozen=True)
class Reference:
    """A completed trial pruning compares against: its loss and its per-replicate losses (in replicate order)."""

    number: int
    loss: float
    replicate_losses: tuple[float, ...]


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` concluded about a trial after ``replicates`` replicates.

    ``bound``: the lower prediction bound on (trial loss - reference loss), sign-adjusted
    so that positive means worse; NaN when there was nothing to compare with.
    ``estimate``: the trial's full loss as estimated from its replicates, the reference's
    loss plus the mean difference (paired) — for a pruned trial always worse than the
    reference's loss, since the bound below that mean is. What the sampler learns
    from a pruned trial (``asktell.py``); NaN without a reference.
    """

    prune: bool
    partial_loss: float
    replicates: int
    bound: float
    reference: int | None
    paired: bool
    estimate: float = math.nan


def prediction_lower_bound(x: Sequence[float], n_total: int, alpha: float) -> float:
    """One-sided ``1 - alpha`` lower prediction bound on the mean of ``n_total`` iid normal
    values of which ``x`` are the first ``m`` (2 <= m < n_total).

    With zero spread (a deterministic model) the bound is the mean itself.

    Raises:
        ValueError: fewer than 2 values, or not fewer than ``n_total``, or ``alpha`` outside (0, 1).
    """
    m = len(x)
    if m < 2 or m >= n_total:
        raise ValueError(f"need 2 <= known values < n_total, got {m} of {n_total}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    arr = np.asarray(x, dtype=float)
    mean = float(arr.mean())
    spread = float(arr.std(ddof=1))
    if spread == 0.0:
        return mean
    rest = n_total - m
    scale = (rest / n_total) * math.sqrt(1.0 / m + 1.0 / rest)
    return mean - _t_quantile(1.0 - alpha, m - 1) * spread * scale


@functools.lru_cache(maxsize=256)
def _t_quantile(p: float, df: int) -> float:
    # A handful of (alpha, m) pairs per run; the quantile costs far more than the rest of a decision.
    # scipy.special, not scipy.stats: the same quantile (stats.t.ppf calls it), without the
    # ~0.7 s import of scipy.stats that every run would pay before its first trial.
    return float(stdtrit(df, p))


def decide(partial: Sequence[float], reference: Reference | None, n_total: int, alpha: float, *,
           paired: bool, minimize: bool = True) -> Decision:
    """Prune or go on, for a trial whose first ``len(partial)`` per-replicate losses are ``partial``.

    ``paired``: replicate ``r`` of the trial and of ``reference`` share a seed (and the
    reference has all ``n_total`` per-replicate losses). ``reference`` None (fewer
    completed trials than the rule compares against): never prune.
    """
    m = len(partial)
    partial_loss = float(np.mean(partial))
    if reference is None or m < 2 or m >= n_total:
        return Decision(False, partial_loss, m, math.nan, None if reference is None else reference.number, False)
    a = np.asarray(partial, dtype=float)
    paired = paired and len(reference.replicate_losses) == n_total
    x = a - np.asarray(reference.replicate_losses[:m], dtype=float) if paired else a - reference.loss
    estimate = reference.loss + float(x.mean())
    if not minimize:
        x = -x
    if not np.isfinite(x).all():
        return Decision(False, partial_loss, m, math.nan, reference.number, paired)
    bound = prediction_lower_bound(x, n_total, alpha)
    return Decision(bound > 0, partial_loss, m, bound, reference.number, paired, estimate)


def replicate_losses(replicate_scores: Sequence[Mapping[str, float]], weights: Mapping[str, float]) -> list[float]:
    """Per-replicate losses ``Σ weight × score`` (the replicates' per-target scores, in order)."""
    return [float(sum(w * s[name] for name, w in weights.items())) for s in replicate_scores]


def combine(replicate_scores: Sequence[Mapping[str, float]], weights: Mapping[str, float]) -> tuple[dict[str, float], float]:
    """Per-target values and the trial loss of ``mean_of_scores`` over the given replicates
    (the same arithmetic as ``targets.evaluate.aggregate_trial``)."""
    per_target = {name: float(np.mean([s[name] for s in replicate_scores])) for name in weights}
    return per_target, float(sum(w * per_target[name] for name, w in weights.items()))


def looks(after: Sequence[int] | None, n_replicates: int) -> tuple[int, ...]:
    """The replicate counts at which a trial may be pruned (``after``, or by default half of
    ``n_replicates``, at least 2)."""
    if after:
        return tuple(after)
    return (max(2, math.ceil(n_replicates / 2)),)


def stages(after: Sequence[int], n_replicates: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]``: the replicate ranges run one after the other; a decision follows each but the last."""
    bounds = [0, *after, n_replicates]
    return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


class Board:
    """The ``k`` best completed trials seen so far (thread-safe); :meth:`kth` is the reference."""

    def __init__(self, k: int, minimize: bool = True) -> None:
        self.k = k
        self._minimize = minimize
        self._lock = threading.Lock()
        self._best: list[Reference] = []
        self._seen: set[int] = set()

    def add(self, number: int, loss: float, replicate_losses: Sequence[float]) -> None:
        """Count a completed trial (a trial number seen before is ignored)."""
        if not math.isfinite(loss):
            return
        ref = Reference(number, float(loss), tuple(float(v) for v in replicate_losses))
        with self._lock:
            if number in self._seen:
                return
            self._seen.add(number)
            self._best.append(ref)
            self._best.sort(key=lambda r: r.loss if self._minimize else -r.loss)
            del self._best[self.k:]

    def kth(self) -> Reference | None:
        """The k-th best completed trial, or None while fewer than ``k`` completed."""
        with self._lock:
            return self._best[self.k - 1] if len(self._best) >= self.k else None
