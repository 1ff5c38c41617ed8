"""A posterior of a stochastic model: ESS per 1,000 simulations and 95 % coverage over data sets.

    python benchmarks/posterior_stochastic.py [--datasets 5] [--estimator plugin|ubsl|both|none] [--pyabc]

Chain-binomial SIR (the built-in ``sir``: population 2,000, 10 initially infected, 20
weeks), two parameters (beta, gamma), truth beta 0.25 and gamma 0.125; each data set is one
realisation of the model at the truth (seed 1000 + k). IMIS with a synthetic likelihood
over weekly incidence and a budget of 10,000 simulations: ``plugin`` (Wood's estimator,
20 replicates × 500 trials) and ``ubsl`` (the unbiased estimator, 60 replicates × 166
trials: uBSL needs more than 20 + 3, and at 25 replicates its estimate was 0 for every
trial of a 400-trial run: it is positive only when the observation's Mahalanobis
distance is below about R − 1, which near R = d it rarely is). Inline backend, in-memory study, re-evaluation off.

With ``--pyabc`` (pyABC importable; it is no dependency of this project: run it from a
separate virtualenv holding pyabc and this package, with ``--estimator none``), the same data sets through pyABC's ABC-SMC with the
same simulation budget (population 500, Euclidean distance on the weekly counts, its
default adaptive epsilon): ESS of the final population per 1,000 simulations and its
weighted 95 % intervals.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from modelops_calabaria import Settings, run_calibration  # noqa: E402
from modelops_calabaria.job import job_from_dict  # noqa: E402
from modelops_calabaria.logging import configure_logging  # noqa: E402
from modelops_calabaria.models.compartmental import sir  # noqa: E402

TRUTH = {"beta": 0.25, "gamma": 0.125}
BOUNDS = {"beta": (0.05, 0.8), "gamma": (0.03, 0.4)}
FIXED = {"population": 2000, "initial_infected": 10, "n_days": 140}
BUDGET = 10_000
DESIGNS = {"plugin": (20, 500), "ubsl": (60, 166)}  # uBSL: R > d + 3 = 23, and well above it (q < 1 is rare near R = d)


def dataset(k: int) -> list[float]:
    return sir({**TRUTH, **FIXED}, 1000 + k)["incidence"].tolist()


def imis(k: int, estimator: str) -> dict:
    replicates, trials = DESIGNS[estimator]
    y = dataset(k)
    job = job_from_dict({
        "study": f"stoch-{estimator}-{k}", "model": "sir", "fixed": FIXED,
        "parameters": {n: {"lower": lo, "upper": hi} for n, (lo, hi) in BOUNDS.items()},
        "targets": [{"name": "incidence", "output": "incidence", "data": {"week": list(range(len(y))), "n": y},
                     "index_column": "week", "score": "poisson_nll", "aggregation": "synthetic_likelihood",
                     "synthetic_estimator": estimator}],
        "n_replicates": replicates, "replicate_seeds": "independent", "max_trials": trials, "seed": 10 + k,
        "reevaluate": {"top_k": 0}, "posterior": {"initial": trials // 5, "per_stage": 25},
    }, base_dir=Path.cwd())
    settings = Settings(parallel_trials=True, storage="memory", scheduler="inline", local_workers=2, log_format="json")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as out:
        post = run_calibration(job, settings, output_dir=Path(out) / "run", show_progress=False).posterior or {}
    sims = post.get("simulations", {}).get("trials", trials * replicates)
    if not post.get("parameters"):  # every likelihood estimate 0: no interval
        return {"method": f"imis-{estimator}", "dataset": k, "ess": 0.0, "simulations": sims, "ess_per_1000": 0.0,
                "covered": {n: False for n in TRUTH}, "ci95": {n: [math.nan, math.nan] for n in TRUTH},
                "warnings": post.get("warnings", []), "wall_s": round(time.monotonic() - started, 1)}
    covered = {n: post["parameters"][n]["ci95"][0] <= TRUTH[n] <= post["parameters"][n]["ci95"][1] for n in TRUTH}
    return {"method": f"imis-{estimator}", "dataset": k, "ess": post.get("ess"), "simulations": sims,
            "ess_per_1000": round(1000 * post.get("ess", 0) / sims, 2), "covered": covered,
            "ci95": {n: post["parameters"][n]["ci95"] for n in TRUTH}, "pareto_k": post["diagnostics"]["pareto_k"], "max_weight": post["diagnostics"]["max_weight"],
            "warnings": len(post.get("warnings", [])), "wall_s": round(time.monotonic() - started, 1)}


def pyabc_run(k: int) -> dict:
    import pyabc

    y = np.array(dataset(k))
    rng = np.random.default_rng(k)

    def model(p):
        return {"y": sir({"beta": p["beta"], "gamma": p["gamma"], **FIXED}, int(rng.integers(2**31)))["incidence"]}

    prior = pyabc.Distribution(**{n: pyabc.RV("uniform", lo, hi - lo) for n, (lo, hi) in BOUNDS.items()})
    abc = pyabc.ABCSMC(model, prior, lambda a, b: float(np.linalg.norm(a["y"] - b["y"])), population_size=500,
                       sampler=pyabc.sampler.SingleCoreSampler())
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as d:
        abc.new(f"sqlite:///{d}/abc.db", {"y": y})
        history = abc.run(max_total_nr_simulations=BUDGET)
        frame, w = history.get_distribution()
        sims = int(history.total_nr_simulations)
    w = np.asarray(w) / np.sum(w)
    ess = float(1 / np.sum(w * w))
    ci = {}
    for n in TRUTH:
        order = np.argsort(frame[n].to_numpy())
        v, c = frame[n].to_numpy()[order], np.cumsum(w[order])
        ci[n] = [float(np.interp(0.025, c, v)), float(np.interp(0.975, c, v))]
    return {"method": "pyabc", "dataset": k, "ess": round(ess, 2), "simulations": sims,
            "ess_per_1000": round(1000 * ess / sims, 2), "covered": {n: ci[n][0] <= TRUTH[n] <= ci[n][1] for n in TRUTH},
            "ci95": ci, "wall_s": round(time.monotonic() - started, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=int, default=5)
    ap.add_argument("--estimator", choices=["plugin", "ubsl", "both", "none"], default="both")
    ap.add_argument("--pyabc", action="store_true")
    args = ap.parse_args()
    configure_logging("json", level=logging.WARNING, stream=sys.stderr)
    runs = []
    estimators = {"both": ["plugin", "ubsl"], "none": []}.get(args.estimator, [args.estimator])
    for k in range(args.datasets):
        for e in estimators:
            runs.append(imis(k, e))
            print(json.dumps(runs[-1]), flush=True)
        if args.pyabc:
            runs.append(pyabc_run(k))
            print(json.dumps(runs[-1]), flush=True)
    summary = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        cover = [c for r in mine for c in r["covered"].values()]
        summary[method] = {"datasets": len(mine), "ess_per_1000_median": float(np.median([r["ess_per_1000"] for r in mine])),
                           "coverage": f"{sum(cover)}/{len(cover)}",
                           "mean_ci_width": {n: round(float(np.mean([r["ci95"][n][1] - r["ci95"][n][0] for r in mine])), 4)
                                             for n in TRUTH}}
    print(json.dumps({"summary": summary, "machine": machine()}, indent=1))


if __name__ == "__main__":
    main()
