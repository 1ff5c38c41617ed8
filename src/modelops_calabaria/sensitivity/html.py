"""``sensitivity.html``: a sweep's indices on one self-contained page (figures inline, no script).

Per output with Sobol' indices: first-order and total indices per parameter as bars with
their bootstrap intervals; with Morris: the μ*–σ plane. Every output's replicate-noise share
and a table of the numbers. Figures in the house style (reporting/style.py).
"""

from __future__ import annotations

import base64
import datetime
import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from modelops_calabaria import __version__
from modelops_calabaria.reporting.style import ACCENT, BAND, MUTED, new_figure, styled, to_png

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#1f2933;max-width:1000px;margin:0 auto;padding:1.5em;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.1em}h2{font-size:1.25em;border-bottom:2px solid #e4e7eb;padding-bottom:.2em;margin-top:2em}
.sub{color:#52606d;margin-top:0}figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #e4e7eb}
figcaption{color:#52606d;font-size:.92em}table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}
th,td{padding:.25em .7em;border-bottom:1px solid #e4e7eb;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.summary{display:flex;flex-wrap:wrap;gap:1em;margin:1em 0}.summary div{background:#f5f7fa;padding:.5em 1em;border-radius:4px}
.summary b{display:block;font-size:1.2em}
"""


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def sobol_figure(name: str, params: list[str], res: dict[str, Any], confidence: float) -> bytes:
    """S1 and ST per parameter, bars with ± the bootstrap half-width."""
    x = np.arange(len(params))
    with styled():
        fig = new_figure(max(4.0, 1.1 * len(params) + 2), 3.2)
        ax = fig.add_subplot()
        for k, (key, colour, label) in enumerate((("S1", BAND, "first order S1"), ("ST", ACCENT, "total ST"))):
            vals = np.array([_num(v) for v in res[key]])
            err = np.array([_num(v) for v in res[f"{key}_conf"]])
            ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, yerr=err, capsize=3, color=colour, label=label)
        ax.set_xticks(x, params)
        ax.set_ylabel("index")
        ax.set_title(f"{name}: Sobol' indices ({confidence:.0%} intervals)")
        ax.axhline(0, color=MUTED, linewidth=0.8)
        ax.legend()
        return to_png(fig)


def morris_figure(name: str, params: list[str], res: dict[str, Any]) -> bytes:
    """The μ*–σ plane: far right, important; high, non-linear or interacting."""
    mu_star = np.array([_num(v) for v in res["mu_star"]])
    sigma = np.array([_num(v) for v in res["sigma"]])
    err = np.array([_num(v) for v in res["mu_star_conf"]])
    with styled():
        fig = new_figure(5.0, 3.6)
        ax = fig.add_subplot()
        ax.errorbar(mu_star, sigma, xerr=err, fmt="o", color=BAND, ecolor=MUTED, capsize=3)
        for label, a, b in zip(params, mu_star, sigma):
            ax.annotate(label, (a, b), textcoords="offset points", xytext=(4, 4), fontsize=8)
        top = float(np.nanmax(np.concatenate([mu_star, sigma]))) if len(params) else 1.0
        ax.plot([0, top], [0, top], color=MUTED, linewidth=0.8, linestyle="--")
        ax.set_xlabel("μ* (mean |elementary effect|)")
        ax.set_ylabel("σ")
        ax.set_title(f"{name}: Morris μ*–σ")
        return to_png(fig)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _img(png: bytes, title: str, ident: str, caption: str) -> str:
    b64 = base64.b64encode(png).decode("ascii")
    return (f'<figure id="{ident}"><img alt="{html.escape(title)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def render(result: dict[str, Any]) -> str:
    """The page as one HTML document."""
    params = list(result["parameters"])
    design = result["design"]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>Sensitivity: {html.escape(result['study'])}</title><style>{CSS}</style></head><body>",
           f"<h1>Sensitivity: {html.escape(result['study'])}</h1>",
           f'<p class="sub">{design} design · generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC · '
           f"modelops-calabaria {__version__}</p>",
           '<div class="summary">' + "".join(f"<div>{html.escape(k)}<b>{html.escape(str(v))}</b></div>" for k, v in (
               ("design points", result["points"]), ("replicates", result["replicates"]),
               ("complete", result["complete_points"]), ("failed", result["failed_points"]))) + "</div>"]
    if result.get("partial"):
        out.append("<p><b>Partial:</b> the sweep was stopped before every point ran.</p>")
    if result.get("first_failure"):
        out.append(f"<p>First failure: <code>{html.escape(result['first_failure'])}</code></p>")
    for k, (name, res) in enumerate(result["outputs"].items()):
        out.append(f'<section id="output-{k}" data-output="{html.escape(name)}"><h2>{html.escape(name)}</h2>')
        out.append(f"<p>Replicate noise: {res['noise_share']:.1%} of the variance is within points "
                   f"(indices are those of the replicate mean).</p>")
        if "reason" in res:
            out.append(f"<p>No indices: {html.escape(res['reason'])}.</p></section>")
            continue
        if "S1" in res:
            out.append(_img(sobol_figure(name, params, res, result["confidence"]), f"{name} Sobol' indices", f"figure-sobol-{k}",
                            "S1: share of the variance due to the parameter alone; ST: including its interactions. "
                            "Error bars: bootstrap intervals."))
            cols = ["S1", "S1_conf", "ST", "ST_conf"]
        else:
            out.append(_img(morris_figure(name, params, res), f"{name} Morris", f"figure-morris-{k}",
                            "μ*: overall importance; σ: non-linearity or interactions (search scale)."))
            cols = ["mu", "mu_star", "mu_star_conf", "sigma"]
        head = "".join(f"<th>{c}</th>" for c in ["parameter", *cols])
        rows = "".join(f'<tr data-key="{html.escape(p)}"><th>{html.escape(p)}</th>'
                       + "".join(f'<td class="num">{_fmt(res[c][j])}</td>' for c in cols) + "</tr>"
                       for j, p in enumerate(params))
        out.append(f'<table id="indices-{k}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></section>')
    out.append("</body></html>")
    return "\n".join(out)


def write_page(path: Path, result: dict[str, Any]) -> Path:
    """Write sensitivity.html."""
    path.write_text(render(result))
    return path
