"""Cost of aligning one replicate's output to 10,000 observed rows, per match kind.

Hand-run, prints a table (nothing asserts). What a worker pays per replicate:
normalising the output table, matching keys (or reusing the cached row indices
when the output's key columns are the same as last time) and picking / summing
the values; then the score. ``first`` is a fresh target (no cache), ``repeat``
the steady state.

    .venv/bin/python benchmarks/alignment.py [--rows 10000] [--repeat 200]
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time
from pathlib import Path

import numpy as np

from modelops_calabaria.job import TargetSpec
from modelops_calabaria.targets.data import load_observed
from modelops_calabaria.targets.evaluate import CompiledTarget, _aligner

AGES = ["0-4", "5-17", "18-49", "50-64", "65+"]
REGIONS = [f"r{i:02d}" for i in range(20)]


def _target(data: dict, **spec) -> CompiledTarget:
    t = TargetSpec.model_validate({"name": "t", "output": "x", "data": data, "score": "poisson_nll", **spec})
    obs = load_observed(t, Path.cwd(), "targets[0].data")
    return CompiledTarget(t.name, t.output, obs, t.score, t.aggregation, t.weight, _aligner(t, obs))


def cases(rows: int) -> dict[str, tuple[CompiledTarget, dict]]:
    rng = np.random.default_rng(0)
    start = np.datetime64("2020-01-05")
    # exact on week x age group x region: rows // 100 weeks x 5 x 20
    weeks = rows // (len(AGES) * len(REGIONS))
    w, a, r = np.meshgrid(np.arange(weeks), np.arange(len(AGES)), np.arange(len(REGIONS)), indexing="ij")
    exact_data = {"week": w.ravel().tolist(), "age_group": [AGES[i] for i in a.ravel()],
                  "region": [REGIONS[i] for i in r.ravel()], "y": rng.poisson(50, w.size).tolist()}
    exact_out = {"week": w.ravel(), "age_group": np.array(AGES)[a.ravel()], "region": np.array(REGIONS)[r.ravel()],
                 "y": rng.uniform(40, 60, w.size)}
    # accumulate: weekly dates x region against a daily model x region
    n_weeks = rows // len(REGIONS)
    wk_dates = start + 7 * np.arange(n_weeks) + 6
    acc_data = {"date": np.repeat(wk_dates, len(REGIONS)).astype(str).tolist(), "region": REGIONS * n_weeks,
                "y": rng.poisson(300, n_weeks * len(REGIONS)).tolist()}
    days = np.arange(7 * n_weeks)
    acc_out = {"date": np.repeat(start + days, len(REGIONS)).astype(str), "region": np.tile(REGIONS, len(days)),
               "y": rng.uniform(30, 50, len(days) * len(REGIONS))}
    # backward: survey dates scattered over the daily model's range, by region (day numbers + start_date)
    survey_days = np.sort(rng.choice(np.arange(len(days)), size=rows // len(REGIONS), replace=False))
    back_data = {"date": np.repeat(start + survey_days, len(REGIONS)).astype(str).tolist(),
                 "region": REGIONS * len(survey_days), "y": rng.poisson(30, len(survey_days) * len(REGIONS)).tolist()}
    back_out = {"date": np.repeat(days, len(REGIONS)), "region": np.tile(REGIONS, len(days)), "y": acc_out["y"]}
    return {
        "exact (week x age x region)": (_target(exact_data, on=["week", "age_group", "region"]), exact_out),
        "accumulate (daily -> weekly, by region)": (_target(acc_data, on=["date", "region"], match="accumulate"), acc_out),
        "backward (scattered dates, by region)": (_target(back_data, on=["date", "region"], match="backward",
                                                          start_date=str(start)), back_out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    print(f"{'match':<42} {'rows':>6} {'first ms':>9} {'repeat ms':>10} {'score ms':>9}")
    for name, (target, out) in cases(args.rows).items():
        fresh = pickle.loads(pickle.dumps(target))  # as a worker receives it: no cached rows
        t0 = time.perf_counter()
        sim = fresh.align({"x": out})
        first = (time.perf_counter() - t0) * 1000
        times, scores = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            sim = fresh.align({"x": out})
            t1 = time.perf_counter()
            fresh.loss(sim)
            times.append((t1 - t0) * 1000)
            scores.append((time.perf_counter() - t1) * 1000)
        print(f"{name:<42} {len(target.observed.values):>6} {first:>9.2f} {statistics.median(times):>10.2f} "
              f"{statistics.median(scores):>9.2f}")


if __name__ == "__main__":
    main()
