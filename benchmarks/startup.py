"""Start-up: how long the `calabaria calibrate` command takes before (and without) work.

Measures the real command (a subprocess of the venv's ``calabaria``, JSON log lines
on stdout) on the SEIR demo job (examples/seir/job.yaml) with a SQLite study:

- ``noop``: a no-op resume: the study is run to its budget once, then the same
  command is run again (nothing left to do) ``--repeats`` times: wall time of the
  whole command, with and without the report (``--no-report``).
- ``first``: a fresh run: seconds from the command's start (just before the
  subprocess is spawned) to the first "trial finished" log line, to "calibration
  starting", and to exit; ``results.json``'s ``wall_time_s`` (the calibration alone).
- ``shape``: the local cluster's shape for the built-in models: the same fresh run
  with ``CALABARIA_LOCAL_PROCESSES=true`` (one single-threaded worker process per
  core) and ``false`` (threads of one in-process worker), and ``--scheduler inline``
  for reference, interleaved ``--repeats`` times, at ``--trials`` trials.

Nothing asserts: it prints a table per part and writes JSON (``--json``).

    .venv/bin/python benchmarks/startup.py --parts noop,first,shape --trials 24 --repeats 3 --json /tmp/startup.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
JOB = ROOT / "examples" / "seir" / "job.yaml"
CALABARIA = Path(sys.executable).with_name("calabaria")


def _stamp(line: str) -> tuple[float, dict[str, Any]] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    ts = record.get("timestamp") if isinstance(record, dict) else None
    if not ts:
        return None
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp(), record


def run(out: Path, trials: int, *, extra: list[str] | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``calabaria calibrate`` once; times in seconds from just before the spawn."""
    cmd = [str(CALABARIA), "calibrate", str(JOB), "--output", str(out), "--max-trials", str(trials),
           "--log-format", "json", *(extra or [])]
    t0 = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False)
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and every process it waited for
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    events: dict[str, float] = {}
    for line in proc.stdout.splitlines() + proc.stderr.splitlines():
        got = _stamp(line)
        if got is None:
            continue
        ts, record = got
        name = str(record.get("event", ""))
        for key, prefix in (("first_trial_s", "trial finished"), ("starting_s", "calibration starting"),
                            ("finished_s", "calibration finished")):
            if name.startswith(prefix) and key not in events:
                events[key] = round(ts - t0, 3)
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
    return {"rc": proc.returncode, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), **events,
            "calibration_s": results.get("wall_time_s"), "best_loss": results.get("best_loss")}


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def part_noop(work: Path, trials: int, repeats: int) -> list[dict[str, Any]]:
    out = work / "noop"
    first = run(out, trials)
    rows = [{"case": "first run", **first}]
    for _ in range(repeats):
        rows.append({"case": "no-op resume", **run(out, trials)})
        rows.append({"case": "no-op resume --no-report", **run(out, trials, extra=["--no-report"])})
    return rows


def part_first(work: Path, trials: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(repeats):
        out = work / f"first-{i}"
        rows.append({"case": "fresh run", **run(out, trials)})
        rows.append({"case": "fresh run --no-report", **run(work / f"first-nr-{i}", trials, extra=["--no-report"])})
    return rows


SHAPES = {
    "processes": ([], {"CALABARIA_LOCAL_PROCESSES": "true"}),
    "threads": ([], {"CALABARIA_LOCAL_PROCESSES": "false"}),
    "inline": (["--scheduler", "inline"], {}),
}


def part_shape(work: Path, trials: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(repeats):  # interleaved: a change in the machine's load hits every shape alike
        for name, (extra, env) in SHAPES.items():
            rows.append({"case": name, **run(work / f"shape-{name}-{i}", trials, extra=[*extra, "--no-report"], env=env)})
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cases: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        cases.setdefault(r["case"], []).append(r)
    return [{"case": c, "n": len(rs), **{k: _median(rs, k) for k in ("wall_s", "cpu_s", "starting_s", "first_trial_s",
                                                                       "calibration_s", "best_loss")}}
            for c, rs in cases.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="noop,first,shape")
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="calabaria-startup-"))
    record: dict[str, Any] = {"loadavg_before": os.getloadavg(), "cpus": os.cpu_count(), "trials": args.trials,
                              "repeats": args.repeats, "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                                                              capture_output=True, text=True).stdout.strip()}
    try:
        for part in args.parts.split(","):
            rows = {"noop": part_noop, "first": part_first, "shape": part_shape}[part](work, args.trials, args.repeats)
            summary = summarise(rows)
            record[part] = {"runs": rows, "median": summary}
            print(f"\n{part} (medians, seconds from the command's start; load {os.getloadavg()[0]:.2f})")
            print(f"{'case':28} {'n':>2} {'wall':>6} {'cpu':>6} {'start':>6} {'1st':>6} {'calib':>6} {'best_loss':>10}")
            for s in summary:
                print(f"{s['case']:28} {s['n']:>2} " + " ".join(
                    f"{s[k]:>6.2f}" if s[k] is not None else f"{'-':>6}" for k in ("wall_s", "cpu_s", "starting_s", "first_trial_s", "calibration_s"))
                      + (f" {s['best_loss']:>10.1f}" if s["best_loss"] is not None else ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record["loadavg_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
