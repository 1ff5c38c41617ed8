"""ESS per 1,000 simulations: IMIS against likelihood-weighted sampling from the prior, same budget.

    python benchmarks/posterior.py [--problem line|seir|both] [--trials N]

"Rejection" here is its best form: every prior draw is kept with weight
proportional to its likelihood (importance sampling from the prior; rejection
sampling keeps fewer). It runs through the same wire as IMIS, as a posterior
job whose ``initial`` equals the budget, so the two differ only in proposals.
Inline backend, in-memory study: the numbers measure proposals, not infrastructure.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import yaml

from modelops_calabaria import Settings, run_calibration
from modelops_calabaria.job import job_from_dict
from modelops_calabaria.logging import configure_logging

ROOT = Path(__file__).resolve().parents[1]


def line_job(trials: int) -> tuple[dict, Path]:
    """y = a + b t, sigma 0.5, six points; flat priors much wider than the posterior."""
    y = [1.0 + 0.8 * t + e for t, e in zip(range(1, 7), (0.3, -0.4, 0.1, 0.5, -0.2, -0.6))]
    return {
        "study": "bench-line", "model": f"{ROOT / 'tests/support/posterior_models.py'}:line",
        "parameters": {"a": {"lower": -10.0, "upper": 10.0}, "b": {"lower": -5.0, "upper": 5.0}},
        "targets": [{"name": "y", "output": "y", "data": {"i": list(range(6)), "y": y},
                     "score": {"kind": "normal_nll", "sigma": 0.5}}],
        "n_replicates": 1, "max_trials": trials, "seed": 1,
        "posterior": {"initial": trials // 5, "per_stage": max(10, trials // 40)},
    }, ROOT


def seir_job(trials: int) -> tuple[dict, Path]:
    path = ROOT / "examples/seir/posterior.yaml"
    data = yaml.safe_load(path.read_text())
    data["max_trials"] = trials
    data["posterior"].pop("target_ess", None)
    return data, path.parent


def run(data: dict, base: Path, workers: int) -> dict:
    job = job_from_dict(data, base_dir=base)
    settings = Settings(parallel_trials=True, storage="memory", scheduler="inline", local_workers=workers, log_format="json")
    with tempfile.TemporaryDirectory() as out:
        started = time.monotonic()
        result = run_calibration(job, settings, output_dir=Path(out) / "run", show_progress=False)
        wall = time.monotonic() - started
    post = result.posterior or {}
    return {"ess": post.get("ess"), "n_simulations": post.get("n_simulations"), "wall_s": round(wall, 1),
            "ess_per_1000_sims": round(1000 * post["ess"] / post["n_simulations"], 2), "summary": post.get("parameters")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=["line", "seir", "both"], default="both")
    parser.add_argument("--trials", type=int, default=None, help="budget per method (default: line 1000, seir 400)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    configure_logging("json", level=logging.WARNING, stream=sys.stderr)
    problems = ["line", "seir"] if args.problem == "both" else [args.problem]
    report = {}
    for name in problems:
        trials = args.trials or (1000 if name == "line" else 400)
        data, base = (line_job if name == "line" else seir_job)(trials)
        imis = run(data, base, args.workers)
        prior_only = copy.deepcopy(data)
        prior_only["study"] += "-prior"
        prior_only["posterior"]["initial"] = trials + 1  # never leaves the prior
        rejection = run(prior_only, base, args.workers)
        ratio = imis["ess_per_1000_sims"] / max(rejection["ess_per_1000_sims"], 1e-9)
        report[name] = {"trials": trials, "imis": imis, "prior_weighted": rejection, "ratio": round(ratio, 1)}
        print(json.dumps({name: report[name]}, indent=1), flush=True)
    json.dump(report, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
