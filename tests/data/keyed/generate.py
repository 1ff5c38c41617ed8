"""Write the keyed test data from known parameters (run by hand; the files are committed).

    .venv/bin/python tests/data/keyed/generate.py
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[1] / "support"))
import keyed_models as m  # noqa: E402

TRUE = {
    "wave": {"amp": 400.0, "peak": 80.0},
    "hospital": {"severity": 2.0, "growth": 0.15},
    "prevalence": {"pmax": 0.3, "k": 0.08},
}


def write(name: str, header: list[str], rows: list[list]) -> None:
    with (HERE / name).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def main() -> None:
    rng = np.random.default_rng(20240101)
    # Weekly counts dated by each week's last day, from the daily model (accumulate).
    daily = m.daily_wave(TRUE["wave"], 0)["cases"]["cases"]
    weeks = len(daily) // 7
    counts = rng.poisson(daily[: weeks * 7].reshape(weeks, 7).sum(axis=1))
    ends = [str(m.START + np.timedelta64(7 * w + 6, "D")) for w in range(weeks)]
    write("weekly_cases.csv", ["date", "cases"], [[d, int(c)] for d, c in zip(ends, counts)])
    # The same weeks by week number with gaps (blank, NA) in 5 of 26 weeks.
    gaps = {3, 9, 10, 17, 24}
    write("weekly_cases_gaps.csv", ["week", "cases"],
          [[w, "" if w in gaps else int(c)] if w != 10 else [w, "NA"] for w, c in enumerate(counts)])
    # Admissions by week x age group x region, rows shuffled (exact match on three keys).
    hosp = m.hospital(TRUE["hospital"], 0)["admissions"]
    order = rng.permutation(len(hosp["week"]))
    write("admissions.csv", ["week", "age_group", "region", "admissions"],
          [[int(hosp["week"][i]), hosp["age_group"][i], hosp["region"][i], int(rng.poisson(hosp["admissions"][i]))] for i in order])
    # Prevalence surveys on scattered days: positives of `tested` (backward: the model step containing the date).
    prev = m.weekly_prevalence(TRUE["prevalence"], 0)["prevalence"]
    survey_days = sorted(rng.choice(np.arange(3, 180), size=14, replace=False))
    rows = []
    for d in survey_days:
        p = prev["prevalence"][d // 7]
        tested = int(rng.integers(800, 2000))
        rows.append([str(m.START + np.timedelta64(int(d), "D")), tested, int(rng.binomial(tested, p))])
    write("surveys.csv", ["date", "tested", "positive"], rows)
    # The same surveys as Parquet, the dates as a date column.
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({
        "date": pa.array([datetime.date.fromisoformat(r[0]) for r in rows], pa.date32()),
        "tested": [r[1] for r in rows], "positive": [r[2] for r in rows],
    }), HERE / "surveys.parquet")


if __name__ == "__main__":
    main()
