"""The feature matrix: every command × every target form × every model output form.

The cases are generated, not listed: :data:`TARGET_FORMS` (how the data are keyed
and scored), :data:`OUTPUT_FORMS` (what the model returns, tests/support/forms.py)
and :data:`COMMANDS` are crossed in code.

- Every (target form, output form) pair the output form can express is calibrated
  once, through the real CLI in a subprocess on the real Dask cluster of the
  ``scheduler`` fixture (tiny budgets); a pair it cannot express must be refused by
  ``validate`` in one line, exit 2.
- Every command runs on every target form, on that form's *lead* pair (the first
  compatible output form, rotated over the target forms so that every output form
  leads somewhere): ``validate``, ``calibrate`` with its report (opened in headless
  Chromium), ``report``, ``simulate --best/--params/--plot``, ``status``, ``worker``.

The data are drawn from tests/support/forms.py's model at known parameters
(``forms.TRUE``), written as real CSV / Parquet files. Adding a form to one of the
lists adds its cases. Failures owned elsewhere are ``xfail(strict=True)`` with the
owning area named (:data:`KNOWN`).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "tests" / "support"
sys.path.insert(0, str(SUPPORT))
import forms  # noqa: E402

CLI = [sys.executable, "-m", "modelops_calabaria"]
OUTPUT_FORMS = forms.OUTPUT_FORMS
COMMANDS = ("validate", "calibrate", "report", "simulate_best", "simulate_params", "status", "worker")


@dataclass(frozen=True)
class TargetForm:
    """One way of keying and scoring observed admissions, and what the model must return for it.

    grain/time/groups/columns: the model's output (forms.long_table); ``target``: the
    job's target fields besides name/output/data; ``observe``: how the observed table
    is drawn from the truth; ``fmt``: csv or parquet.
    """

    name: str
    grain: str
    time: str
    groups: tuple[str, ...] = ()
    columns: tuple[str, ...] = ("admissions",)
    target: dict[str, Any] = field(default_factory=dict)
    observe: str = "same"  # same | shift+2 | shift+3 | shift-3 | weekly_sum
    blanks: tuple[int, ...] = ()  # weeks with blank cells
    late: int = 0  # the 0-17 group is reported from this week on (absent rows before)
    fmt: str = "csv"
    extra_target: bool = False  # a second target (65+ only, sse, weight 0.01) on the same output

    @property
    def keyed(self) -> bool:
        return "on" in self.target


NB = {"kind": "negbin_nll", "dispersion": 20}
TARGET_FORMS = (
    TargetForm("rows", "weekly", "row", target={"index_column": "week", "score": "poisson_nll"}),
    TargetForm("rows_wide", "weekly", "row", columns=tuple(forms.AGES), target={"index_column": "week", "score": "poisson_nll"}),
    TargetForm("exact", "weekly", "week", ("age_group",), target={"on": ["week", "age_group"], "match": "exact", "score": "poisson_nll"}),
    *(TargetForm(f"asof_{m}", "weekly", "date", target={"on": ["date"], "match": m, "score": "poisson_nll"}, observe=shift)
      for m, shift in (("nearest", "shift+2"), ("backward", "shift+3"), ("forward", "shift-3"))),
    TargetForm("accumulate", "daily", "day", ("age_group",), observe="weekly_sum",
               target={"on": ["date", "age_group"], "match": "accumulate", "start_date": "2024-01-01", "score": NB}),
    TargetForm("several_keys", "weekly", "date", ("age_group", "region"),
               target={"on": ["date", "age_group", "region"], "score": "poisson_nll"}),
    TargetForm("blanks", "weekly", "week", ("age_group",), blanks=(7, 12, 20),
               target={"on": ["week", "age_group"], "score": "poisson_nll"}),
    TargetForm("late_group", "daily", "day", ("age_group",), observe="weekly_sum", blanks=(9, 15, 22), late=5,
               target={"on": ["date", "age_group"], "match": "accumulate", "start_date": "2024-01-01", "score": NB}),
    TargetForm("parquet", "weekly", "week", ("age_group",), fmt="parquet",
               target={"on": ["week", "age_group"], "score": "poisson_nll"}),
    TargetForm("several_targets", "weekly", "week", ("age_group",), extra_target=True,
               target={"on": ["week", "age_group"], "score": "poisson_nll", "weight": 1.0}),
)


def compatible(t: TargetForm, output: str) -> bool:
    """Whether an output form can carry what target form ``t`` needs."""
    if output == "array1d":
        return not t.keyed and len(t.columns) == 1
    if output == "array2d":
        return not t.keyed
    if output == "mapping":
        return t.keyed
    if output == "frame_dates":  # dates (or day numbers shown as dates) as the index; by row without keys
        return t.time in ("date", "day") or not t.keyed
    if output == "frame_multiindex":
        return t.keyed and bool(t.groups)
    raise ValueError(output)


PAIRS = [(t, o) for t in TARGET_FORMS for o in OUTPUT_FORMS if compatible(t, o)]
REFUSED = [(t, o) for t in TARGET_FORMS for o in OUTPUT_FORMS if not compatible(t, o)]


def _leads() -> dict[str, str]:
    """The output form each target form's commands run on: the compatible form used least
    so far (ties: list order), so that the lead pairs together use every output form."""
    used = dict.fromkeys(OUTPUT_FORMS, 0)
    leads = {}
    for t in TARGET_FORMS:
        options = [o for o in OUTPUT_FORMS if compatible(t, o)]
        pick = min(options, key=lambda o: (used[o], OUTPUT_FORMS.index(o)))
        used[pick] += 1
        leads[t.name] = pick
    return leads


LEADS = _leads()


def lead_output(t: TargetForm) -> str:
    return LEADS[t.name]


def test_the_design_covers_every_form_and_command():
    """Generated from the lists: every target form has a pair, every output form is used,
    and every output form leads (runs every command) on some target form."""
    assert {t.name for t, _ in PAIRS} == {t.name for t in TARGET_FORMS}
    assert {o for _, o in PAIRS} == set(OUTPUT_FORMS)
    assert {lead_output(t) for t in TARGET_FORMS} == set(OUTPUT_FORMS)
    assert len(PAIRS) + len(REFUSED) == len(TARGET_FORMS) * len(OUTPUT_FORMS)


# -- data and jobs -------------------------------------------------------------------------------

DATA_SEED = 11


def _week_of(t: TargetForm, keys: dict[str, np.ndarray]) -> np.ndarray:
    first = next(iter(keys.values()))
    if np.issubdtype(first.dtype, np.datetime64):
        return ((first - forms.START).astype(int) - 6) // 7
    return first.astype(int)


def observed(t: TargetForm) -> dict[str, list]:
    """The observed table of target form ``t``: a Poisson draw around the truth, as file columns."""
    time = "date" if t.time in ("date", "day") else ("week" if t.time == "week" else "row")
    keys, values = forms.long_table(forms.TRUE, DATA_SEED, grain="weekly", time=time, groups=t.groups, columns=t.columns)
    week = _week_of(t, keys)
    name = next(iter(keys))
    if t.observe.startswith("shift"):
        keys[name] = keys[name] + int(t.observe[5:])
    keep = np.ones(len(week), dtype=bool)
    if t.late:
        keep &= ~((keys.get("age_group", np.array([""] * len(week))) == "0-17") & (week < t.late))
    table: dict[str, list] = {}
    for k, v in keys.items():
        table[k] = [str(x) if np.issubdtype(v.dtype, np.datetime64) else (int(x) if k in ("week", "date") else x)
                    for x in v[keep]]
    blank = np.isin(week, t.blanks)[keep]
    for c, v in values.items():
        table[c] = [None if b else int(x) for x, b in zip(v[keep], blank)]
    return table


def write_table(table: dict[str, list], path: Path) -> None:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(table), path)
        return
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(table))
        for row in zip(*table.values()):
            w.writerow(["" if v is None else v for v in row])


def write_job(t: TargetForm, output: str, folder: Path, study: str) -> Path:
    """Data file(s) and job.yaml of one (target form, output form) pair in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    table = observed(t)
    data = folder / f"admissions.{t.fmt}"
    write_table(table, data)
    target = {"name": "admissions", "output": "admissions", "data": data.name, **t.target}
    targets = [target]
    if t.extra_target:
        older = {k: [v for v, a in zip(col, table["age_group"]) if a == "65+"] for k, col in table.items()}
        write_table(older, folder / "older.csv")
        targets.append({"name": "older", "output": "admissions", "data": "older.csv", "on": t.target["on"],
                        "value_columns": ["admissions"], "score": "sse", "weight": 0.01, "aggregation": "mean_of_scores"})
    job = {
        "study": study, "model": f"{SUPPORT / 'forms.py'}:model",
        "parameters": {k: {"lower": lo, "upper": hi} for k, (lo, hi) in forms.RANGES.items()},
        "fixed": {"grain": t.grain, "time": t.time, "groups": ",".join(t.groups), "columns": ",".join(t.columns), "form": output},
        "targets": targets, "n_replicates": 2, "max_trials": 6, "seed": 5, "sampler": "random",
        "start": [{"scale": 20.0, "peak": 80.0}], "report": {"replicates": 3, "others": 1},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def cli(*args: str, timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, **kw)
