"""Calibration quality on known-truth epidemic problems: recovery, efficiency under concurrency, fresh seeds.

    python benchmarks/quality_epi.py --quick            # minutes: develop with this
    python benchmarks/quality_epi.py --json OUT.json    # the full panel (docs/quality.md)

Every run is one ``run_calibration`` (parallel loops, the fast path, in-memory
storage, ``scheduler: inline``: replicates on threads of the run's process) on
a problem whose true parameters are known. The panel:

- ``seir``: the SEIR demo (examples/seir: beta, reporting_rate; its cases.csv);
- ``age_seir``: the built-in age-structured SEIR, 3 parameters (beta,
  susceptibility_65, reporting_rate), weekly cases by age;
- ``poisson``: Poisson growth, cases_t ~ Poisson(a exp(r t)), 2 parameters;
- ``abm``: a stochastic individual-based SIR defined here (numpy only),
  2 parameters (per-contact transmission probability, daily recovery probability).

Each problem's observed data is one realisation at the true parameters (a fixed
data seed), so even a perfect search recovers the truth only up to that data's
noise. Experiments (``--experiments``, comma list):

- ``concurrency``: per problem, sampler variant (``--variants``) and concurrency
  (1, 4, 16): over ``--seeds`` search seeds, the running-best (in-sample) loss at
  fixed trial counts, the relative recovery error of the reported best, and the
  out-of-sample loss of the reported and of the in-sample best (re-scored with
  ``--oos-replicates`` fresh seeds, the job's aggregation). Efficiency: for each
  checkpoint N, the first trial count M at which the median running best of 16
  loops reaches the one-loop median at N; reported as M / N.
  Variants are sampler options (``VARIANTS``) or job fields (``JOB_VARIANTS``:
  the concurrency ramp ``ramp_off``/``ramp2``/``ramp4``/``ramp8``/``ramp8_first10``,
  and a QMC first wave ``qmc16``). ``--delay-s`` makes every SEIR simulation
  sleep first, with a thread for each, to time the wall of a slow model.
- ``seeds``: ``abm`` at 40 and 200 trials (one loop): ``replicate_seeds``
  common / independent / staged, each with and without the end-of-run
  re-evaluation; recovery error per parameter.
- ``aggregation``: ``poisson`` and ``abm`` (one loop): mean_of_scores,
  score_of_mean, logmeanexp: bias (median estimate - truth) and spread (IQR)
  of the recovered parameters.

Runs go to a pool of ``--procs`` processes. Nothing asserts: tables on stdout,
everything in the JSON with the machine, load and commit.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SEIR_DIR = ROOT / "examples" / "seir"
SELF = Path(__file__).resolve()


# ----------------------------------------------------------------------------------------------
# Models defined here (loaded by the service as "quality_epi.py:name")

def poisson_growth(params, seed):
    """cases_t ~ Poisson(a exp(r t)), t = 0..19."""
    rng = np.random.default_rng(seed)
    t = np.arange(20, dtype=float)
    return {"cases": rng.poisson(float(params["a"]) * np.exp(float(params["r"]) * t)).astype(float)}


poisson_growth.outputs = ("cases",)


def abm_sir(params, seed):
    """Individual-based SIR: ``population`` people (default 2000), ``initial_infected`` (10).

    Each day every infectious person meets Poisson(``contacts``, default 8) people
    drawn uniformly from everyone; a met susceptible is infected with probability
    ``p_transmit``; an infectious person recovers with probability ``p_recover``.
    Output ``incidence``: weekly new infections (``n_days`` default 84).
    """
    rng = np.random.default_rng(seed)
    n = int(params.get("population", 2000))
    days = int(params.get("n_days", 84))
    contacts = float(params.get("contacts", 8.0))
    p_t, p_r = float(params["p_transmit"]), float(params["p_recover"])
    state = np.zeros(n, dtype=np.int8)  # 0 S, 1 I, 2 R
    state[rng.choice(n, int(params.get("initial_infected", 10)), replace=False)] = 1
    daily = np.zeros(days)
    for day in range(days):
        infectious = np.flatnonzero(state == 1)
        if infectious.size == 0:
            break
        met = rng.integers(0, n, size=rng.poisson(contacts * infectious.size))
        met = met[state[met] == 0]
        hit = np.unique(met[rng.random(met.size) < p_t])
        recover = infectious[rng.random(infectious.size) < p_r]
        state[hit] = 1
        state[recover] = 2
        daily[day] = hit.size
    return {"incidence": daily.reshape(-1, 7).sum(axis=1)}


abm_sir.outputs = ("incidence",)


def delayed_seir(params, seed):
    """The built-in SEIR after sleeping ``delay_s``: a model whose simulations dominate the wall time
    (sleeping threads use no CPU, so a 2-core machine can time a large cluster's wall)."""
    from modelops_calabaria.models.compartmental import seir

    time.sleep(float(params["delay_s"]))
    return seir({k: v for k, v in params.items() if k != "delay_s"}, seed)


delayed_seir.outputs = ("incidence", "cases", "prevalence", "attack_rate")


# ----------------------------------------------------------------------------------------------
# The panel

DATA_SEED = 424242
PROBLEMS: dict[str, dict[str, Any]] = {
    "seir": {"truth": {"beta": 0.55, "reporting_rate": 0.3}, "trials": 160, "quick_trials": 60},
    "age_seir": {"truth": {"beta": 0.04, "susceptibility_65": 0.6, "reporting_rate": 0.4}, "trials": 100,
                 "quick_trials": 60},
    "poisson": {"truth": {"a": 8.0, "r": 0.15}, "trials": 160, "quick_trials": 60},
    "abm": {"truth": {"p_transmit": 0.05, "p_recover": 0.2}, "trials": 160, "quick_trials": 60},
}
AGE_FIXED = {"sigma": 0.25, "gamma": 0.2, "n_days": 112, "initial_infected": 20}


def _table(index_name: str, index: list[int], columns: dict[str, np.ndarray]) -> dict[str, list]:
    out: dict[str, list] = {index_name: list(index)}
    for k, v in columns.items():
        out[k] = [float(x) for x in v]
    return out


def problem_job(name: str, *, seed: int, trials: int, aggregation: str | None = None) -> dict[str, Any]:
    """The job (as a dict) of one problem; data are made here from the truth and DATA_SEED."""
    truth = PROBLEMS[name]["truth"]
    if name == "seir":
        import yaml
        job = yaml.safe_load((SEIR_DIR / "job.yaml").read_text())
        job["targets"][0]["data"] = str(SEIR_DIR / "cases.csv")
    elif name == "age_seir":
        from modelops_calabaria.models.compartmental import age_seir
        cases = age_seir({**AGE_FIXED, **truth}, DATA_SEED)["cases_by_age"]
        job = {
            "model": "age_seir", "fixed": AGE_FIXED,
            "parameters": {"beta": {"lower": 0.01, "upper": 0.1}, "susceptibility_65": {"lower": 0.2, "upper": 1.0},
                           "reporting_rate": {"lower": 0.1, "upper": 0.9}},
            "targets": [{"name": "cases_by_age", "output": "cases_by_age", "score": "poisson_nll",
                         "data": _table("week", list(range(cases.shape[0])), {f"g{g}": cases[:, g] for g in range(3)})}],
            "n_replicates": 2,
        }
    elif name == "poisson":
        cases = poisson_growth(truth, DATA_SEED)["cases"]
        job = {
            "model": f"{SELF}:poisson_growth",
            "parameters": {"a": {"lower": 1.0, "upper": 30.0}, "r": {"lower": 0.01, "upper": 0.3}},
            "targets": [{"name": "cases", "output": "cases", "score": "poisson_nll",
                         "data": _table("t", list(range(20)), {"cases": cases})}],
            "n_replicates": 4,
        }
    else:
        inc = abm_sir(truth, DATA_SEED)["incidence"]
        job = {
            "model": f"{SELF}:abm_sir",
            "parameters": {"p_transmit": {"lower": 0.01, "upper": 0.15}, "p_recover": {"lower": 0.05, "upper": 0.5}},
            "targets": [{"name": "incidence", "output": "incidence", "score": "poisson_nll",
                         "data": _table("week", list(range(inc.size)), {"incidence": inc})}],
            "n_replicates": 3,
        }
    job.update(study=f"q-{name}-{seed}", seed=seed, max_trials=trials,
               stop={"max_consecutive_failures": max(25, trials)})
    if aggregation:
        job["targets"][0]["aggregation"] = aggregation
    return job


VARIANTS: dict[str, dict[str, Any]] = {
    # sampler options given in the job, on top of build_sampler's defaults
    "default": {},
    "startup_c": {"n_startup_trials": "10+c"},
    "startup_low": {"n_startup_trials": "max(1,11-c)"},  # = build_sampler's default now
    "group": {"group": True},
    "no_liar": {"constant_liar": False},
    "independent_tpe": {"multivariate": False},
    "startup10": {"n_startup_trials": 10},  # the start-up before docs/quality.md (Optuna's default)
}

# job fields of a variant (on top of the problem's job): the concurrency ramp (calibration/ramp.py)
JOB_VARIANTS: dict[str, dict[str, Any]] = {
    "ramp_off": {"ramp": "off"},
    "ramp2": {"ramp": {"per": 2}},
    "ramp4": {"ramp": {"per": 4}},
    "ramp8": {"ramp": {"per": 8}},
    "ramp8_first10": {"ramp": {"per": 8, "first": 10}},
    "qmc16": {},  # the first 16 trials: a scrambled Sobol set given as `start:` points (enqueued)
    "ramp2_qmc16": {"ramp": {"per": 2}},
    "ramp4_qmc16": {"ramp": {"per": 4}},
}


def sobol_start(parameters: dict[str, Any], n: int, seed: int) -> list[dict[str, float]]:
    """``n`` (a power of 2) scrambled Sobol points over the float parameters' bounds, as `start:` points."""
    from scipy.stats import qmc

    names = list(parameters)
    unit = qmc.Sobol(len(names), scramble=True, seed=seed).random_base2(int(math.log2(n)))
    lo = np.array([float(parameters[k]["lower"]) for k in names])
    hi = np.array([float(parameters[k]["upper"]) for k in names])
    return [{k: float(v) for k, v in zip(names, lo + u * (hi - lo))} for u in unit]


# ----------------------------------------------------------------------------------------------
# One run

def _oos(job, params: dict[str, Any], replicates: int, seed_base: int) -> float:
    """The loss of ``params`` on ``replicates`` fresh seeds, aggregated as the job does."""
    from modelops_calabaria.models import canonical_ref, load_model
    from modelops_calabaria.targets.evaluate import aggregate_trial, compile_targets, evaluate_replicate

    model = load_model(canonical_ref(job.model, job.base_dir))
    targets = compile_targets(job, model.outputs)
    scores, kept = [], []
    for r in range(replicates):
        out = model.run({**job.fixed, **params}, 10_000_019 + seed_base * 1000 + r)
        s, k = evaluate_replicate(targets, out)
        scores.append(s)
        kept.append(k)
    return aggregate_trial(targets, scores, kept)[1]


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """One calibration; returns its running-best curve, best points, recovery errors, OOS losses."""
    import logging

    from modelops_calabaria import Settings
    from modelops_calabaria.calibration.runner import run_calibration
    from modelops_calabaria.job import job_from_dict
    from modelops_calabaria.logging import configure_logging

    configure_logging("json", level=logging.ERROR, stream=sys.stderr)
    import warnings

    import optuna
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    name, seed, c = spec["problem"], spec["seed"], spec["concurrency"]
    data = problem_job(name, seed=seed, trials=spec["trials"], aggregation=spec.get("aggregation"))
    variant = spec.get("variant", "default")
    options = {k: ({"10+c": 10 + c, "max(1,11-c)": max(1, 11 - c)}.get(v, v) if isinstance(v, str) else v)
               for k, v in VARIANTS.get(variant, {}).items()}
    data.update(JOB_VARIANTS.get(variant, {}))
    if variant.endswith("qmc16"):
        data["start"] = sobol_start(data["parameters"], 16, 1000 + seed)
    if options:
        data["sampler"] = {"name": "tpe", "options": options}
    if spec.get("delay_s"):  # the wall-time experiment: every simulation sleeps first, threads for every one
        data["model"] = f"{SELF}:delayed_seir" if name == "seir" else data["model"]
        data.setdefault("fixed", {})["delay_s"] = spec["delay_s"]
        data["reevaluate"] = {"top_k": 0}  # the search's wall only
    if spec.get("replicate_seeds"):
        data["replicate_seeds"] = spec["replicate_seeds"]
    if spec.get("reevaluate") is not None:
        data["reevaluate"] = {"top_k": spec["reevaluate"]}
    job = job_from_dict(data, source="quality benchmark", base_dir=SEIR_DIR if name == "seir" else HERE)
    settings = Settings(parallel_trials=True, storage="memory", scheduler="inline",
                        local_workers=spec.get("threads", 4), log_format="json")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_calibration(job, settings, output_dir=Path(tmp) / "run", concurrency=c, show_progress=False)
        rows = list(csv.DictReader((Path(tmp) / "run" / "trials.csv").open()))
    wall = time.monotonic() - started
    rows.sort(key=lambda r: int(r["number"]))
    losses = [float(r["loss"]) if r["state"] == "COMPLETE" and r["loss"] else math.inf for r in rows]
    running = np.minimum.accumulate(np.array(losses)).tolist()
    truth = PROBLEMS[name]["truth"]
    in_sample = min((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: float(r["loss"]))
    in_sample_params = {k: float(in_sample[k]) for k in truth}
    reported = {k: float(v) for k, v in (result.best_params or {}).items()}
    oos_reps = spec.get("oos_replicates", 16)
    out = {
        **spec, "wall_s": round(wall, 2), "running_best": running,
        "reported": reported, "in_sample": in_sample_params,
        "selected_by": (result.selection or {}).get("selected_by", "in_sample"),
        "err_reported": {k: abs(reported[k] - v) / v for k, v in truth.items()},
        "err_in_sample": {k: abs(in_sample_params[k] - v) / v for k, v in truth.items()},
    }
    if spec.get("oos", True):
        out["oos_reported"] = _oos(job, reported, oos_reps, seed)
        out["oos_in_sample"] = out["oos_reported"] if reported == in_sample_params else _oos(job, in_sample_params, oos_reps, seed)
    return out


# ----------------------------------------------------------------------------------------------
# Summaries

def med(xs) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.median(xs) if xs else None


def iqr(xs) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if len(xs) < 2:
        return None
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[2] - q[0]


def efficiency(one: list[list[float]], many: list[list[float]], checkpoints: list[int]) -> dict[int, float | None]:
    """For each N: (first M with median running best of ``many`` at M <= one-loop median at N) / N."""
    m1 = np.median(np.array(one), axis=0)
    mk = np.median(np.array(many), axis=0)
    out: dict[int, float | None] = {}
    for n in checkpoints:
        reached = np.flatnonzero(mk <= m1[n - 1])
        out[n] = round((int(reached[0]) + 1) / n, 3) if reached.size else None
    return out


NOT_REACHED = 1e9  # a draw whose median never reaches the one-loop value


def bootstrap_efficiency(one: list[list[float]], many: list[list[float]], checkpoints: list[int], draws: int = 400,
                         seed: int = 1) -> dict[int, tuple[float, float | None]]:
    """10th and 90th percentile of ``efficiency`` over ``draws`` resamplings of the many-loop runs
    (the one-loop curve fixed); None: not reached within the budget in over 10 % of the draws."""
    rng = np.random.default_rng(seed)
    got: dict[int, list[float]] = {n: [] for n in checkpoints}
    for _ in range(draws):
        e = efficiency(one, [many[i] for i in rng.integers(0, len(many), len(many))], checkpoints)
        for n in checkpoints:
            got[n].append(NOT_REACHED if e[n] is None else e[n])
    out: dict[int, tuple[float | None, float | None]] = {}
    for n, xs in got.items():
        lo, hi = (float(x) for x in np.percentile(xs, [10, 90], method="lower"))
        out[n] = (None if lo >= NOT_REACHED else round(lo, 2), None if hi >= NOT_REACHED else round(hi, 2))
    return out


def checkpoints_for(trials: int) -> list[int]:
    """Trial counts N where the one-loop median is compared: up to 5/8 of the budget, so that
    the many-loop runs (same budget) can show a ratio up to 1.6."""
    return sorted({max(10, trials // 4), trials // 2, 5 * trials // 8})


def summarize_concurrency(rows: list[dict], problems: list[str], variants: list[str], concs: list[int],
                          bootstrap: bool = False) -> list[dict]:
    table = []
    for p in problems:
        for v in variants:
            sel = {c: [r for r in rows if r["experiment"] == "concurrency" and r["problem"] == p and r["variant"] == v
                       and r["concurrency"] == c] for c in concs}
            if not sel.get(1):  # a variant run only with many loops: compared with the default's one loop
                sel[1] = [r for r in rows if r["experiment"] == "concurrency" and r["problem"] == p
                          and r["variant"] == "default" and r["concurrency"] == 1]
            if not sel.get(1):
                continue
            trials = sel[1][0]["trials"]
            cps = checkpoints_for(trials)
            for c in concs:
                if not sel.get(c):
                    continue
                if c == 1 and sel[1] and sel[1][0]["variant"] != v:
                    continue
                rb = [r["running_best"] for r in sel[c]]
                one = [r["running_best"] for r in sel[1]]
                eff = efficiency(one, rb, cps) if c > 1 else {n: 1.0 for n in cps}
                spread = bootstrap_efficiency(one, rb, cps) if c > 1 and bootstrap else {}
                row = {"problem": p, "variant": v, "c": c, "runs": len(sel[c])}
                for n in cps:
                    row[f"best@{n}"] = med([x[n - 1] for x in rb])
                    row[f"eff@{n}"] = eff[n]
                    if spread:
                        lo, hi = spread[n]
                        row[f"eff@{n} 80%"] = "not reached" if lo is None else f"{lo}-{hi if hi is not None else 'not reached'}"
                row[f"best@{trials}"] = med([x[trials - 1] for x in rb])
                row["err_med"] = med([max(r["err_reported"].values()) for r in sel[c]])
                row["oos_reported"] = med([r.get("oos_reported") for r in sel[c]])
                row["oos_in_sample"] = med([r.get("oos_in_sample") for r in sel[c]])
                row["wall_s"] = med([r["wall_s"] for r in sel[c]])
                table.append(row)
    return table


def summarize_params(rows: list[dict], experiment: str, keys: list[str]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["experiment"] == experiment:
            groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    table = []
    for key, rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        truth = PROBLEMS[rs[0]["problem"]]["truth"]
        row = dict(zip(keys, key)) | {"runs": len(rs)}
        for k, v in truth.items():
            est = [r["reported"][k] for r in rs]
            row[f"{k}:med_err%"] = round(100 * med([r["err_reported"][k] for r in rs]), 2)
            row[f"{k}:bias"] = round(med(est) - v, 5)
            row[f"{k}:iqr"] = round(iqr(est) or 0.0, 5)
        row["oos"] = med([r.get("oos_reported") for r in rs])
        table.append(row)
    return table


def print_rows(title: str, table: list[dict]) -> None:
    print(f"\n## {title}")
    if not table:
        print("(no runs)")
        return
    cols = list(dict.fromkeys(k for r in table for k in r))
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in table:
        cells = []
        for k in cols:
            v = r.get(k)
            cells.append("-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)))
        print("| " + " | ".join(cells) + " |")
    sys.stdout.flush()


# ----------------------------------------------------------------------------------------------

# (replicate_seeds, reevaluate top_k): the service's options; (independent, 0) is a search that
# reseeds every trial and reports its in-sample best, as peer tools do; (common, 0) the old default.
SEED_CELLS = [("common", 0), ("common", 5), ("independent", 0), ("independent", 5), ("staged", 5)]


def plan(a: argparse.Namespace) -> list[dict]:
    specs: list[dict] = []
    problems = [p for p in a.problems.split(",") if p]
    seeds = range(a.first_seed, a.first_seed + a.seeds)
    experiments = a.experiments.split(",")
    if "concurrency" in experiments:
        for p in problems:
            trials = a.trials or PROBLEMS[p]["quick_trials" if a.quick else "trials"]
            cells = [(v, c) for v in a.variants.split(",") for c in [int(x) for x in a.concurrency.split(",")]]
            cells += [(v, c) for v in a.extra_variants.split(",") if v for c in [int(x) for x in a.concurrency.split(",")] if c > 1]
            for v, c in cells:
                    for s in seeds:
                        spec = {"experiment": "concurrency", "problem": p, "variant": v, "concurrency": c,
                                "seed": s, "trials": trials, "oos_replicates": a.oos_replicates}
                        if a.delay_s:  # enough threads for every simulation of 16 loops: the wall is the search's
                            spec.update(delay_s=a.delay_s, threads=max(4, c * 4), oos=False)
                        specs.append(spec)
    if "seeds" in experiments:
        for trials in ([int(x) for x in a.seed_trials.split(",")] if a.seed_trials else [40, 100] if a.quick else [40, 200]):
            for mode, top_k in SEED_CELLS:
                    for s in seeds:
                        specs.append({"experiment": "seeds", "problem": "abm", "variant": "default", "concurrency": 1,
                                      "seed": s, "trials": trials, "replicate_seeds": mode, "reevaluate": top_k,
                                      "oos_replicates": a.oos_replicates})
    if "aggregation" in experiments:
        for p in a.aggregation_problems.split(","):
            for agg in ("mean_of_scores", "score_of_mean", "logmeanexp"):
                for s in seeds:
                    specs.append({"experiment": "aggregation", "problem": p, "variant": "default", "concurrency": 1,
                                  "seed": s, "trials": 60 if a.quick else 120, "aggregation": agg, "oos": False})
    return specs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer seeds and trials (3 seeds unless --seeds)")
    p.add_argument("--seeds", type=int, default=None, help="search seeds per cell (default 10, quick 3)")
    p.add_argument("--first-seed", type=int, default=0, help="search seeds first_seed .. first_seed + seeds - 1 "
                   "(more seeds for a finished run: --summarize several JSON files, comma list)")
    p.add_argument("--problems", default="seir,age_seir,poisson,abm")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--variants", default="default")
    p.add_argument("--extra-variants", default="", help="variants run only with more than one loop")
    p.add_argument("--seed-trials", default=None, help="budgets of the seeds experiment (default 40,200; quick 40,100)")
    p.add_argument("--aggregation-problems", default="poisson,abm")
    p.add_argument("--summarize", default=None, help="print the tables of a (partial) JSON and exit")
    p.add_argument("--experiments", default="concurrency,seeds,aggregation")
    p.add_argument("--trials", type=int, default=None, help="budget of the concurrency runs (default: per problem)")
    p.add_argument("--oos-replicates", type=int, default=16)
    p.add_argument("--bootstrap", action="store_true", help="concurrency tables: 80%% interval of each eff "
                   "(400 resamplings of the many-loop runs, one-loop curve fixed)")
    p.add_argument("--delay-s", type=float, default=None, help="seir only: every simulation sleeps this long first, "
                   "with a thread for each (wall time of a slow model on a large cluster); no re-evaluation")
    p.add_argument("--procs", type=int, default=2, help="runs at once (processes)")
    p.add_argument("--json", dest="json_out", default=None)
    a = p.parse_args(argv)
    a.seeds = a.seeds or (3 if a.quick else 10)
    sys.path.insert(0, str(HERE))
    from _common import machine

    started = time.monotonic()
    rows: list[dict] = []
    if a.summarize:
        rows = [r for f in a.summarize.split(",") for r in json.loads(Path(f).read_text())["runs"]]
    else:
        specs = plan(a)
        print(f"{len(specs)} runs on {a.procs} processes", flush=True)
        with ProcessPoolExecutor(max_workers=a.procs) as pool:
            for i, r in enumerate(pool.map(run_one, specs)):
                rows.append(r)
                if (i + 1) % 10 == 0:
                    print(f"  {i + 1}/{len(specs)} runs, {time.monotonic() - started:.0f} s", flush=True)
                    if a.json_out:  # partial results: --summarize reads them
                        Path(a.json_out + ".partial").write_text(json.dumps({"runs": rows}, default=str) + "\n")
    problems = [x for x in a.problems.split(",") if x]
    variants = [v for v in (a.variants + "," + a.extra_variants).split(",") if v]
    tables = {
        "concurrency": summarize_concurrency(rows, problems, variants, [int(x) for x in a.concurrency.split(",")],
                                             bootstrap=a.bootstrap),
        "seeds": summarize_params(rows, "seeds", ["trials", "replicate_seeds", "reevaluate"]),
        "aggregation": summarize_params(rows, "aggregation", ["problem", "aggregation"]),
    }
    for k, t in tables.items():
        print_rows(k, t)
    info = {"command": " ".join(["python", "benchmarks/quality_epi.py", *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine(), "wall_s": round(time.monotonic() - started, 1), "config": vars(a)}
    print(f"\n{info['machine']}  wall {info['wall_s']} s")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps({"info": info, "tables": tables, "runs": rows}, indent=1, default=str) + "\n")
        print(f"wrote {a.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
