"""Generate the synthetic surveillance data of the SEIR demo from known true parameters.

    python examples/seir/generate_data.py

writes examples/seir/cases.csv: weekly reported cases of one stochastic
realisation of the built-in SEIR model. The demo job (job.yaml) recovers
TRUE_PARAMS within 10%.
"""

from __future__ import annotations

import csv
from pathlib import Path

from modelops_calabaria.models.compartmental import seir

TRUE_PARAMS = {"beta": 0.55, "reporting_rate": 0.3}
FIXED = {"sigma": 0.25, "gamma": 0.2, "population": 500_000, "initial_infected": 200, "n_days": 210}
DATA_SEED = 20261123


def main() -> None:
    out = seir({**FIXED, **TRUE_PARAMS}, DATA_SEED)
    path = Path(__file__).with_name("cases.csv")
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["week", "cases"])
        for week, cases in enumerate(out["cases"]):
            w.writerow([week, int(cases)])
    print(f"wrote {path} ({len(out['cases'])} weeks, {int(out['cases'].sum())} cases)")


if __name__ == "__main__":
    main()
