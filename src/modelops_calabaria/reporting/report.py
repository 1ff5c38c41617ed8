"""``calabaria report``: one self-contained HTML file a person reads to judge a calibration.

The report is a list of :class:`Section` objects (title, intro, figures with
captions, tables, preformatted text), each built by one function of
:data:`SECTIONS` from a :class:`ReportInput`. A new section is one more
function appended to that list. :func:`render_html` turns the sections into
one HTML file: figures inline as base64 PNG, CSS inline, no script, no
external URL, so that it opens from an e-mail attachment. Each figure is also
written as a PNG beside the HTML file.

Trials are read through the study backend, opened read-only
(:meth:`~modelops_calabaria.backend.base.StudyBackend.trial_columns`: the
columns the report draws, without building Optuna's trial objects); the job
comes from the study (it is stored with it, without its execution block, so it
holds no secret; it is redacted anyway).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import os
import platform
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from modelops_calabaria import __version__
from modelops_calabaria.backend.base import BUSY_ATTR, FAIL_REASON, TARGETS_ATTR, TrialColumns
from modelops_calabaria.backend.factory import open_store
from modelops_calabaria.errors import CalabariaError, ConfigurationError, ServiceUnavailableError, StudyNotFoundError
from modelops_calabaria.job import LIKELIHOOD_SCORES, CalibrationJob, job_from_dict
from modelops_calabaria.logging import get_logger
from modelops_calabaria.posterior import posterior_figures, study_sample
from modelops_calabaria.posterior.records import WeightedSample
from modelops_calabaria.posterior.section import posterior_section
from modelops_calabaria.redaction import redact, redact_value
from modelops_calabaria.reporting import figures, style
from modelops_calabaria.reporting.best import read_stored as read_stored_best
from modelops_calabaria.reporting.best import rows_of, study_best
from modelops_calabaria.reporting.fit import DECADES, MAX_PANELS
from modelops_calabaria.reporting.timing import busy_wall, in_flight, speedup
from modelops_calabaria.reporting.results import report_state_tag
from modelops_calabaria.storage import StorageTarget, parse_storage_url

log = get_logger(__name__)
TOP_FRACTION = 0.1


# -- the report's content -------------------------------------------------------------------------


@dataclass
class Table:
    """A table; ``keys`` (one per row, optional) become ``data-key`` attributes, ``values`` ``data-value``."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    id: str | None = None
    keys: list[str] | None = None
    values: list[Any] | None = None


@dataclass
class Figure:
    """One figure: PNG bytes, caption, and (optionally) the plotted numbers as a table."""

    name: str
    title: str
    caption: str
    png: bytes
    data: Table | None = None


@dataclass
class Section:
    """One section of the report."""

    id: str
    title: str
    intro: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    pre: list[tuple[str, str]] = field(default_factory=list)
    banners: list[str] = field(default_factory=list)  # HTML shown above the intro (a warning the reader must see)


@dataclass
class ReportInput:
    """Everything the sections draw from (read once)."""

    study: str
    storage: str  # redacted, in the form Optuna's own tools accept
    job: CalibrationJob | None
    stored_job: dict[str, Any]
    trials: TrialColumns
    table: figures.TrialTable
    results: dict[str, Any] | None = None
    run_dir: Path | None = None
    fits: list[figures.FitData] = field(default_factory=list)
    fit_note: str = ""
    generated: str = ""
    posterior: WeightedSample | None = None  # a posterior run's weighted sample (docs/posterior.md)
    # Banners at the top of the report, one line each (e.g. posterior diagnostics): append a
    # string in build_input; render_html shows them above everything else.
    warnings: list[str] = field(default_factory=list)


# -- reading ---------------------------------------------------------------------------------------


