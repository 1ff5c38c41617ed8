"""The report's figures: pure functions from plain arrays to matplotlib figures.

No I/O and no Optuna here: :mod:`modelops_calabaria.reporting.report` reads
the study into a :class:`TrialTable` and each function draws one figure in the
house style (:mod:`modelops_calabaria.reporting.style`). Every function
returns a :class:`~matplotlib.figure.Figure`; callers turn it into PNG bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from modelops_calabaria.reporting import style
from modelops_calabaria.reporting.fit import QUANTILES, FitData, before_after_figure, fit_figure  # noqa: F401 - re-exported
from modelops_calabaria.reporting.timing import in_flight, lanes

# Drawing cost: a scatter with a colour per point goes through Agg's per-path loop
# (~0.2 CPU-s per 10,000 points); single-colour markers drawn with ``plot`` are
# stamped from one cached marker image and cost almost nothing. So every
# single-colour point cloud below is a ``plot``, and only loss-coloured ones scatter.

@dataclass
class TrialTable:
    """The study's trials as columns (one entry per trial, ordered by trial number).

    ``loss`` is NaN unless the trial is COMPLETE; ``start``/``end`` are seconds
    since the first trial started (NaN when unknown); categorical parameter
    values are stored as their index in ``categories[name]``.
    """

    number: np.ndarray
    state: np.ndarray
    loss: np.ndarray
    start: np.ndarray
    end: np.ndarray
    coordinator: np.ndarray
    params: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    fail_reason: list[str]
    categories: dict[str, list] = field(default_factory=dict)
    log_params: frozenset[str] = frozenset()
    minimize: bool = True

    @property
    def complete(self) -> np.ndarray:
        return (self.state == "COMPLETE") & np.isfinite(self.loss)

    def ranked(self) -> np.ndarray:
        """Indices of COMPLETE trials, best first."""
        idx = np.flatnonzero(self.complete)
        order = np.argsort(self.loss[idx] if self.minimize else -self.loss[idx], kind="stable")
        return idx[order]


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return (n + cols - 1) // cols, cols


def running_best(loss: np.ndarray, minimize: bool = True) -> np.ndarray:
    """Best loss so far at each position (NaN entries are skipped; NaN until the first value)."""
    filled = np.where(np.isfinite(loss), loss, np.inf if minimize else -np.inf)
    best = np.minimum.accumulate(filled) if minimize else np.maximum.accumulate(filled)
    return np.where(np.isfinite(best), best, np.nan)


def convergence_figure(t: TrialTable) -> Figure:
    """Each trial's loss by trial number, coloured by coordinator, the running best, FAIL trials marked."""
    fig = style.new_figure(7.5, 3.4)
    ax = fig.subplots()
    ok = t.complete
    coords = sorted(set(t.coordinator.tolist()))
    many = len(coords) > 1
    size = 9 if len(t.number) < 2000 else 3
    for i, c in enumerate(coords):
        sel = ok & (t.coordinator == c)
        ax.plot(t.number[sel], t.loss[sel], "o", ls="", ms=np.sqrt(size), alpha=0.7, mew=0,
                color=style.color_for(i) if many else style.BAND, label=f"coordinator {c}" if many else "trial loss")
    if ok.any():
        order = np.argsort(t.number)
        best = running_best(t.loss[order], t.minimize)
        ax.step(t.number[order], best, where="post", color=style.ACCENT, lw=1.6, label="running best")
        if style.wants_log(t.loss[ok]):
            ax.set_yscale("log")
    failed = t.state == "FAIL"
    if failed.any():
        ax.plot(t.number[failed], np.zeros(failed.sum()), "|", color=style.FAIL, ms=10, mew=1.2,
                transform=ax.get_xaxis_transform(), label=f"FAIL ({failed.sum()})", clip_on=False)
    ax.set_xlabel("trial number")
    ax.set_ylabel("loss")
    if many:  # one entry per coordinator: below the axes, where it hides no trial
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=3, markerscale=2)
    else:
        ax.legend(loc="upper right", markerscale=1.5)
    return fig


def _values(t: TrialTable, name: str) -> np.ndarray:
    return t.params[name].astype(float)


