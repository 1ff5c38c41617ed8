"""Shared pieces of the benchmark scripts: jobs, clusters, logging, numbers.

Everything here goes through the service's public API (``run_calibration``,
``Settings``, ``job_from_dict``); nothing in ``src/`` is modified.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from modelops_calabaria.job import CalibrationJob, job_from_dict
from modelops_calabaria.logging import configure_logging
from modelops_calabaria.redaction import redact

HERE = Path(__file__).resolve().parent
SYNTHETIC = HERE / "synthetic.py"


def quiet_logging() -> None:
    """JSON logs at WARNING only, on stderr: no per-trial lines, the table stays readable."""
    configure_logging("json", level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("distributed").setLevel(logging.ERROR)


def entrypoint(model: str) -> str:
    return f"{SYNTHETIC}:{model}"


def study_name(prefix: str) -> str:
    """A study name unique per run (several runs share one database)."""
    return f"bench-{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def make_job(*, study: str, model: str, trials: int, replicates: int, concurrency: int | None,
             mean_sim: float, seed: int) -> CalibrationJob:
    """The benchmark job: x0, x1 in [0, 1], observed y = [1, 2, 3], sse, TPE (service defaults but the ramp: off)."""
    return job_from_dict({
        "study": study,
        "model": entrypoint(model),
        "parameters": {"x0": {"lower": 0.0, "upper": 1.0}, "x1": {"lower": 0.0, "upper": 1.0}},
        "fixed": {"mean_sim": mean_sim},
        "targets": [{"name": "y", "output": "y", "data": {"index": [0, 1, 2], "y": [1.0, 2.0, 3.0]},
                     "index_column": "index", "score": "sse"}],
        "n_replicates": replicates,
        "max_trials": trials,
        "concurrency": concurrency,
        "seed": seed,
        # A benchmark must not stop early: only the budget ends it.
        "stop": {"max_consecutive_failures": max(25, trials)},
        # These benchmarks measure how busy and how fast the engine is. The ramp (on by default
        # for TPE) holds trials back early in a run on purpose, for sample quality
        # (docs/quality.md): it would be measured instead.
        "ramp": "off",
    }, source="benchmark job", base_dir=HERE)


def parse_setting_overrides(values: Sequence[str] | None) -> dict[str, str]:
    """``--setting KEY=VALUE`` flags: extra ``Settings`` fields (pydantic converts the strings)."""
    out: dict[str, str] = {}
    for v in values or []:
        key, sep, value = v.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--setting expects KEY=VALUE, got {v!r}")
        out[key.strip()] = value.strip()
    return out


def make_settings(*, parallel: bool, storage: str, scheduler: str, overrides: dict[str, str]) -> Any:
    """The run's Settings, built as the brief says, plus any ``--setting`` overrides."""
    from modelops_calabaria import Settings

    fields = {"parallel_trials": parallel, "storage": storage, "scheduler": scheduler, "log_format": "json", **overrides}
    unknown = sorted(set(overrides) - set(Settings.model_fields))
    if unknown:
        raise SystemExit(f"--setting: unknown Settings field(s) {', '.join(unknown)}; known: {', '.join(Settings.model_fields)}")
    return Settings(**fields)


def settings_record(settings: Any) -> dict[str, Any]:
    """The settings a run used, for the JSON (storage password masked, scheduler address dropped)."""
    from modelops_calabaria.redaction import redact_value

    data = settings.model_dump(mode="json")
    data.pop("scheduler", None)
    return redact_value(data)


def storage_list(values: Sequence[str]) -> list[str]:
    """``--storage`` given several times and/or as comma lists, in order, without repeats."""
    out: list[str] = []
    for v in values:
        for s in v.split(","):
            s = s.strip()
            if s and s not in out:
                out.append(s)
    return out


def storage_kind(url: str) -> str:
    from modelops_calabaria.storage import parse_storage_url
    return parse_storage_url(url).kind


def masked(url: str) -> str:
    return redact(url)


@contextlib.contextmanager
def local_cluster(*, scheduler: str | None, n_workers: int, threads_per_worker: int,
                  processes: bool = True) -> Iterator[str]:
    """Yield a scheduler address: ``scheduler`` as given (``inline`` too), or a LocalCluster started (and closed) here."""
    if scheduler:
        yield scheduler
        return
    import warnings

    from distributed import LocalCluster

    # dashboard_address=None still starts the scheduler's HTTP server, on 8787 or a random
    # port when 8787 is taken (another cluster on the machine): harmless, not worth a warning.
    warnings.filterwarnings("ignore", message=r"Port \d+ is already in use")
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=processes,
                           dashboard_address=None, silence_logs=logging.ERROR)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close(timeout=20)


def warm_up(address: str, model: str, overrides: dict[str, str] | None = None) -> int:
    """Import the model (and the service) on every worker before timing; return the cluster's slots
    (with ``inline``: the ``local_workers`` override, else the cores, as the service counts them)."""
    from distributed import Client

    from modelops_calabaria.models import load_model

    ref = entrypoint(model)
    load_model(ref)  # the coordinator loads it too (run_calibration checks the job locally)
    if address == "inline":  # no Dask: replicates run on the coordinator's threads
        return int((overrides or {}).get("local_workers") or os.cpu_count() or 1)
    with Client(address, set_as_default=False, timeout="20s") as client:
        # exec returns None: the LoadedModel itself cannot travel back (its module is
        # registered under a per-process name on each worker).
        client.run(exec, f"from modelops_calabaria.models import load_model; load_model({ref!r})")
        return sum(client.nthreads().values())


def pct(values: Sequence[float], q: float) -> float | None:
    """Inclusive percentile (as the service computes its own), rounded to 0.001 ms."""
    v = [float(x) for x in values]
    if not v:
        return None
    if len(v) == 1:
        return round(v[0], 3)
    return round(statistics.quantiles(v, n=100, method="inclusive")[int(q) - 1], 3)


def machine() -> dict[str, Any]:
    """What the numbers were measured on (other work on the machine skews them: see load)."""
    import distributed
    import optuna

    load1, load5, _ = os.getloadavg()
    return {"cpus": os.cpu_count(), "loadavg_1m": round(load1, 2), "loadavg_5m": round(load5, 2),
            "python": sys.version.split()[0], "optuna": optuna.__version__, "distributed": distributed.__version__,
            **source_version()}


def source_version() -> dict[str, Any]:
    """The commit of the code measured, and whether src/ had uncommitted changes."""
    import subprocess

    root = HERE.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit or None, "src_dirty": bool(dirty)}


def fmt(x: Any, spec: str = ".1f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return "-"
    return format(x, spec)


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]], file: Any = None) -> None:
    """Print ``rows`` as a fixed-width table: ``columns`` = (key, header, format spec)."""
    file = file or sys.stdout
    cells = [[h for _, h, _ in columns]] + [[fmt(r.get(k), f) if f else str(r.get(k, "-")) for k, _, f in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))), file=file)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=file)