def load_study(study_name: str, target: StorageTarget) -> tuple[TrialColumns, dict[str, Any], bool, Any]:
    """Read a study's trials (as columns), its stored job, whether it minimises, and the
    selection of its best stored with it (``reporting/best.py``; raw); creates nothing.

    Raises:
        StudyNotFoundError: no such study (or no such file).
        ServiceUnavailableError: the database cannot be reached.
    """
    if target.kind == "memory" or (target.path is not None and not target.path.exists()):
        raise StudyNotFoundError(f"study '{study_name}' does not exist in {target.display}",
                                 hint="check the run directory or --storage (`optuna studies --storage URL` lists studies)")
    try:
        store = open_store(target, read_only=True)
    except StudyNotFoundError:
        raise StudyNotFoundError(f"study '{study_name}' does not exist in {target.display}",
                                 hint="check the run directory or --storage (`optuna studies --storage URL` lists studies)") from None
    try:
        study_id = store.study_id(study_name)
        raw = store.stored_job(study_name)
        minimize = store.minimizes(study_id)
        columns = store.trial_columns(study_id)
        stored_best = read_stored_best(store, study_id)
    except KeyError:
        raise StudyNotFoundError(f"study '{study_name}' does not exist in {target.display}",
                                 hint="check the name (`optuna studies --storage URL` lists them)") from None
    except CalabariaError:
        raise
    except Exception as e:  # noqa: BLE001 - SQLAlchemy/psycopg2 errors may carry the password: converted, not chained
        reason = redact(str(getattr(e, "orig", None) or e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ServiceUnavailableError(f"cannot read study '{study_name}' from {target.display}: {reason}",
                                      hint="check that the database is running and the URL is right") from None
    finally:
        store.close()
    return columns, (json.loads(raw) if raw else {}), minimize, stored_best


def _epoch(times: Sequence[dt.datetime | None]) -> np.ndarray:
    return np.array([np.nan if t is None else t.timestamp() for t in times], dtype=float)


def trial_table(cols: TrialColumns, minimize: bool = True) -> figures.TrialTable:
    """The trials as the figures' columns, ordered by number (categorical values as their index)."""
    categories: dict[str, list] = {}
    log_params: set[str] = set()
    params: dict[str, np.ndarray] = {}
    for name, dist in cols.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            choices = categories[name] = list(dist.choices)
            present = cols.present[name]
            params[name] = np.array([choices.index(v) if present[i] else np.nan for i, v in enumerate(cols.params[name])],
                                    dtype=float)
        else:
            if getattr(dist, "log", False):
                log_params.add(name)
            params[name] = np.asarray(cols.params[name], dtype=float)
    per_trial = [_targets_of(a) for a in cols.user_attrs]
    target_names: list[str] = []
    for values in per_trial:
        for k in values:
            if k not in target_names:
                target_names.append(k)
    targets = {k: np.array([v.get(k, np.nan) for v in per_trial], dtype=float) for k in target_names}
    state = np.array([s.name for s in cols.state], dtype=object)
    start, end = _epoch(cols.datetime_start), _epoch(cols.datetime_complete)
    t0 = np.nanmin(start) if np.isfinite(start).any() else 0.0
    return figures.TrialTable(
        number=np.asarray(cols.number, dtype=int), state=state,
        loss=np.where(state == "COMPLETE", cols.value, np.nan).astype(float),
        start=start - t0, end=end - t0,
        coordinator=np.array([_short(str("-" if c is None else c)) for c in cols.coordinator], dtype=object),
        params=params, targets=targets,
        fail_reason=[str(a.get(FAIL_REASON, "")) for a in cols.user_attrs],
        categories=categories, log_params=frozenset(log_params), minimize=minimize,
    )


def _short(coordinator: str) -> str:
    return coordinator if len(coordinator) <= 24 else coordinator[:21] + "..."


def _targets_of(user_attrs: dict[str, Any]) -> dict[str, float]:
    """Per-target values: the numeric ``loss:<target>`` attributes when present, else the ``targets`` dict."""
    values = {k[5:]: v for k, v in user_attrs.items() if k.startswith("loss:") and isinstance(v, (int, float))}
    if values:
        return {k: float(v) for k, v in values.items()}
    raw = user_attrs.get(TARGETS_ATTR) or {}
    return {k: float(v) for k, v in raw.items() if isinstance(v, (int, float))}


# -- re-simulation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Chosen:
    number: int
    params: dict[str, Any]



def refit(job: CalibrationJob, table: figures.TrialTable, trials: TrialColumns, *, scheduler: str | None,
          local_workers: int | None, replicates: int | None = None,
          reported: int | None = None) -> tuple[list[figures.FitData], str]:
    """Fresh replicates of the best trial (and the next best, and the first trial: the
    starting point of the before/after view) on the job's simulation service.

    The best trial is ``reported`` (the run's reported best, which the end-of-run
    re-evaluation may have chosen over the lowest in-sample loss) when it is a
    completed trial of the table, else the lowest in-sample loss.

    Returns the fit data per target, and a note for the reader (why there are
    no bands, when there are none). Never raises for a model or cluster
    problem: the report then shows the observations alone and says why.
    """
    from modelops_calabaria.reporting.simulate import fit_data, fresh_seeds, observed_quantiles, probes, simulate_at_observed
    from modelops_calabaria.simulation import INLINE, SimContext, connect_service, few_runs_inline, per_run_seconds
    from modelops_calabaria.targets.evaluate import compile_targets

    targets = compile_targets(job)
    specs = list(job.targets)
    n_reps = job.report.replicates if replicates is None else replicates
    observed_only = [fit_data(spec, t) for spec, t in zip(specs, targets)]
    ranked = table.ranked()
    if reported is not None:  # the reported best first; the rest by in-sample loss
        first = [i for i in ranked if int(table.number[i]) == reported]
        ranked = first + [i for i in ranked if int(table.number[i]) != reported]
    if n_reps <= 0:
        return observed_only, "no re-simulation (report.replicates is 0)"
    if not len(ranked):
        return observed_only, "no trial completed: nothing to re-simulate"
    # ``table`` and ``trials`` share their order (by trial number): row i is the same trial.
    chosen: list[_Chosen] = []
    for i in ranked:
        params = trials.params_of(int(i))
        if all(params != c.params for c in chosen):
            chosen.append(_Chosen(int(table.number[i]), params))
        if len(chosen) > job.report.others:
            break
    # The starting point: the first completed trial (the job's first start point when it has one).
    earliest = int(min(ranked, key=lambda i: int(table.number[i])))
    start = _Chosen(int(table.number[earliest]), trials.params_of(earliest))
    extra = [] if any(start.params == c.params for c in chosen[:1]) else [start]
    seeds = fresh_seeds(job.seed, n_reps)
    context = SimContext(job.model, dict(job.fixed), probes(targets), job.timeout_s, job.replicate_retries)
    started = time.monotonic()
    few = seeds[: max(3, n_reps // 4)]
    n_runs = n_reps + len(few) * (len(chosen) - 1 + len(extra))
    per_run = per_run_seconds((a.get(BUSY_ATTR) for a, s in zip(trials.user_attrs, trials.state)
                               if s == TrialState.COMPLETE), job.n_replicates)
    if few_runs_inline(scheduler, n_runs, per_run):
        scheduler = INLINE  # a few short runs: here, rather than start a local cluster for them
    try:
        service = connect_service(scheduler, context, local_workers=local_workers)
    except Exception as e:  # noqa: BLE001 - the report still has everything else to show
        return observed_only, f"re-simulation not possible: {redact(str(e)).splitlines()[0]}"
    runs = chosen + extra
    try:
        # The faint medians of the next best trials need fewer replicates than the bands of the best.
        results = simulate_at_observed(service, targets, [t.params for t in runs], [seeds] + [few] * (len(runs) - 1))
    except Exception as e:  # noqa: BLE001
        return observed_only, f"re-simulation failed: {redact(str(e)).splitlines()[0]}"
    finally:
        service.close()
    best = results[0]
    if isinstance(best, str):
        return observed_only, f"re-simulating the best trial failed: {best.strip().splitlines()[0]}"
    before_result = results[len(chosen)] if extra else None
    fits = []
    for spec, t in zip(specs, targets):
        others = [(f"trial {trial.number}", np.median(r[t.name], axis=0)) for trial, r in zip(chosen[1:], results[1:len(chosen)])
                  if not isinstance(r, str)]
        before = None
        if before_result is not None and not isinstance(before_result, str):
            before = (f"trial {start.number} (first)", np.median(before_result[t.name], axis=0))
        fits.append(fit_data(spec, t, observed_quantiles(best[t.name]), others=others, label=f"trial {chosen[0].number}",
                             before=before))
    log.info("re-simulated for the report", trials=[t.number for t in runs], replicates=n_reps,
             seconds=round(time.monotonic() - started, 2))
    return fits, f"{n_reps} fresh replicates of trial {chosen[0].number} (seeds from the job seed, none used by a trial)" + (
        f"; faint lines: medians of trials {', '.join(str(t.number) for t in chosen[1:])}" if len(chosen) > 1 else "")


# -- sections --------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def _png(fig: Any) -> bytes:
    return style.to_png(fig)


def _plain(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return int(f) if f.is_integer() else f
    if isinstance(v, np.integer):
        return int(v)
    return str(v)


def fit_table(fit: figures.FitData, title: str, ident: str) -> Table:
    """The numbers a fit figure plots: keys (or index), observed, 2.5 / 50 / 97.5 % per value column."""
    keys = fit.keys if fit.keys is not None else {fit.x_label: fit.index if fit.index is not None else fit.x}
    columns = list(keys) + [f"observed:{c}" for c in fit.columns]
    if fit.quantiles is not None:
        columns += [f"{q}:{c}" for q in ("q2.5", "median", "q97.5") for c in fit.columns]
    rows = []
    for k in range(len(fit.observed)):
        row: list[Any] = [_plain(v[k]) for v in keys.values()]
        row += [None if math.isnan(v) else float(v) for v in fit.observed[k]]
        if fit.quantiles is not None:
            for q in (0.025, 0.5, 0.975):
                row += [float(v) for v in fit.quantiles[q][k]]
        rows.append(row)
    return Table(title, columns, rows, id=ident)


def section_fit(r: ReportInput) -> Section | None:
    s = Section("fit", "Fit to the data",
                "Observed points (dark) over the simulated median and its 50 % and 95 % bands. " + (r.fit_note + "." if r.fit_note else ""))
    for i, fit in enumerate(r.fits):
        with style.styled():
            png = _png(figures.fit_figure(fit))
        panels = len(fit.panels())
        shown = f" The first {MAX_PANELS} of {panels} panels are drawn." if panels > MAX_PANELS else ""
        gaps = int((~np.isfinite(fit.observed)).sum())
        where = (f"x = {fit.x_label}" + (" (dates)" if fit.dated else "")
                 + ("; one panel per " + " × ".join([k for k in (fit.keys or {}) if k != fit.time_key]
                                                   + (["value column"] if len(fit.columns) > 1 else [])) if panels > 1 else ""))
        caption = (f"Target '{fit.target}' (output '{fit.output}'): {where}."
                   + (f" {gaps} blank cell(s) are ticked at the bottom, with no line through them." if gaps else "")
                   + " Rows absent from the data break the lines." + shown)
        s.figures.append(Figure(f"fit-{i + 1}", f"{fit.target}", caption, png, fit_table(fit, f"Data plotted: {fit.target}", f"data-fit-{i + 1}")))
        if fit.wants_log():
            with style.styled():
                png = _png(figures.fit_figure(fit, log=True))
            s.figures.append(Figure(f"fit-{i + 1}-log", f"{fit.target} (log scale)",
                                    f"The same on a log scale: the values span {DECADES:g} decades or more, "
                                    "so the small counts are unreadable on a linear axis (zeros: linear below 1).", png))
        if fit.before is not None:
            with style.styled():
                made = figures.before_after_figure(fit)
            if made is not None:
                s.figures.append(Figure(f"fit-{i + 1}-before-after", f"{fit.target}: before and after",
                                        f"Dashed: the median of {fit.before[0]}, where the search started; solid: the median of "
                                        f"{fit.label}, where it ended.", _png(made)))
    return s


def section_convergence(r: ReportInput) -> Section | None:
    t = r.table
    with style.styled():
        png = _png(figures.convergence_figure(t))
    coords = len(set(t.coordinator.tolist()))
    return Section("convergence", "Convergence",
                   "Every trial's loss by trial number and the running best (red). A running best that still drops at "
                   "the end means more trials would help; FAIL trials are ticks on the x axis."
                   + (f" {coords} coordinators worked on this study, one colour each." if coords > 1 else ""),
                   [Figure("convergence", "Loss by trial", "Loss by trial number; red: best so far.", png)])


CHI2_1_95_HALF = 3.841458820694124 / 2  # chi-square(1 df) 95 % quantile / 2: a likelihood-ratio interval's loss step


def profile_threshold(job: CalibrationJob | None) -> tuple[float | None, str]:
    """The loss step of an approximate 95 % profile interval, and the sentence saying what it is.

    Only a loss that is a negative log-likelihood (every target a likelihood score or a
    synthetic likelihood, weight 1) has one; for other losses there is none, and the
    sentence says why."""
    if job is None:
        return None, "No interval threshold: the job is not known."
    nll = all(t.score.kind in LIKELIHOOD_SCORES or t.aggregation == "synthetic_likelihood" for t in job.targets)
    unit = all(t.weight == 1 for t in job.targets)
    if nll and unit:
        return CHI2_1_95_HALF, (f"Dotted red: the lowest loss + {CHI2_1_95_HALF:.2f} (χ²(1, 0.95)/2); the shaded bins under it "
                                "read as an approximate 95 % interval of the parameter (likelihood ratio; coarse with few trials).")
    why = "not every target's score is a log-likelihood" if not nll else "targets are weighted (the loss is not one log-likelihood)"
    return None, f"No 95 % interval threshold: {why}, so a loss difference has no χ² reading."


def section_parameters(r: ReportInput) -> Section | None:
    t = r.table
    if not t.params:
        return None
    threshold, threshold_note = profile_threshold(r.job)
    with style.styled():
        traces = _png(figures.traces_figure(t))
        pairs = _png(figures.pairs_figure(t, TOP_FRACTION))
        profiles = _png(figures.profiles_figure(t, threshold))
    return Section("parameters", "Parameters",
                   "Where the search went and what the data pin down.", [
                       Figure("traces", "Traces", "Each parameter's value by trial number, coloured by loss (bright = low). "
                              "Values that settle into a narrow band are well identified.", traces),
                       Figure("pairs", "Pair matrix", "Trials coloured by loss rank (bright = best), the best 10 % circled red, "
                              "the best trial starred. A diagonal ridge of good trials means two parameters trade off "
                              "(e.g. transmission rate against recovery rate).", pairs),
                       Figure("profiles", "1-D profiles", "Best loss reached in bins of each parameter (blue); dashed: the best "
                              "trial. A sharp valley = identified; a flat floor = the data do not constrain it. " + threshold_note, profiles),
                   ])


def section_targets(r: ReportInput) -> Section | None:
    t = r.table
    if not t.targets or not t.complete.any():
        return None
    k = 10
    with style.styled():
        png = _png(figures.per_target_figure(t, k))
    best = t.ranked()[:k]
    names = list(t.targets)
    rows = [[int(t.number[i]), float(t.loss[i]), *[float(t.targets[n][i]) for n in names]] for i in best]
    return Section("targets", "Per-target loss",
                   "Each target's aggregated value for the best trials: the target with the largest share drives the fit.",
                   [Figure("targets", "Per-target loss of the best trials", f"The {len(best)} best trials, best first.", png)],
                   [Table("Best trials by target", ["trial", "loss", *names], rows, id="per-target")])


def section_timeline(r: ReportInput) -> Section | None:
    t = r.table
    ok = np.isfinite(t.start) & np.isfinite(t.end)
    if not ok.any():
        return None
    slots = (r.results or {}).get("slots")
    with style.styled():
        png = _png(figures.timeline_figure(t, slots))
    sp = speedup(t.start, t.end)
    wall = busy_wall(t.start[ok], t.end[ok])
    util = (r.results or {}).get("utilization")
    intro = (f"Effective parallel speedup {_fmt(sp)} (sum of trial durations ÷ wall time {wall:.1f} s)"
             + (f"; slot utilisation {util:.0%} (busy simulation time ÷ slots × wall time, {slots} slots)." if util is not None else "."))
    return Section("timeline", "Timeline and speedup", intro,
                   [Figure("timeline", "Timeline", "Each trial a bar from when it was asked to when it was told (orange: FAIL), rows "
                           "packed per coordinator (row 1 on top); below, trials in flight at once, the same count as the "
                           "facts' 'most trials in flight'. A loop asks its next trial while the last task of its current "
                           "one runs, so up to twice the loops are in flight for a moment. Gaps mean idle slots.", png)])


def fail_key(reason: str) -> str:
    """The grouping key of a failure: its last meaningful line (the exception), without replicate/seed prefixes."""
    lines = [ln.strip() for ln in reason.strip().splitlines() if ln.strip()]
    if not lines:
        return "(no reason recorded)"
    first = lines[0]
    if ": " in first and first.startswith("replicate "):
        first = first.split(": ", 1)[1]
    return first[:200]


def section_failures(r: ReportInput) -> Section | None:
    t = r.table
    failed = [i for i, s in enumerate(t.state) if s == "FAIL"]
    s = Section("failures", "Failures")
    if not failed:
        s.intro = "No trial failed."
        return s
    counts = Counter(fail_key(t.fail_reason[i]) for i in failed)
    with style.styled():
        png = _png(figures.failures_figure(counts))
    s.intro = f"{len(failed)} of {len(t.state)} trials failed."
    s.figures.append(Figure("failures", "Failures by reason", "Failed trials counted by reason.", png))
    s.tables.append(Table("Failures by reason", ["reason", "trials"], [[k, v] for k, v in counts.most_common()], id="failures"))
    first = min(failed, key=lambda i: t.number[i])
    s.pre.append((f"First failure (trial {t.number[first]})", redact(t.fail_reason[first] or "(no reason recorded)")))
    return s


def facts(r: ReportInput) -> list[tuple[str, str, Any]]:
    """(key, label, value) of the run facts; keys are results.json's where it has them."""
    t = r.table
    res = r.results or {}
    ranked = t.ranked()
    ok = np.isfinite(t.start) & np.isfinite(t.end)
    counts = Counter(t.state.tolist())
    wall = res.get("wall_time_s", busy_wall(t.start[ok], t.end[ok]) if ok.any() else None)
    told = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) + counts.get("FAIL", 0)
    rows: list[tuple[str, str, Any]] = [
        ("study", "study", r.study),
        ("storage", "storage", r.storage),
        # The run's reported best (chosen on fresh seeds when re-evaluated, results.json), else the study's lowest loss.
        ("best_loss", "best loss", res["best_loss"] if res.get("best_loss") is not None
         else float(t.loss[ranked[0]]) if len(ranked) else None),
        ("best_trial", "best trial", res["best_trial"] if res.get("best_trial") is not None
         else int(t.number[ranked[0]]) if len(ranked) else None),
        ("trials.total", "trials in the study", len(t.state)),
        ("trials.COMPLETE", "complete", counts.get("COMPLETE", 0)),
        ("trials.FAIL", "failed", counts.get("FAIL", 0)),
        *([("trials.PRUNED", "pruned", counts["PRUNED"])] if counts.get("PRUNED") else []),
        ("trials.RUNNING", "running", counts.get("RUNNING", 0)),
        ("wall_time_s", "wall time (s)", wall),
        ("trials_per_minute", "trials per minute", res.get("trials_per_minute",
                                                           round(60 * told / wall, 2) if wall else None)),
        ("speedup", "effective parallel speedup", res.get("speedup", speedup(t.start, t.end))),
    ]
    if ok.any():
        rows.append(("max_in_flight", "most trials in flight at once", int(in_flight(t.start[ok], t.end[ok])[1].max())))
    for key, label in (("utilization", "slot utilisation"), ("mode", "mode"), ("concurrency", "loops (or batch size)"),
                       ("slots", "simulation slots"), ("stop_reason", "stop reason")):
        if key in res:
            rows.append((key, label, res[key]))
    if res.get("selection"):
        rows.append(("selection.selected_by", "best chosen by", res["selection"].get("selected_by")))
    if "this_run" in res:
        rows.append(("this_run.told", "trials told by the last run", res["this_run"].get("told")))
    return rows


def section_facts(r: ReportInput) -> Section | None:
    rows = facts(r)
    s = Section("facts", "Run facts")
    s.tables.append(Table("Run", ["", "value"], [[label, _fmt(v)] for _, label, v in rows], id="facts",
                          keys=[k for k, _, _ in rows], values=[v for _, _, v in rows]))
    t = r.table
    ranked = t.ranked()
    if len(ranked):
        b = ranked[0]
        prow = []
        for name, values in t.params.items():
            v = values[b]
            shown = t.categories[name][int(v)] if name in t.categories else float(v)
            spec = r.job.parameters.get(name) if r.job else None
            rng = f"{spec.lower:g} .. {spec.upper:g}" + (" (log)" if spec.log else "") if spec and spec.lower is not None else ""
            prow.append([name, _fmt(shown), rng])
        s.tables.append(Table("Best parameters", ["parameter", "value", "range"], prow, id="best-params"))
    import dask
    import matplotlib
    versions = [["modelops-calabaria", __version__], ["optuna", optuna.__version__], ["dask", dask.__version__],
                ["numpy", np.__version__], ["matplotlib", matplotlib.__version__], ["python", platform.python_version()]]
    s.tables.append(Table("Versions (of this report)", ["package", "version"], versions, id="versions"))
    job = dict(r.stored_job)
    job.pop("execution", None)  # a coordinator's settings, possibly with a storage password: never shown
    for spec in job.get("targets", []):
        data = spec.get("data")
        if isinstance(data, dict):
            n = max((len(v) for v in data.values()), default=0)
            spec["data"] = f"<{n} rows: {', '.join(data)}> (see the fit section)"
    s.pre.append(("Job (as stored with the study)", yaml.safe_dump(redact_value(job), sort_keys=False)))
    return s


POSTERIOR_DRAWS = 20  # resampled parameter sets in the predictive figure (x 2 replicates each)


def section_posterior(r: ReportInput) -> Section | None:
    """A posterior run: credible intervals, correlations, weight diagnostics (with a warning banner
    when the sample is not reliable), marginal densities, predictive bands (posterior/section.py)."""
    sample = r.posterior
    if r.job is None or sample is None or not sample.weights.any():
        return None
    made_section = posterior_section(r.job, sample)
    s = Section("posterior", "Posterior", made_section.intro, banners=[made_section.banner_html] if made_section.banner_html else [])
    s.tables += [Table(title, cols, rows, id=tid, keys=keys) for title, cols, rows, tid, keys in made_section.tables]
    with style.styled():
        made = posterior_figures(r.job, sample, predictive_draws=POSTERIOR_DRAWS, replicates=2, seed=r.job.seed)
        for i, (fig, caption) in enumerate(made):
            s.figures.append(Figure(f"posterior-{i + 1}", ("Marginal densities" if i == 0 else "Posterior predictive fit"),
                                    caption, _png(fig)))
    return s


SECTIONS: list[Callable[[ReportInput], Section | None]] = [
    section_fit, section_posterior, section_convergence, section_parameters, section_targets, section_timeline,
    section_failures, section_facts,
]
"""The report's sections, in order; append a function to add one."""


# -- HTML ------------------------------------------------------------------------------------------

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#1f2933;max-width:1000px;margin:0 auto;padding:1.5em;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.1em}h2{font-size:1.25em;border-bottom:2px solid #e4e7eb;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.05em;margin-bottom:.3em}.sub{color:#52606d;margin-top:0}nav a{margin-right:1em;color:#2e86c1}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #e4e7eb}figcaption{color:#52606d;font-size:.92em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}th,td{padding:.25em .7em;border-bottom:1px solid #e4e7eb;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}pre{background:#f5f7fa;padding:.8em;overflow-x:auto;font-size:.82em}
.summary{display:flex;flex-wrap:wrap;gap:1em;margin:1em 0}.summary div{background:#f5f7fa;padding:.5em 1em;border-radius:4px}
.banner{background:#fdf2e9;border-left:4px solid #d35400;padding:.5em 1em;margin:.5em 0}
.summary b{display:block;font-size:1.2em}details{margin:.3em 0 1em}summary{cursor:pointer;color:#2e86c1}
"""


def _cell(v: Any) -> str:
    if v is None:  # a blank observation
        return "<td>-</td>"
    numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
    text = _fmt(v) if numeric else html.escape(str(v))
    return f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>"


def _table_html(t: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = []
    for k, row in enumerate(t.rows):
        attrs = ""
        if t.keys is not None:
            attrs += f' data-key="{html.escape(t.keys[k])}"'
        if t.values is not None:
            attrs += f' data-value="{html.escape(json.dumps(t.values[k], default=str))}"'
        cells = []
        for j, v in enumerate(row):
            cell = _cell(v) if not (j == 0 and t.keys is not None) else f"<th>{html.escape(str(v))}</th>"
            cells.append(cell)
        body.append(f"<tr{attrs}>{''.join(cells)}</tr>")
    ident = f' id="{html.escape(t.id)}"' if t.id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure_files(sections: Sequence[Section]) -> dict[str, bytes]:
    """PNG file name → bytes for every figure (``fig-<section>-<name>.png``)."""
    return {f"fig-{s.id}-{f.name}.png": f.png for s in sections for f in s.figures}


def render_html(r: ReportInput, sections: Sequence[Section]) -> str:
    """The whole report as one HTML document (no script, no external reference)."""
    t = r.table
    best = _fmt(next(v for key, _, v in facts(r) if key == "best_loss"))  # the facts table's, so both agree
    stop = (r.results or {}).get("stop_reason") or ("budget spent" if r.results else "-")
    summary = [("best loss", best), ("trials", str(len(t.state))), ("failed", str(int((t.state == "FAIL").sum()))),
               ("stop", stop)]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">', report_state_tag(r.results),
           f"<title>Calibration report: {html.escape(r.study)}</title><style>{CSS}</style></head><body>",
           f"<h1>Calibration report: {html.escape(r.study)}</h1>",
           f'<p class="sub">{html.escape(r.storage)} · generated {html.escape(r.generated)} · modelops-calabaria {__version__}</p>',
           *[f'<p class="banner" role="alert">{html.escape(w)}</p>' for w in r.warnings],
           '<div class="summary">' + "".join(f"<div>{html.escape(k)}<b>{html.escape(v)}</b></div>" for k, v in summary) + "</div>",
           "<nav>" + "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections) + "</nav>"]
    for s in sections:
        out.append(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>')
        out.extend(s.banners)
        if s.intro:
            out.append(f"<p>{html.escape(s.intro)}</p>")
        for f in s.figures:
            b64 = base64.b64encode(f.png).decode("ascii")
            out.append(f'<figure id="figure-{s.id}-{f.name}"><h3>{html.escape(f.title)}</h3>'
                       f'<img alt="{html.escape(f.title)}" data-file="fig-{s.id}-{f.name}.png" src="data:image/png;base64,{b64}">'
                       f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
            if f.data is not None:
                out.append(f"<details><summary>{html.escape(f.data.title)}</summary>{_table_html(f.data)}</details>")
        for tb in s.tables:
            out.append(f"<h3>{html.escape(tb.title)}</h3>{_table_html(tb)}")
        for title, text in s.pre:
            out.append(f"<h3>{html.escape(title)}</h3><pre>{html.escape(text)}</pre>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)


# -- entry point -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportSource:
    """Where a report reads from and writes to (checked, nothing created)."""

    study: str
    target: StorageTarget
    output: Path
    run_dir: Path | None


def resolve_source(run_dir: Path | None, study: str | None, storage: str | None, output: Path | None) -> ReportSource:
    """Work out study, storage and output from a run directory and/or flags; creates nothing.

    Storage, first found: ``storage``; the run directory's ``study.db``; the environment's
    ``CALABARIA_STORAGE``. The ``storage`` recorded in results.json is never followed: a
    tampered file must not point the report (and its re-simulation) at another database.
    ``output``: a directory (``report.html`` in it) or a ``.html`` file name.

    Raises:
        ConfigurationError: no such run directory, no study name, an output that cannot be written.
    """
    results: dict[str, Any] = {}
    if run_dir is not None:
        if not run_dir.is_dir():
            raise ConfigurationError(f"run directory {run_dir} does not exist" if not run_dir.exists() else f"{run_dir} is not a directory",
                                     hint="pass the run directory of a calibration (e.g. runs/seir-demo), or --study NAME --storage URL")
        results = read_results(run_dir) or {}
        study = study or results.get("study")
        if study is None:
            raise ConfigurationError(f"{run_dir} holds no results.json naming its study", hint="pass --study NAME")
        if not storage:  # the run directory's own study, never an address results.json names
            db = run_dir / "study.db"
            if db.exists():
                storage = str(db)
            elif not os.environ.get("CALABARIA_STORAGE"):
                raise ConfigurationError(f"{run_dir} holds no study.db: its study is in a database",
                                         hint="pass that database with --storage URL (or CALABARIA_STORAGE)")
    storage = storage or os.environ.get("CALABARIA_STORAGE")
    if not study:
        raise ConfigurationError("no study to report on", hint="pass a run directory, or --study NAME --storage URL")
    if not storage:
        raise ConfigurationError("no storage URL given", hint="pass --storage or set CALABARIA_STORAGE")
    target = parse_storage_url(storage)
    out = output or (run_dir or Path("runs") / study) / "report.html"
    from modelops_calabaria.outputs import check_output_dir, check_output_file

    if out.is_dir() or out.suffix.lower() != ".html" and not os.path.lexists(out):
        check_output_dir(out, "report")  # a directory: report.html in it
        out = out / "report.html"
    out = check_output_file(out, "report", ".html")  # never over a device, FIFO, link or other file
    return ReportSource(study, target, out, run_dir)


def read_results(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "results.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


def build_input(src: ReportSource, *, scheduler: str | None = None, local_workers: int | None = None,
                replicates: int | None = None, simulate: bool = True) -> ReportInput:
    """Read the study (and results.json) and re-simulate the best trial."""
    trials, stored, minimize, stored_best = load_study(src.study, src.target)
    job = None
    if stored:
        try:
            job = job_from_dict(stored, source=f"job stored with study '{src.study}'")
        except Exception as e:  # noqa: BLE001 - a job from another version: report what can be reported
            log.warning("the stored job does not validate; the fit section is left out", error=str(e).splitlines()[0])
    table = trial_table(trials, minimize)
    r = ReportInput(src.study, src.target.display, job, stored, trials, table,
                    read_results(src.run_dir) if src.run_dir else None, src.run_dir,
                    generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    reported = _reported_best(trials, stored_best, minimize)
    if r.results is None and reported is not None:  # a study without a run directory: its best as every command names it
        r.results = {"best_trial": reported, "best_loss": float(trials.value[list(trials.number).index(reported)])}
    if job is not None:
        if simulate:
            r.fits, r.fit_note = refit(job, table, trials, scheduler=scheduler, local_workers=local_workers, replicates=replicates,
                                       reported=reported)
        else:
            r.fits, r.fit_note = refit(job, table, trials, scheduler=scheduler, local_workers=local_workers, replicates=0)
        if job.posterior is not None:
            r.posterior = _posterior_sample(src, job)
            # The sample's trust problems go to the top of the page too, not only to its section.
            r.warnings.extend(f"Posterior: {w}" for w in posterior_section(job, r.posterior).summary.get("warnings", []))
    return r


def _reported_best(trials: TrialColumns, stored_best: Any, minimize: bool) -> int | None:
    """The study's best trial, as every command names it (reporting/best.py); None without one."""
    best, _ = study_best(rows_of(trials.number, trials.state, trials.value), stored_best, maximize=not minimize)
    return best.number if best is not None else None


def _posterior_sample(src: ReportSource, job: CalibrationJob) -> WeightedSample:
    """The weighted sample of a posterior study (read only)."""
    store = open_store(src.target, read_only=True)
    try:
        return study_sample(job, store, store.study_id(src.study))
    finally:
        store.close()


def write_report(src: ReportSource, r: ReportInput) -> Path:
    """Render every section; write the HTML file and the PNGs beside it; return the HTML path."""
    sections = [s for s in (build(r) for build in SECTIONS) if s is not None]
    src.output.parent.mkdir(parents=True, exist_ok=True)
    for name, png in figure_files(sections).items():
        _atomic(src.output.parent / name, png)
    _atomic(src.output, render_html(r, sections).encode("utf-8"))
    return src.output


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def make_report(run_dir: Path | None = None, *, study: str | None = None, storage: str | None = None,
                output: Path | None = None, scheduler: str | None = None, local_workers: int | None = None,
                replicates: int | None = None, simulate: bool = True) -> Path:
    """Write the report of a run directory or a study; return the path of ``report.html``.

    Raises:
        ConfigurationError: bad run directory, storage URL or output (nothing written).
        StudyNotFoundError: the study does not exist.
        ServiceUnavailableError: the database cannot be reached.
    """
    src = resolve_source(run_dir, study, storage, output)
    r = build_input(src, scheduler=scheduler, local_workers=local_workers, replicates=replicates, simulate=simulate)
    return write_report(src, r)
