"""The report's posterior section, as data and HTML the report places (reporting/report.py).

Pure, no I/O: from a weighted sample it computes the summary (to the precision its
Monte Carlo error supports), the weight diagnostics and, when the sample is not to be
trusted (ESS < 100, one trial above 10 % of the weight, or Pareto k̂ > 0.7), a banner
saying so and what to do.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from modelops_calabaria.job import CalibrationJob
from modelops_calabaria.posterior.diagnostics import MAX_KHAT, MAX_WEIGHT, MIN_ESS, shown
from modelops_calabaria.posterior.outputs import posterior_summary
from modelops_calabaria.posterior.records import WeightedSample


@dataclass
class PosteriorSection:
    """What the report shows: an intro, a banner (HTML, empty when the sample is fine) and tables
    as ``(title, columns, rows, id, keys)``."""

    intro: str
    banner_html: str
    tables: list[tuple[str, list[str], list[list[Any]], str, list[str] | None]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def banner_html(warnings: Sequence[str]) -> str:
    """A warning banner of the sample's problems and the advice (empty without warnings)."""
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return ('<div class="banner warning" role="alert" id="posterior-warning" style="border:2px solid #c44e52;'
            'background:#fbeaea;padding:0.6em 1em;margin:0.6em 0"><b>This posterior sample is not reliable.</b> '
            f"Its intervals are shown to the precision the Monte Carlo error supports, but may still be wrong.<ul>{items}</ul></div>")


def posterior_section(job: CalibrationJob, sample: WeightedSample) -> PosteriorSection:
    """The section's content for ``sample`` (the whole study's weighted trials)."""
    names = list(job.parameters)
    s = posterior_summary(job, sample, 0)
    d = s["diagnostics"]
    intro = (f"Importance-weighted sample of {len(sample.numbers)} trials, effective sample size {sample.ess:.1f}, "
             f"largest weight {d['max_weight']:.3f}, Pareto k̂ {d['pareto_k']} (docs/posterior.md). Medians and 95 % "
             "credible intervals, each printed to the digit its Monte Carlo standard error (MCSE) supports; "
             "correlations show which parameters trade off.")
    rows = []
    for n in names:
        v = s["parameters"][n]
        e = v["mcse"]
        rows.append([n, shown(v["median"], e["median"]),
                     f"[{shown(v['ci95'][0], e['q2.5'])}, {shown(v['ci95'][1], e['q97.5'])}]",
                     shown(v["mean"], e["mean"]), shown(v["sd"], e["mean"]), f"{e['mean']:.2g}", f"{e['median']:.2g}"])
    tables = [("Posterior summary", ["parameter", "median", "95 % interval", "mean", "sd", "MCSE of mean",
                                     "MCSE of median"], rows, "posterior-summary", names)]
    tables.append(("Posterior correlation", ["", *names],
                   [[a, *[round(s["correlation"][a][b], 2) for b in names]] for a in names], "posterior-correlation", None))
    diag_rows = [["effective sample size", f"{d['ess']:.1f}", f"≥ {MIN_ESS:g}"],
                 ["largest normalised weight", f"{d['max_weight']:.3f}", f"≤ {MAX_WEIGHT:g}"],
                 ["Pareto k̂ of the weights", str(d["pareto_k"]), f"≤ {MAX_KHAT:g}"]]
    diag_rows += [[f"ESS after {p['trials']} trials", f"{p['ess']:.1f}", ""] for p in d["ess_by_stage"]]
    tables.append(("Weight diagnostics", ["diagnostic", "value", "trustworthy when"], diag_rows,
                   "posterior-diagnostics", None))
    return PosteriorSection(intro, banner_html(s["warnings"]), tables, s)
