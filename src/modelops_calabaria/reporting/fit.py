"""The fit figures: observations against re-simulated bands, for every target form.

Pure functions from :class:`FitData` (plain arrays) to matplotlib figures.

- A target by row index: x = its index column (``week``), one panel per value column.
- A keyed target: x = its time key (dates drawn as dates), one panel per group of
  the other keys (age group, region, ...) and value column.

In each panel the observed points sit over the simulated median and its 50 % and
95 % bands. Nothing is drawn across a gap: a blank observation breaks the line
through the points (and is ticked at the bottom), and rows absent from the data
(a group reported only from week 5, a missing week) break the bands too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from modelops_calabaria.reporting import style

QUANTILES = (0.025, 0.25, 0.5, 0.75, 0.975)
MAX_PANELS = 24  # more groups than this: the first ones are drawn, the caption says how many
DECADES = 2.0  # values spanning at least this many decades get a log-scale view too


@dataclass
class FitData:
    """One target's observations and the re-simulated values at its observed rows.

    ``observed`` is (n, m) with NaN for a gap; ``quantiles`` maps each of
    :data:`QUANTILES` to an (n, m) array; ``others`` are (label, median (n, m))
    of the next best trials; ``before`` is (label, median (n, m)) of the starting
    point. A keyed target has ``keys`` (name → n plottable values: dates as
    ``datetime64[D]``, numbers, labels) and its ``time_key``; a target by row
    index has ``index`` (n whole numbers) instead.
    """

    target: str
    index: np.ndarray | None
    columns: Sequence[str]
    observed: np.ndarray
    quantiles: Mapping[float, np.ndarray] | None
    others: Sequence[tuple[str, np.ndarray]] = ()
    label: str = "best trial"
    keys: dict[str, np.ndarray] | None = None
    time_key: str | None = None
    x_label: str = "index"
    before: tuple[str, np.ndarray] | None = None
    output: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def x(self) -> np.ndarray:
        """The x value of every observed row: the time key, else the index, else the row number."""
        if self.keys:
            if self.time_key in self.keys:
                return self.keys[self.time_key]  # type: ignore[index]
            numeric = [v for v in self.keys.values() if v.dtype.kind in "fiuM"]
            return numeric[0] if numeric else np.arange(len(self.observed), dtype=float)
        return self.index if self.index is not None else np.arange(len(self.observed), dtype=float)

    @property
    def dated(self) -> bool:
        return np.issubdtype(self.x.dtype, np.datetime64)

    def groups(self) -> list[tuple[str, np.ndarray]]:
        """(label, rows sorted by x) of each group of the keys other than the x key."""
        x = self.x
        others = [k for k in (self.keys or {}) if self.keys[k] is not x]  # type: ignore[index]
        if not others:
            return [("", np.argsort(x, kind="stable"))]
        labels = np.array([", ".join(str(self.keys[k][i]) for k in others) for i in range(len(x))], dtype=object)  # type: ignore[index]
        _, first = np.unique(labels, return_index=True)
        out = []
        for i in sorted(first):  # groups in the order the data lists them
            rows = np.flatnonzero(labels == labels[i])
            out.append((str(labels[i]), rows[np.argsort(x[rows], kind="stable")]))
        return out

    def panels(self) -> list[tuple[str, np.ndarray, int]]:
        """(title, rows, value column) of every panel: groups × value columns."""
        many = len(self.columns) > 1
        out = []
        for label, rows in self.groups():
            for j, col in enumerate(self.columns):
                title = ", ".join(p for p in (label, col if many or not label else "") if p) or f"{self.target}: {col}"
                out.append((title, rows, j))
        return out

    def wants_log(self) -> bool:
        """Whether the positive observed and simulated values span at least :data:`DECADES` decades."""
        parts = [self.observed.ravel()]
        if self.quantiles is not None:
            parts.append(np.asarray(self.quantiles[0.5]).ravel())
        v = np.concatenate(parts)
        v = v[np.isfinite(v) & (v > 0)]
        return bool(v.size >= 2 and np.log10(v.max() / v.min()) >= DECADES)


def _step(x: np.ndarray) -> float:
    """The usual spacing of the x values (the smallest positive difference)."""
    u = np.unique(x.astype("datetime64[D]").astype(float) if np.issubdtype(x.dtype, np.datetime64) else x.astype(float))
    d = np.diff(u)
    d = d[d > 0]
    return float(d.min()) if d.size else 1.0


def segments(x: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
    """``rows`` (sorted by x) split where x jumps by more than 1.5 usual steps (absent rows)."""
    if len(rows) < 2:
        return [rows]
    xs = x[rows]
    num = xs.astype("datetime64[D]").astype(float) if np.issubdtype(xs.dtype, np.datetime64) else xs.astype(float)
    cut = np.flatnonzero(np.diff(num) > 1.5 * _step(x)) + 1
    return np.split(rows, cut)


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return (n + cols - 1) // cols, cols


def _axes(fit: FitData, n_panels: int, height: float = 2.4) -> tuple[Figure, list]:
    rows, cols = _grid(n_panels)
    fig = style.new_figure(7.5 if cols > 1 else 7.0, height * rows + 0.9)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    flat = [axes[i // cols][i % cols] for i in range(rows * cols)]
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    if fit.dated:
        for ax in flat[:n_panels]:
            locator = AutoDateLocator(minticks=3, maxticks=6)
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    for k, ax in enumerate(flat[:n_panels]):
        if k + cols >= n_panels:  # the bottom panel of its column
            ax.set_xlabel(fit.x_label)
            ax.tick_params(labelbottom=True)
        if k % cols == 0:
            ax.set_ylabel(fit.columns[0] if len(fit.columns) == 1 else "value")
    return fig, flat[:n_panels]


def _log_axis(ax: object, values: np.ndarray) -> None:
    """Log y; symmetric-log (linear below 1) when some values are zero, as counts often are."""
    v = values[np.isfinite(values)]
    if v.size and (v <= 0).any():
        ax.set_yscale("symlog", linthresh=1.0)  # type: ignore[attr-defined]
        ax.set_ylim(bottom=0)  # type: ignore[attr-defined]
    else:
        ax.set_yscale("log")  # type: ignore[attr-defined]


def _observed(ax: object, x: np.ndarray, y: np.ndarray, rows: np.ndarray, label: bool) -> None:
    for seg in segments(x, rows):
        ax.plot(x[seg], y[seg], "-", color=style.DATA, lw=0.6, alpha=0.5)  # type: ignore[attr-defined]
    ax.plot(x[rows], y[rows], "o", color=style.DATA, ms=3.2, label="observed" if label else None)  # type: ignore[attr-defined]
    blank = rows[~np.isfinite(y[rows])]
    if blank.size:
        ax.plot(x[blank], np.zeros(blank.size), "|", color=style.FAIL, ms=9, mew=1.4, clip_on=False,  # type: ignore[attr-defined]
                transform=ax.get_xaxis_transform(), label="no data" if label else None)  # type: ignore[attr-defined]


def fit_figure(fit: FitData, log: bool = False) -> Figure:
    """Observed points over the simulated median, 50 % and 95 % bands; one panel per group and value column."""
    panels = fit.panels()
    shown = panels[:MAX_PANELS]
    fig, axes = _axes(fit, len(shown))
    x = fit.x
    labelled: set[str] = set()

    def once(name: str) -> str | None:
        if name in labelled:
            return None
        labelled.add(name)
        return name

    for ax, (title, rows, j) in zip(axes, shown):
        for _k, (_lab, med) in enumerate(fit.others):
            for seg in segments(x, rows):
                ax.plot(x[seg], med[seg, j], color=style.MUTED, lw=0.9, alpha=0.6, label=once("next best trials"))
        if fit.quantiles is not None:
            q = fit.quantiles
            for seg in segments(x, rows):
                ax.fill_between(x[seg], q[0.025][seg, j], q[0.975][seg, j], color=style.BAND, alpha=0.18, lw=0, label=once("95 % band"))
                ax.fill_between(x[seg], q[0.25][seg, j], q[0.75][seg, j], color=style.BAND, alpha=0.35, lw=0, label=once("50 % band"))
                ax.plot(x[seg], q[0.5][seg, j], color=style.BAND, lw=1.8, label=once(f"median, {fit.label}"))
        _observed(ax, x, fit.observed[:, j], rows, "observed" not in labelled)
        labelled.update({"observed", "no data"})
        ax.set_title(title, fontsize=9)
        if log:
            values = [fit.observed[rows, j]] + ([np.asarray(fit.quantiles[0.975])[rows, j]] if fit.quantiles is not None else [])
            _log_axis(ax, np.concatenate(values))
    _legend(fig, axes)
    fig.suptitle(f"{fit.target}" + (" (log scale)" if log else ""), fontweight="bold")
    return fig


def _legend(fig: Figure, axes: Sequence[object]) -> None:
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):  # type: ignore[attr-defined]
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if labels:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(5, len(labels)))


def before_after_figure(fit: FitData) -> Figure | None:
    """The starting point's median (dashed) and the best trial's (solid) over the observations."""
    if fit.before is None or fit.quantiles is None:
        return None
    shown = fit.panels()[:MAX_PANELS]
    fig, axes = _axes(fit, len(shown), height=2.1)
    x = fit.x
    first = True
    for ax, (title, rows, j) in zip(axes, shown):
        for seg in segments(x, rows):
            ax.plot(x[seg], fit.before[1][seg, j], "--", color=style.MUTED, lw=1.6,
                    label=f"before: median of {fit.before[0]}" if first else None)
            ax.plot(x[seg], fit.quantiles[0.5][seg, j], color=style.BAND, lw=1.8,
                    label=f"after: median of {fit.label}" if first else None)
            first = False
        _observed(ax, x, fit.observed[:, j], rows, ax is axes[0])
        ax.set_title(title, fontsize=9)
    _legend(fig, axes)
    fig.suptitle(f"{fit.target}: before and after", fontweight="bold")
    return fig
