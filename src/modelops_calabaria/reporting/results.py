"""Results files of a run directory: best.yaml, results.json, trials.csv.

Written whole or not at all: every file is first written to a temporary name;
only when all of them are written are they renamed into place. If anything
fails (a full disk, a read-only directory), the temporary files and the
previous run's results files are removed, so no result of an older run is left
looking current, and :class:`~modelops_calabaria.errors.ResultsWriteError`
says so in one line. Nothing here contains a storage password.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from modelops_calabaria.backend.base import FAIL_REASON, TARGETS_ATTR
from modelops_calabaria.errors import ResultsWriteError
from modelops_calabaria.outcome import RunResult
from modelops_calabaria.redaction import redact_value
from modelops_calabaria.reporting.timing import speedup, trial_intervals


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial, or None."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not complete:
        return None
    pick = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
    return pick(complete, key=lambda t: t.value)  # type: ignore[arg-type, return-value]


def state_counts(trials: list[FrozenTrial]) -> dict[str, int]:
    counts = Counter(t.state.name for t in trials)
    return {s.name: counts.get(s.name, 0) for s in TrialState} | {"total": len(trials)}


RESULT_FILES = ("best.yaml", "results.json", "trials.csv")
REPORT_STATE_META = "calabaria-study-state"  # report.html's record of the results.json it was made from
_REPORT_HEAD_BYTES = 4096


def current_result(out_dir: Path, state_key: str) -> RunResult | None:
    """The run's result as ``out_dir`` holds it, if every results file is there and
    results.json was written for a study with ``state_key``; else None (unreadable
    files count as absent: the caller writes them again)."""
    if not all((out_dir / name).is_file() for name in RESULT_FILES):
        return None
    try:
        data = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("study_state") != state_key:
            return None
        if data.get("posterior") is not None and not (out_dir / "posterior.csv").is_file():
            return None  # a posterior run's sample is one of its outputs
        result = RunResult.from_json(data)
    except (OSError, ValueError, TypeError):
        return None
    result.output_dir = str(out_dir)
    return result


def report_state_tag(results: dict[str, Any] | None) -> str:
    """The ``<meta>`` that records which results a report was made from ("" without a key)."""
    key = (results or {}).get("study_state")
    return f'<meta name="{REPORT_STATE_META}" content="{key}">' if isinstance(key, str) and key.isalnum() else ""


def report_is_current(report: Path, state_key: str | None) -> bool:
    """Whether ``report`` was made from results written under ``state_key`` (read from its head)."""
    if not state_key:
        return False
    try:
        with open(report, "rb") as fh:
            head = fh.read(_REPORT_HEAD_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return False
    return f'<meta name="{REPORT_STATE_META}" content="{state_key}">' in head


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        pass  # best effort: the error that got us here is the one reported


def write_files(out_dir: Path, files: dict[str, str]) -> None:
    """Write ``{name: text}`` into ``out_dir``: all of them, or none (and none of their old versions).

    Raises:
        ResultsWriteError: a write or rename failed; the message names the directory and the cause.
    """
    tmps = {name: out_dir / f".{name}.tmp{os.getpid()}" for name in files}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            with open(tmps[name], "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        for name in files:  # never a mix of this run's files and an older run's
            _unlink(out_dir / name)
        for name in files:
            os.replace(tmps[name], out_dir / name)
    except OSError as e:
        for name in files:
            _unlink(tmps[name])
            _unlink(out_dir / name)  # an older run's file (or one just renamed) would look current
        raise ResultsWriteError(
            f"cannot write the results to {out_dir}: {e.strerror or e}; no results file was left there",
            hint="free space (or fix the permissions) and run the same command again: the study holds every trial",
        ) from None


def trials_csv(trials: list[FrozenTrial]) -> str:
    """One row per trial: number, state, loss, duration, parameters, per-target values (``loss:<target>``), fail reason."""
    params = sorted({k for t in trials for k in t.params})
    targets = sorted({k for t in trials for k in t.user_attrs.get(TARGETS_ATTR, {})})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["number", "state", "loss", "duration_s", *params, *[f"loss:{k}" for k in targets], "fail_reason"])
    for t in sorted(trials, key=lambda t: t.number):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else ""
        reason = str(t.user_attrs.get(FAIL_REASON, "")).strip().splitlines()
        w.writerow([
            t.number, t.state.name, "" if t.value is None else repr(float(t.value)), duration,
            *[t.params.get(p, "") for p in params], *[t.user_attrs.get(TARGETS_ATTR, {}).get(k, "") for k in targets],
            reason[0] if reason else "",
        ])
    return buf.getvalue()


def write_results(out_dir: Path, result: RunResult, trials: list[FrozenTrial]) -> None:
    """Write best.yaml, results.json and trials.csv into ``out_dir`` (all or none; see the module)."""
    best = {
        "study": result.study,
        "best_trial": result.best_trial,
        "best_loss": result.best_loss,
        "best_params": result.best_params,
        "targets": result.best_targets,
    }
    if result.selection is not None:  # the best chosen on fresh seeds (calibration/reevaluate.py)
        sel = result.selection
        best.update(selected_by=sel["selected_by"], reevaluated_loss=sel.get("reevaluated_loss"),
                    in_sample_best=sel["in_sample_best"],
                    reevaluated=[{k: c[k] for k in ("trial", "in_sample_loss", "loss", "params") if k in c} for c in sel["reevaluated"]])
    data = result.to_json()
    # Sum of trial durations / wall time over the whole study (the report's timeline says the same).
    sp = speedup(*trial_intervals(trials))
    data["speedup"] = None if sp is None else round(sp, 4)
    write_files(out_dir, {
        "best.yaml": yaml.safe_dump(redact_value(best), sort_keys=False),
        "results.json": json.dumps(data, indent=2, default=str) + "\n",
        "trials.csv": trials_csv(trials),
    })

