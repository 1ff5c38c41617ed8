"""Where the data put the best parameters: the target a perfect search would find.

    python benchmarks/data_optimum.py --problem abm --replicates 128 --seed-sets 3 --json OUT

The panel's observed series (``quality_epi.py``) is one realisation of a stochastic
model at the truth, so even a perfect search finds the parameters that best explain
*that* realisation, not the truth. For a problem scored with ``score_of_mean``, the
limit of the search's objective as replicates grow is the loss of the data under the
model's expected trajectory, ``loss(y | E[x(theta)])``. This script minimises it with
Nelder-Mead, estimating ``E[x(theta)]`` by the mean of ``--replicates`` simulations on
fixed seeds (common random numbers keep the objective smooth enough to minimise), once
per independent seed set, and reports each minimiser, its relative offset from the
truth, and the loss at the truth and at the minimiser. The offset is the part of a
search's recovery error that no search can remove.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_epi as q  # noqa: E402  (the panel: models, truths, data)

from modelops_calabaria.job import ScoreSpec  # noqa: E402
from modelops_calabaria.targets.scores import score  # noqa: E402

MODELS = {"abm": q.abm_sir, "poisson": q.poisson_growth}


def objective(problem: str, names: list[str], seeds: np.ndarray, observed: np.ndarray, output: str, kind: str):
    model = MODELS[problem]
    fixed = q.problem_job(problem, seed=0, trials=1).get("fixed", {})
    spec = ScoreSpec(kind=kind)

    def loss(x: np.ndarray) -> float:
        if np.any(x <= 0):
            return float("inf")
        params = {**fixed, **dict(zip(names, map(float, x)))}
        mean = np.mean([np.asarray(model(params, int(s))[output], dtype=float) for s in seeds], axis=0)
        return float(score(spec, mean, observed))

    return loss


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--problem", choices=sorted(MODELS), default="abm")
    p.add_argument("--replicates", type=int, default=128)
    p.add_argument("--seed-sets", type=int, default=3)
    p.add_argument("--json", dest="json_out", type=Path)
    a = p.parse_args(argv)
    job = q.problem_job(a.problem, seed=0, trials=1)
    target = job["targets"][0]
    data = target["data"]
    output = target["output"]
    observed = np.asarray(data[output], dtype=float)
    kind = target["score"] if isinstance(target["score"], str) else target["score"]["kind"]
    truth = q.PROBLEMS[a.problem]["truth"]
    names = list(truth)
    x0 = np.array([truth[n] for n in names])
    rows = []
    for k in range(a.seed_sets):
        seeds = np.random.default_rng(10_000 + k).integers(0, 2**31 - 1, size=a.replicates)
        f = objective(a.problem, names, seeds, observed, output, kind)
        res = minimize(f, x0, method="Nelder-Mead", options={"xatol": 1e-5, "fatol": 1e-3, "maxiter": 400})
        best = dict(zip(names, map(float, res.x)))
        rows.append({"seed_set": k, "optimum": best, "loss_at_optimum": float(res.fun), "loss_at_truth": f(x0),
                     "offset_pct": {n: round(100 * (best[n] - truth[n]) / truth[n], 2) for n in names},
                     "evaluations": int(res.nfev)})
        print(f"seed set {k}: " + ", ".join(f"{n} {best[n]:.5g} ({rows[-1]['offset_pct'][n]:+.1f} %)" for n in names)
              + f"; loss {res.fun:.2f} (at the truth {rows[-1]['loss_at_truth']:.2f}); {res.nfev} evaluations",
              flush=True)
    median = {n: float(np.median([r["optimum"][n] for r in rows])) for n in names}
    print("median optimum: " + ", ".join(f"{n} {median[n]:.5g} ({100 * (median[n] - truth[n]) / truth[n]:+.1f} % from the truth)"
                                         for n in names))
    if a.json_out:
        a.json_out.write_text(json.dumps({"config": {k: str(v) for k, v in vars(a).items()}, "truth": truth,
                                          "runs": rows, "median_optimum": median}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
