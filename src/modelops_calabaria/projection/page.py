"""``projection.html``: one self-contained page (figures inline as base64 PNG, no script, no network).

Sections: per series (a target's value column for one group of its keys) the
observations then the projected median and 50 % / 95 % bands of every scenario
over dates; per series the paired difference of each scenario to the baseline
(median and 95 % band of scenario minus baseline, draw by draw on the same
seeds); the table of summaries (peak size and date, cumulative total, averted,
peak delay, each a median with its 95 % interval); the forecast check (WIS and
coverage) when there is one; the facts. House style and HTML pieces come from
``reporting/`` (style.py, report.py's CSS and tables).
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

import numpy as np

from modelops_calabaria import __version__
from modelops_calabaria.projection.outputs import Series, horizons, observed_of, samples, series_of
from modelops_calabaria.projection.run import Plan
from modelops_calabaria.reporting import style
from modelops_calabaria.reporting.report import CSS, Table, _table_html

MAX_SERIES = 40  # figures per section; the tables and files hold every series


def _dates(d: np.ndarray) -> Any:
    return d.astype("datetime64[D]").astype(object)


def _bands(ax: Any, dates: np.ndarray, x: np.ndarray, color: str, label: str) -> None:
    q = np.quantile(x, [0.025, 0.25, 0.5, 0.75, 0.975], axis=0)
    t = _dates(dates)
    ax.fill_between(t, q[0], q[4], color=color, alpha=0.15, linewidth=0)
    ax.fill_between(t, q[1], q[3], color=color, alpha=0.3, linewidth=0)
    ax.plot(t, q[2], color=color, linewidth=1.4, label=label)


def projection_figure(plan: Plan, values: np.ndarray, s: Series) -> bytes:
    """Observations, then every scenario's median and 50 % / 95 % bands, with the reference date marked."""
    with style.styled():
        fig = style.new_figure(7.5, 3.4)
        ax = fig.add_subplot()
        for k, (name, _) in enumerate(plan.scenarios):
            _bands(ax, s.dates, samples(values, k, s), style.color_for(k), name)
        od, ov = observed_of(plan.grids[s.grid], s)
        if len(od):
            ax.plot(_dates(od), ov, "o", color=style.DATA, markersize=3, label="observed")
        ax.axvline(np.datetime64(plan.reference_date, "D").astype(object), color=style.MUTED, linestyle="--", linewidth=1)
        ax.set_title(s.title)
        ax.set_ylabel(s.output)
        ax.legend(loc="upper left")
        fig.autofmt_xdate()
        return style.to_png(fig)


def difference_figure(plan: Plan, values: np.ndarray, s: Series) -> bytes | None:
    """Each scenario minus the baseline, per projected date: median and 95 % band of the paired differences."""
    future = horizons(s, plan.reference_date) > 0
    if len(plan.scenarios) < 2 or not future.any():
        return None
    base = samples(values, 0, s)[:, future]
    with style.styled():
        fig = style.new_figure(7.5, 3.0)
        ax = fig.add_subplot()
        t = _dates(s.dates[future])
        for k, (name, _) in enumerate(plan.scenarios[1:], start=1):
            diff = samples(values, k, s)[:, future] - base
            q = np.quantile(diff, [0.025, 0.5, 0.975], axis=0)
            ax.fill_between(t, q[0], q[2], color=style.color_for(k), alpha=0.2, linewidth=0)
            ax.plot(t, q[1], color=style.color_for(k), linewidth=1.4, label=f"{name} − {plan.scenarios[0][0]}")
        ax.axhline(0, color=style.MUTED, linewidth=1)
        ax.set_title(f"{s.title}: paired difference to {plan.scenarios[0][0]}")
        ax.legend(loc="upper left")
        fig.autofmt_xdate()
        return style.to_png(fig)


def _ci(v: list[float] | None, fmt: str = "{:.4g}") -> str:
    if v is None:
        return "-"
    return f"{fmt.format(v[1])} [{fmt.format(v[0])}, {fmt.format(v[2])}]"


def summary_table(sums: list[dict[str, Any]], keys: list[str]) -> Table:
    rows = []
    for r in sums:
        rows.append([r["scenario"], r["target"], *[r.get(k, "") for k in keys], _ci(r["peak"]),
                     f"{r['peak_date'][1]} [{r['peak_date'][0]}, {r['peak_date'][2]}]", _ci(r["cumulative"]),
                     _ci(r.get("averted")), _ci(r.get("peak_delay_days"), "{:.0f}")])
    return Table("Summaries over the projected dates (median [95 % interval])",
                 ["scenario", "target", *keys, "peak", "peak date", "cumulative", "averted vs baseline", "peak delay (days)"],
                 rows, id="summaries")


