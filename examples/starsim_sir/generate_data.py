"""Write cases.csv: one run of the starsim model at known parameters (seed 1000).

    .venv/bin/python examples/starsim_sir/generate_data.py
"""

from __future__ import annotations

import csv
from pathlib import Path

from model import sir

TRUE = {"beta": 0.065, "init_prev": 0.01}

if __name__ == "__main__":
    out = sir(TRUE, 1000)["cases"]
    with (Path(__file__).parent / "cases.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["date", "cases"])
        w.writerows([d, int(c)] for d, c in zip(out["date"], out["cases"]))
