"""Which parameter sets a projection runs, and the seeds of every simulation (pure, plus reading a run dir).

Sources, first found in the run directory:

1. ``posterior``: ``posterior.csv`` (posterior/outputs.py: ``trial``, each parameter,
   ``weight`` summing to 1): ``K`` draws with replacement, with probability = weight;
2. ``reevaluated``: the top trials re-run on fresh seeds at the end of the run
   (results.json ``selection.reevaluated``, calibration/reevaluate.py), those whose
   re-evaluation succeeded: ``K`` draws, uniformly, with replacement;
3. ``best``: the reported best (results.json ``best_params``, else best.yaml), every draw.

Draws come from ``SeedSequence([seed, DRAW_TAG])``: the same seed, the same draws.
Simulation seeds: draw ``d``, replicate ``r`` uses ``SeedSequence([seed, SIM_TAG, d, r])``
in *every* scenario (common random numbers: scenario differences are paired);
``common=False`` adds the scenario's index (independent seeds, for comparison).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from modelops_calabaria.errors import ConfigurationError

DRAW_TAG = 0x64726177  # "draw"
SIM_TAG = 0x70726F6A  # "proj": apart from trial seeds ([seed, r] / [seed, trial + 1, r]) and fresh ones


@dataclass(frozen=True)
class ParameterSets:
    """The candidates a projection draws from, with their weights, and where they came from."""

    source: str  # posterior | reevaluated | best
    params: tuple[dict[str, Any], ...]
    weights: np.ndarray  # sums to 1
    trials: tuple[int | None, ...]

    def draw(self, k: int, seed: int) -> list[int]:
        """Indices of ``k`` draws (with replacement, by weight), reproducible from ``seed``."""
        rng = np.random.default_rng(np.random.SeedSequence([seed, DRAW_TAG]))
        if len(self.params) == 1:
            return [0] * k
        return [int(i) for i in rng.choice(len(self.params), size=k, replace=True, p=self.weights)]


def sim_seed(seed: int, draw: int, replicate: int, scenario: int | None = None) -> int:
    """The seed of one simulation: the same in every scenario unless ``scenario`` is given."""
    entropy = [seed, SIM_TAG, draw, replicate] + ([] if scenario is None else [scenario + 1])
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as e:
        raise ConfigurationError(f"{path} cannot be read: {e}", hint="pass the run directory of a finished calibration") from None
    return data if isinstance(data, dict) else {}


def _posterior(path: Path, names: list[str]) -> ParameterSets:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigurationError(f"{path} cannot be read: {e}") from None
    missing = [n for n in (*names, "weight") if rows and n not in rows[0]]
    if missing:
        raise ConfigurationError(f"{path} has no column '{missing[0]}'", hint="it must be the posterior.csv of this run")
    try:
        params = tuple({n: float(r[n]) for n in names} for r in rows)
        weights = np.array([float(r["weight"]) for r in rows])
        trials = tuple(int(r["trial"]) if r.get("trial") not in (None, "") else None for r in rows)
    except ValueError as e:
        raise ConfigurationError(f"{path}: a value is not a number ({e})") from None
    if not rows or not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ConfigurationError(f"{path} holds no usable weighted sample (empty, or weights not positive)")
    return ParameterSets("posterior", params, weights / weights.sum(), trials)


def parameter_sets(run_dir: Path, names: list[str], kinds: dict[str, str]) -> ParameterSets:
    """The run's parameter sets (see the module docstring for the order of sources).

    ``names``: the job's searched parameters; ``kinds``: their kind (``int`` values are rounded).

    Raises:
        ConfigurationError: the run holds no posterior, no re-evaluation and no best.
    """
    posterior = run_dir / "posterior.csv"
    if posterior.is_file():
        sets = _posterior(posterior, names)
    else:
        results = _read_json(run_dir / "results.json")
        good = [c for c in ((results.get("selection") or {}).get("reevaluated") or [])
                if isinstance(c, dict) and c.get("loss") is not None and isinstance(c.get("params"), dict)
                and math.isfinite(float(c["loss"]))]
        if len(good) > 1:
            sets = ParameterSets("reevaluated", tuple(dict(c["params"]) for c in good), np.full(len(good), 1 / len(good)),
                                 tuple(c.get("trial") for c in good))
        else:
            best = results.get("best_params")
            trial = results.get("best_trial")
            if not isinstance(best, dict) and (run_dir / "best.yaml").is_file():
                loaded = yaml.safe_load((run_dir / "best.yaml").read_text(encoding="utf-8")) or {}
                best, trial = loaded.get("best_params"), loaded.get("best_trial")
            if not isinstance(best, dict) or not best:
                raise ConfigurationError(f"{run_dir} holds no parameters to project from (no posterior.csv, "
                                         "no re-evaluated trials, no best)", hint="pass the directory of a finished calibration")
            sets = ParameterSets("best", (dict(best),), np.ones(1), (trial,))
    missing = [n for n in names if n not in sets.params[0]]
    if missing:
        raise ConfigurationError(f"{run_dir}: the {sets.source} parameters lack '{missing[0]}', a parameter of the job",
                                 hint="the run directory and its job must belong together")
    fixed = tuple({n: (int(round(float(v))) if kinds.get(n) == "int" else v) for n, v in p.items() if n in names}
                  for p in sets.params)
    return ParameterSets(sets.source, fixed, sets.weights, sets.trials)
