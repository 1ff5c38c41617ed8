"""Write cases.csv: one realisation of model.py at beta=0.03, reporting_rate=0.25, weeks 0-11 (run by hand)."""

import csv
from pathlib import Path

from model import model

HERE = Path(__file__).parent
TRUE = {"beta": 0.03, "reporting_rate": 0.25, "sigma": 0.25, "gamma": 0.2, "initial_infected": 20, "n_days": 84}

if __name__ == "__main__":
    out = model(TRUE, 20240902)["cases"]
    with (HERE / "cases.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["date", "age_group", "cases"])
        for d, a, c in zip(out["date"], out["age_group"], out["cases"]):
            w.writerow([d, a, int(c)])
