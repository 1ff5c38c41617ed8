"""Results files of a run directory: best.yaml, results.json, trials.csv.

Each file is written to a temporary name and renamed, so a reader never sees
half a file. Nothing here contains a storage password.
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
from modelops_calabaria.outcome import RunResult
from modelops_calabaria.redaction import redact_value


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


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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
    """Write best.yaml, results.json and trials.csv into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
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
    _atomic_write(out_dir / "best.yaml", yaml.safe_dump(redact_value(best), sort_keys=False))
    _atomic_write(out_dir / "results.json", json.dumps(result.to_json(), indent=2, default=str) + "\n")
    _atomic_write(out_dir / "trials.csv", trials_csv(trials))