def _figure(name: str, title: str, caption: str, png: bytes) -> str:
    b64 = base64.b64encode(png).decode("ascii")
    return (f'<figure id="figure-{html.escape(name)}"><h3>{html.escape(title)}</h3>'
            f'<img alt="{html.escape(title)}" src="data:image/png;base64,{b64}"><figcaption>{html.escape(caption)}</figcaption></figure>')


def render(plan: Plan, values: np.ndarray, sums: list[dict[str, Any]], check: dict[str, Any] | None) -> str:
    """The whole page as one HTML document."""
    series = series_of(plan)
    keys = list(dict.fromkeys(k for s in series for k in s.keys))
    S, D, R, _ = values.shape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>Projection: {html.escape(plan.job.study)}</title><style>{CSS}</style></head><body>",
           f"<h1>Projection: {html.escape(plan.job.study)}</h1>",
           f'<p class="sub">from {html.escape(str(plan.reference_date))} · modelops-calabaria {__version__}</p>',
           '<div class="summary">' + "".join(f"<div>{html.escape(k)}<b>{html.escape(str(v))}</b></div>" for k, v in (
               ("scenarios", S), ("parameter sets", f"{D} ({plan.sets.source})"), ("replicates", R),
               ("simulations", S * D * R), ("projected to", str(max(s.dates.max() for s in series))))) + "</div>",
           '<nav><a href="#projections">Projections</a><a href="#differences">Differences</a><a href="#summaries-section">Summaries</a>'
           + ('<a href="#forecast-check">Forecast check</a>' if check else "") + '<a href="#facts">Facts</a></nav>']
    out.append('<section id="projections"><h2>Projections by scenario</h2><p>Dots: observations. Lines: the median of '
               f"{D} parameter sets × {R} replicates per scenario; shaded: the 50 % and 95 % bands. Dashed: the reference "
               "date the projection starts from.</p>")
    for i, s in enumerate(series[:MAX_SERIES]):
        out.append(_figure(f"projection-{i}", s.title, f"{s.output}; scenarios: {', '.join(n for n, _ in plan.scenarios)}",
                           projection_figure(plan, values, s)))
    out.append("</section>")
    out.append('<section id="differences"><h2>Differences to the baseline</h2><p>Each scenario minus the baseline, '
               "draw by draw and replicate by replicate on the same random numbers: the band is the uncertainty of the "
               "effect itself.</p>")
    for i, s in enumerate(series[:MAX_SERIES]):
        png = difference_figure(plan, values, s)
        if png is not None:
            out.append(_figure(f"difference-{i}", f"{s.title}: difference", "median and 95 % band of the paired differences", png))
    out.append("</section>")
    out.append(f'<section id="summaries-section"><h2>Summaries</h2>{_table_html(summary_table(sums, keys))}</section>')
    if check:
        out.append(_check_section(check, keys))
    facts = [[k, v] for k, v in (("study", plan.job.study), ("model", plan.model_ref), ("parameter source", plan.sets.source),
                                 ("seed", plan.seed), ("common random numbers", plan.common_seeds), ("start date (model day 0)", plan.start),
                                 ("days simulated", plan.n_days), ("reference date", plan.reference_date))]
    out.append(f'<section id="facts"><h2>Facts</h2>{_table_html(Table("Facts", ["fact", "value"], [[str(a), str(b)] for a, b in facts]))}</section>')
    out.append("</body></html>")
    return "\n".join(out)


def _check_section(check: dict[str, Any], keys: list[str]) -> str:
    head = (f"Observations after {check['after']} ({check['points']}), scored against the baseline projection: "
            f"mean WIS {check.get('wis', float('nan')):.4g}, 50 % interval coverage {check.get('coverage_50', float('nan')):.0%}, "
            f"95 % interval coverage {check.get('coverage_95', float('nan')):.0%}.")
    rows = [[r["target"], *[r.get(k, "") for k in keys], r["date"], r["observed"], r["median"], r["lower_95"], r["upper_95"],
             r["wis"], "yes" if r["in_95"] else "no"] for r in check.get("rows", [])]
    table = Table("Held-back observations", ["target", *keys, "date", "observed", "median", "2.5 %", "97.5 %", "WIS", "in 95 %"],
                  rows, id="held-back")
    return f'<section id="forecast-check"><h2>Forecast check</h2><p>{html.escape(head)}</p>{_table_html(table)}</section>'


def write_page(plan: Plan, values: np.ndarray, out_dir: Path, sums: list[dict[str, Any]], check: dict[str, Any] | None) -> Path:
    """Write ``projection.html`` atomically; return its path."""
    path = out_dir / "projection.html"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(render(plan, values, sums, check), encoding="utf-8")
    os.replace(tmp, path)
    return path
