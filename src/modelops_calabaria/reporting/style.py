"""The house style of every figure: one place for colours, fonts and PNG output.

Figures are drawn with matplotlib's object API on the Agg canvas (no display,
no pyplot state shared between threads), inside :func:`styled`, and turned
into PNG bytes by :func:`to_png`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Colours: one accent for "the fit / the best", a neutral for data, a categorical cycle for coordinators and targets.
INK = "#1f2933"
DATA = "#1f2933"
ACCENT = "#c0392b"
BAND = "#2e86c1"
MUTED = "#9aa5b1"
FAIL = "#d35400"
CYCLE = ["#2e86c1", "#c0392b", "#27ae60", "#8e44ad", "#d4ac0d", "#16a085", "#e67e22", "#7f8c8d", "#2c3e50", "#e84393"]
LOSS_CMAP = "viridis_r"  # low loss = bright yellow, high = dark: the good trials stand out
DPI = 110

RC: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "axes.edgecolor": "#52606d",
    "axes.labelcolor": INK,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e4e7eb",
    "grid.linewidth": 0.6,
    "axes.prop_cycle": matplotlib.cycler(color=CYCLE),
    "xtick.color": "#52606d",
    "ytick.color": "#52606d",
    "legend.frameon": False,
    "legend.fontsize": 8,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}


@contextmanager
def styled() -> Iterator[None]:
    """Apply the house style for the figures drawn inside the block."""
    with matplotlib.rc_context(RC):
        yield


def new_figure(width: float = 7.5, height: float = 3.6, layout: str | None = "constrained") -> Figure:
    """A figure on its own Agg canvas (thread-safe: no pyplot). Figures with many axes pass
    ``layout=None`` and place them with ``subplots_adjust``: constrained layout measures every
    tick label of every axes, which dominates the drawing time of a pair matrix."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def color_for(i: int) -> str:
    """The i-th colour of the categorical cycle (wraps around)."""
    return CYCLE[i % len(CYCLE)]


def wants_log(values: Any) -> bool:
    """Whether a positive series spans enough decades to read better on a log axis."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2 or (v <= 0).any():
        return False
    return float(v.max() / v.min()) > 100.0
