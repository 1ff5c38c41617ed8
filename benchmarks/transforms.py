"""Does searching a small probability on the logit scale find it sooner? (docs/sensitivity.md, "Transforms")

Problem: k = 3 successes out of n = 2,000 (the maximum-likelihood p is 0.0015), p searched
in [1e-5, 0.5]; loss = the binomial negative log-likelihood. A trial "reaches" the goal when
its loss is within ``--within`` (default 0.5) of the minimum, i.e. p inside roughly
[0.0007, 0.0028]. For each seed, TPE (the default sampler, through the fast path's mirror:
``calibration/mirror.py`` with ``build_sampler``, one loop) runs up to ``--trials`` trials with
``transform: none`` and with ``transform: logit``; the table gives the trials needed (median,
mean, how many seeds never reached it).

    .venv/bin/python benchmarks/transforms.py --seeds 20 --trials 200
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, source_version  # noqa: E402

from modelops_calabaria.calibration.mirror import FinishTrial, Mirror  # noqa: E402
from modelops_calabaria.calibration.study import build_sampler, distributions  # noqa: E402
from modelops_calabaria.job import job_from_dict  # noqa: E402

K, N, LOWER, UPPER = 3, 2000, 1e-5, 0.5


def loss(p: float) -> float:
    return float(-stats.binom.logpmf(K, N, p))


def trials_to_reach(transform: str, sampler: str, seed: int, budget: int, goal: float) -> int | None:
    job = job_from_dict({"study": "bench", "model": "sir", "seed": seed, "sampler": {"name": sampler},
                         "parameters": {"p": {"lower": LOWER, "upper": UPPER, "transform": transform}},
                         "targets": [{"name": "t", "output": "infected", "data": {"i": [0], "y": [0]}, "score": "sse"}]})
    mirror = Mirror(build_sampler(job, 1), [optuna.study.StudyDirection.MINIMIZE], distributions(job))
    for n in range(1, budget + 1):
        key, params = mirror.sample()
        value = loss(params["p"])
        mirror.apply([FinishTrial(key, TrialState.COMPLETE, value)])
        if value <= goal:
            return n
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--within", type=float, default=0.5)
    ap.add_argument("--sampler", default="tpe")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    goal = loss(K / N) + args.within
    rows = []
    for transform in ("none", "logit"):
        needed = [trials_to_reach(transform, args.sampler, seed, args.trials, goal) for seed in range(args.seeds)]
        reached = [n for n in needed if n is not None]
        rows.append({"transform": transform, "seeds": args.seeds, "never": len(needed) - len(reached),
                     "median": statistics.median([n if n is not None else math.inf for n in needed]),
                     "mean_reached": statistics.fmean(reached) if reached else None, "needed": needed})
    print(f"{'transform':>9} {'seeds':>5} {'never':>5} {'median':>7} {'mean (reached)':>15}")
    for r in rows:
        mean = f"{r['mean_reached']:.1f}" if r["mean_reached"] is not None else "-"
        print(f"{r['transform']:>9} {r['seeds']:>5} {r['never']:>5} {r['median']:>7} {mean:>15}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "goal": goal, "rows": rows,
                                         "machine": machine(), "source": source_version()}, indent=2, default=str))


if __name__ == "__main__":
    main()
