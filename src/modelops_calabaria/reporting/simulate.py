"""``calabaria simulate``: run a job's model once, outputs to CSV."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from modelops_calabaria.errors import ConfigurationError, JobSpecError
from modelops_calabaria.job import CalibrationJob, ParameterSpec, load_job
from modelops_calabaria.models import canonical_ref, load_model


def middle(spec: ParameterSpec) -> Any:
    """The middle of a parameter's range (geometric for log scale; first choice if categorical)."""
    if spec.kind == "categorical":
        return (spec.choices or [None])[0]
    lo, hi = float(spec.lower), float(spec.upper)  # type: ignore[arg-type]
    mid = math.sqrt(lo * hi) if spec.log else (lo + hi) / 2
    return int(round(mid)) if spec.kind == "int" else mid


def parse_params(job: CalibrationJob, items: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` strings → parameter values; others take the middle of their range."""
    params = {name: middle(spec) for name, spec in job.parameters.items()}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise ConfigurationError(f"--param {item!r}: expected NAME=VALUE")
        if name not in job.parameters and name not in job.fixed:
            raise ConfigurationError(f"--param {name}: not a parameter of this job",
                                     hint=f"parameters: {', '.join(job.parameters)}; fixed: {', '.join(job.fixed) or '-'}")
        spec = job.parameters.get(name)
        try:
            params[name] = raw if spec is not None and spec.kind == "categorical" else float(raw)
        except ValueError:
            raise ConfigurationError(f"--param {name}: {raw!r} is not a number") from None
        if spec is not None and spec.kind == "int":
            params[name] = int(params[name])
    return params


def simulate_once(job_file: Path, items: list[str], seed: int, out_dir: Path) -> list[Path]:
    """Run the model once and write ``<output>.csv`` files; return their paths."""
    job = load_job(job_file)
    model = load_model(canonical_ref(job.model, job.base_dir))
    params = parse_params(job, items)
    try:
        outputs = model.run({**job.fixed, **params}, seed)
    except Exception as e:  # noqa: BLE001 - the user's model failed: report it, no traceback dump
        raise JobSpecError(f"model {job.model} raised {type(e).__name__}: {e} with parameters {params}") from e
    arrays = {name: np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=float) for name, v in outputs.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, arr in arrays.items():
        arr2 = arr.reshape(-1, 1) if arr.ndim <= 1 else arr.reshape(arr.shape[0], -1)
        path = out_dir / f"{name}.csv"
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["index", *(["value"] if arr2.shape[1] == 1 else [f"value_{j}" for j in range(arr2.shape[1])])])
            for i, row in enumerate(arr2):
                w.writerow([i, *row.tolist()])
        written.append(path)
    return written