def _param_axis(ax: object, t: TrialTable, name: str, axis: str) -> None:
    if name in t.log_params:
        getattr(ax, f"set_{axis}scale")("log")
    if name in t.categories:
        cats = t.categories[name]
        getattr(ax, f"set_{axis}ticks")(range(len(cats)), [str(c) for c in cats])


def _loss_norm(loss: np.ndarray) -> Normalize:
    finite = loss[np.isfinite(loss)]
    if finite.size and style.wants_log(finite):
        return LogNorm(float(finite.min()), float(finite.max()))
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return Normalize(lo, hi if hi > lo else lo + 1.0)


def traces_figure(t: TrialTable) -> Figure:
    """Each parameter's value by trial number, coloured by the trial's loss."""
    names = list(t.params)
    rows, cols = _grid(len(names), 2)
    height = 2.0 * rows + 0.4
    fig = style.new_figure(7.5, height, layout=None)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True,
                        gridspec_kw={"left": 0.1, "right": 0.86, "bottom": 0.55 / height, "top": 1 - 0.15 / height,
                                     "wspace": 0.3, "hspace": 0.15})
    ok = t.complete
    norm = _loss_norm(t.loss[ok])
    sc = None
    for i, name in enumerate(names):
        ax = axes[i // cols][i % cols]
        v = _values(t, name)
        ax.plot(t.number[~ok], v[~ok], "x", ls="", ms=np.sqrt(8), color=style.FAIL, mew=0.8)
        order = np.argsort(-t.loss[ok] if t.minimize else t.loss[ok])  # best drawn last, on top
        sc = ax.scatter(t.number[ok][order], v[ok][order], c=t.loss[ok][order], cmap=style.LOSS_CMAP, norm=norm,
                        s=9, lw=0, rasterized=True)
        _param_axis(ax, t, name, "y")
        ax.set_ylabel(name)
        if i // cols == rows - 1:
            ax.set_xlabel("trial number")
    for j in range(len(names), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    if sc is not None and ok.any():
        fig.colorbar(sc, cax=fig.add_axes((0.89, 0.55 / height, 0.02, 1 - 0.7 / height)), label="loss")
    return fig


def pairs_figure(t: TrialTable, top_fraction: float = 0.1, max_params: int = 8) -> Figure:
    """Pair matrix of the COMPLETE trials, coloured by loss rank; top 10 % outlined, best starred."""
    names = list(t.params)[:max_params]
    p = len(names)
    size = min(7.5, 1.7 * p + 1.2)
    fig = style.new_figure(size, size, layout=None)
    axes = fig.subplots(p, p, squeeze=False, gridspec_kw={"left": 0.12, "right": 0.97, "bottom": 0.1, "top": 0.97,
                                                          "wspace": 0.08, "hspace": 0.08})
    ranked = t.ranked()
    n = len(ranked)
    rank = np.empty(n)
    rank[:] = np.arange(n) / max(n - 1, 1)  # 0 = best, 1 = worst
    top = ranked[: max(1, int(np.ceil(top_fraction * n)))] if n else ranked
    draw = ranked[::-1]  # worst first, best on top
    sc = None
    for r in range(p):
        for c in range(p):
            ax = axes[r][c]
            if c > r:
                ax.set_visible(False)
                continue
            x = _values(t, names[c])
            if r == c:
                vals = x[ranked]
                vals = vals[np.isfinite(vals)]
                lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 1.0)
                hi = hi if hi > lo else lo + 1.0
                if names[c] in t.log_params and lo > 0:
                    bins = np.geomspace(lo, hi, 21)
                    ax.set_xscale("log")
                else:
                    bins = np.linspace(lo, hi, 21)  # the same bins for all trials and the best 10 %
                ax.hist(vals, bins=bins, color=style.MUTED)
                if len(top):
                    ax.hist(x[top], bins=bins, color=style.ACCENT, alpha=0.8)
                ax.set_yticks([])
                ax.grid(False)
            else:
                y = _values(t, names[r])
                sc = ax.scatter(x[draw], y[draw], c=rank[::-1], cmap=style.LOSS_CMAP, s=10, lw=0, vmin=0, vmax=1,
                                rasterized=True)
                if len(top):
                    ax.plot(x[top], y[top], "o", ls="", ms=np.sqrt(14), mfc="none", mec=style.ACCENT, mew=0.6)
                if n:
                    ax.plot(x[ranked[0]], y[ranked[0]], "*", color="black", ms=11, mfc=style.ACCENT, mew=0.8)
                _param_axis(ax, t, names[r], "y")
                _param_axis(ax, t, names[c], "x")
            if r == p - 1:
                ax.set_xlabel(names[c])
            else:
                ax.tick_params(labelbottom=False)
            if c == 0 and r > 0:
                ax.set_ylabel(names[r])
            elif c > 0 or r == 0:
                ax.tick_params(labelleft=False)
            ax.tick_params(labelsize=7)
    if sc is not None:  # in the empty upper triangle, beside the matrix rather than off to the right
        corner = axes[0][p - 1].get_position()
        first = axes[0][1].get_position() if p > 2 else corner
        cax = fig.add_axes((first.x0 + 0.02, corner.y0 + corner.height * 0.55, corner.x1 - first.x0 - 0.04, 0.025))
        cb = fig.colorbar(sc, cax=cax, orientation="horizontal", label="loss rank (0 = best)")
        cb.ax.tick_params(labelsize=7)
    return fig


def profile(values: np.ndarray, loss: np.ndarray, *, bins: int = 20, log: bool = False,
            minimize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Best loss in each of ``bins`` bins of a parameter: (bin centres, best loss; NaN for empty bins)."""
    ok = np.isfinite(values) & np.isfinite(loss)
    v, l = values[ok], loss[ok]
    if v.size == 0:
        return np.array([]), np.array([])
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return np.array([lo]), np.array([l.min() if minimize else l.max()])
    edges = np.geomspace(lo, hi, bins + 1) if log and lo > 0 else np.linspace(lo, hi, bins + 1)
    which = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, bins - 1)
    best = np.full(bins, np.nan)
    for b in range(bins):
        sel = l[which == b]
        if sel.size:
            best[b] = sel.min() if minimize else sel.max()
    centres = np.sqrt(edges[:-1] * edges[1:]) if log and lo > 0 else (edges[:-1] + edges[1:]) / 2
    return centres, best


def profile_interval(x: np.ndarray, y: np.ndarray, threshold: float) -> tuple[float, float] | None:
    """The span of bin centres whose best loss is within ``threshold`` of the lowest (None: no bins)."""
    ok = np.isfinite(y)
    if not ok.any():
        return None
    inside = x[ok][y[ok] <= np.nanmin(y) + threshold]
    return float(inside.min()), float(inside.max())


def profiles_figure(t: TrialTable, threshold: float | None = None) -> Figure:
    """1-D profiles: the best loss reached in bins of each parameter (flat = not identified).

    ``threshold`` (a loss difference, e.g. 1.92 for a negative log-likelihood): a dotted
    line at the lowest loss + threshold and, shaded, the bins below it: an approximate
    95 % interval when the loss is a log-likelihood."""
    names = list(t.params)
    rows, cols = _grid(len(names), 3)
    height = 2.2 * rows + 0.3
    fig = style.new_figure(7.5, height, layout=None)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True,
                        gridspec_kw={"left": 0.1, "right": 0.98, "bottom": 0.6 / height, "top": 1 - 0.15 / height,
                                     "wspace": 0.08, "hspace": 0.45})
    ok = t.complete
    log_loss = style.wants_log(t.loss[ok])
    best = t.ranked()[:1]
    for i, name in enumerate(names):
        ax = axes[i // cols][i % cols]
        v = _values(t, name)
        ax.plot(v[ok], t.loss[ok], "o", ls="", ms=2, color=style.MUTED, alpha=0.5, mew=0)
        x, y = profile(v[ok], t.loss[ok], log=name in t.log_params, minimize=t.minimize)
        ax.plot(x, y, "-o", color=style.BAND, ms=3, lw=1.4)
        if threshold is not None and len(best):
            lowest = float(t.loss[best[0]])
            ax.axhline(lowest + threshold, color=style.ACCENT, lw=1, ls=":")
            span = profile_interval(x, y, threshold)
            if span is not None:
                ax.axvspan(span[0], span[1], color=style.ACCENT, alpha=0.08, lw=0)
        if len(best):
            ax.axvline(v[best[0]], color=style.ACCENT, lw=1, ls="--")
        _param_axis(ax, t, name, "x")
        if log_loss:
            ax.set_yscale("log")
        ax.set_xlabel(name)
        if i % cols == 0:
            ax.set_ylabel("best loss in bin")
    for j in range(len(names), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    return fig


def per_target_figure(t: TrialTable, k: int = 10) -> Figure:
    """Per-target values of the k best trials, one group of bars per trial (best first)."""
    best = t.ranked()[:k]
    names = list(t.targets)
    fig = style.new_figure(7.5, 3.2)
    ax = fig.subplots()
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(best))
    for j, name in enumerate(names):
        ax.bar(x + (j - (len(names) - 1) / 2) * width, t.targets[name][best], width, label=name, color=style.color_for(j))
    ax.set_xticks(x, [f"#{n}" for n in t.number[best]])
    ax.set_xlabel("trial (best first)")
    ax.set_ylabel("target value")
    ax.legend(ncol=min(4, len(names)))
    return fig


def timeline_figure(t: TrialTable, slots: int | None = None) -> Figure:
    """Each trial a bar from start to end, one block of rows per coordinator; trials in flight below."""
    ok = np.isfinite(t.start) & np.isfinite(t.end)
    fig = style.new_figure(7.5, 4.6)
    ax, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.2])
    coords = sorted(set(t.coordinator[ok].tolist()))
    base = 0
    ticks, labels = [], []
    for i, c in enumerate(coords):
        sel = np.flatnonzero(ok & (t.coordinator == c))
        lane = lanes(t.start[sel], t.end[sel])
        failed = t.state[sel] == "FAIL"
        width = max(0.5, min(6.0, 120 / max(lane.max() + 1, 1) / max(len(coords), 1)))
        for which, color in ((~failed, style.color_for(i)), (failed, style.FAIL)):
            # One path of NaN-separated segments per colour: one draw call, not one per trial.
            xs = np.stack([t.start[sel][which], t.end[sel][which], np.full(which.sum(), np.nan)], 1).ravel()
            ys = np.repeat(base + lane[which], 3).astype(float)
            ax.plot(xs, ys, color=color, lw=width, solid_capstyle="butt")
        n_lanes = int(lane.max()) + 1 if len(lane) else 0
        every = max(1, int(np.ceil(n_lanes / 8)))  # a tick on each row, or on every k-th of many
        for k in range(0, n_lanes, every):
            ticks.append(base + k)
            labels.append(f"{c}: {k + 1}" if len(coords) > 1 else str(k + 1))
        base += n_lanes + 1
    ax.set_ylim(max(base - 1, 0) - 0.4, -0.6)  # row 1 on top
    ax.set_yticks(ticks, labels)
    ax.grid(axis="y", visible=False)
    ax.set_ylabel("row (coordinator: row)" if len(coords) > 1 else "row")
    if ok.any():
        ax.set_xlim(float(np.nanmin(t.start[ok])), float(np.nanmax(t.end[ok])))
        times, count = in_flight(t.start[ok], t.end[ok])
        ax2.step(times, count, where="post", color=style.BAND, lw=1.2, label=f"in flight (most: {int(count.max())})")
        ax2.fill_between(times, count, step="post", color=style.BAND, alpha=0.25, lw=0)
        if slots:
            ax2.axhline(slots, color=style.MUTED, lw=1, ls="--", label=f"{slots} simulation slots")
        ax2.set_ylim(0, max(float(count.max()), float(slots or 0)) + 0.5)
        ax2.yaxis.get_major_locator().set_params(integer=True)
        ax2.legend(loc="upper right", fontsize=7)
    ax2.set_ylabel("trials in flight")
    ax2.set_xlabel("seconds since the first trial started")
    return fig


def failures_figure(reasons: Mapping[str, int]) -> Figure:
    """Failed trials counted by reason (most frequent on top)."""
    items = sorted(reasons.items(), key=lambda kv: kv[1])[-12:]
    fig = style.new_figure(7.5, 0.45 * len(items) + 1.0)
    ax = fig.subplots()
    ax.barh(range(len(items)), [v for _, v in items], color=style.FAIL)
    ax.set_yticks(range(len(items)), [k if len(k) <= 70 else k[:67] + "..." for k, _ in items])
    ax.set_xlabel("failed trials")
    ax.grid(axis="y", visible=False)
    return fig
