"""How long `calabaria report` takes on a large study, re-simulation excluded.

Creates (once; reused by name afterwards) a study of ``--trials`` finished trials
in the given storage through Optuna's public API: two parameters, per-target
values, four coordinators, start/end times as if 16 loops had run them, ~3 %
FAIL with a reason; then times reading the study, drawing every section and
writing report.html + PNGs, several times: wall and CPU seconds (this process),
and the load average before and after (the machine may be shared).

    .venv/bin/python benchmarks/report.py --storage postgresql://postgres@127.0.0.1:5432/test --trials 10000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import quiet_logging  # noqa: E402

from modelops_calabaria.calibration.study import COORDINATOR_ATTR, FAIL_REASON, JOB_ATTR, TARGETS_ATTR  # noqa: E402
from modelops_calabaria.job import load_job  # noqa: E402
from modelops_calabaria.reporting.report import build_input, resolve_source, write_report  # noqa: E402
from modelops_calabaria.backend.factory import open_optuna_storage  # noqa: E402
from modelops_calabaria.storage import parse_storage_url  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def stored_job(study: str) -> dict:
    from modelops_calabaria.calibration.runner import prepare, storable_job
    from modelops_calabaria.settings import Settings

    job = load_job(ROOT / "examples" / "seir" / "job.yaml")
    data = job.to_storable()
    data["study"] = study
    from modelops_calabaria.job import job_from_dict

    job = job_from_dict(data, base_dir=ROOT / "examples" / "seir")
    return storable_job(prepare(job, Settings(storage="memory"), Path(tempfile.mkdtemp())))


def make_study(url: str, name: str, n: int, seed: int = 0) -> None:
    target = parse_storage_url(url)
    storage = open_optuna_storage(target, 8)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        have = len(study.get_trials(deepcopy=False))
        print(f"reusing study {name} ({have} trials)", file=sys.stderr)
        if have >= n:
            return
    except KeyError:
        study = optuna.create_study(study_name=name, storage=storage)
        storage.set_study_system_attr(study._study_id, JOB_ATTR, json.dumps(stored_job(name)))
        have = 0
    rng = np.random.default_rng(seed)
    t0 = dt.datetime(2026, 11, 1, 12, 0, 0)
    dists = {"beta": FloatDistribution(0.2, 1.2), "reporting_rate": FloatDistribution(0.05, 0.9)}
    free = np.zeros(16)  # 16 loops, 4 coordinators
    trials = []
    for i in range(n):
        loop = int(np.argmin(free))
        start = free[loop] + rng.exponential(0.02)
        duration = rng.lognormal(np.log(0.5), 0.4)
        free[loop] = start + duration
        beta, rate = rng.uniform(0.2, 1.2), rng.uniform(0.05, 0.9)
        loss = 1000 + 1e6 * ((beta - 0.55) ** 2 + (rate - 0.3) ** 2) * rng.lognormal(0, 0.3)
        failed = rng.random() < 0.03
        trials.append(create_trial(
            state=TrialState.FAIL if failed else TrialState.COMPLETE,
            value=None if failed else float(loss),
            params={"beta": beta, "reporting_rate": rate}, distributions=dists,
            user_attrs={FAIL_REASON: f"replicate 0 (seed 1): ValueError: bad value {i % 3}\nTraceback ..."} if failed
            else {TARGETS_ATTR: {"weekly_cases": float(loss)}},
            system_attrs={COORDINATOR_ATTR: f"host-{loop % 4}-{1000 + loop % 4}"},
        ))
        trials[-1].datetime_start = t0 + dt.timedelta(seconds=float(start))
        trials[-1].datetime_complete = t0 + dt.timedelta(seconds=float(free[loop]))
    trials = trials[have:]  # an interrupted creation is completed, not restarted
    started = time.perf_counter()
    chunks = [trials[k::8] for k in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(study.add_trials, chunks))
    print(f"created {len(trials)} trials in {time.perf_counter() - started:.1f} s", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", required=True)
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--study", default=None, help="default: bench-report-<trials>")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args()
    quiet_logging()
    name = args.study or f"bench-report-{args.trials}"
    make_study(args.storage, name, args.trials)
    out = args.output or Path(tempfile.mkdtemp()) / "report.html"
    times: dict[str, list[float]] = {k: [] for k in ("read", "render_and_write", "total", "read_cpu", "render_and_write_cpu",
                                                     "total_cpu")}
    load = os.getloadavg()
    for _ in range(args.repeat):
        t, c = time.perf_counter(), time.process_time()
        src = resolve_source(None, name, args.storage, out)
        r = build_input(src, replicates=0)
        t_read, c_read = time.perf_counter(), time.process_time()
        write_report(src, r)
        t_end, c_end = time.perf_counter(), time.process_time()
        for key, value in (("read", t_read - t), ("render_and_write", t_end - t_read), ("total", t_end - t),
                           ("read_cpu", c_read - c), ("render_and_write_cpu", c_end - c_read), ("total_cpu", c_end - c)):
            times[key].append(value)
    result = {"trials": len(r.table.number), "report": str(out), "size_bytes": out.stat().st_size,
              **{f"{k}_s_median": round(statistics.median(v), 2) for k, v in times.items()},
              "total_s_all": [round(x, 2) for x in times["total"]],
              "load_average_before": [round(x, 2) for x in load],
              "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
