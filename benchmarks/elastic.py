"""Loops that follow the cluster: utilisation when workers join and leave mid-run.

    python benchmarks/elastic.py --trials 160 --mean-sim 0.3 --phase 6 --json OUT

A Dask scheduler and one worker process (one thread) are started as subprocesses;
``calabaria calibrate`` runs against them in a subprocess (``--scheduler ADDRESS``,
SQLite, one replicate per trial, the ``sleepy`` model of ``synthetic.py``). After
``--phase`` seconds two more workers join; ``--phase`` seconds later one of them is
retired (``Client.retire_workers``), and ``--phase`` seconds after that the other is
killed with SIGKILL (nanny and worker). The run is made twice: ``auto`` (no
``--workers``) and ``fixed`` (``--workers 2``: what ``auto`` starts with on one thread).

Sampled every 0.1 s from the scheduler: live threads and busy threads (threads with a
replicate assigned). Reported per change: the time from the scheduler seeing it to the
resize log line, and to the first sample with every thread busy ("recovered"); and per
phase the mean utilisation. The study is then checked: exactly ``--trials`` trials,
their states. Each sample costs two small scheduler calls.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent


def _worker(address: str, name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--name", name,
                             "--no-dashboard", "--host", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _say(arm: str, what: str) -> None:
    print(f"[{arm}] {what}", file=sys.stderr, flush=True)


def _job(path: Path, study: str, trials: int, mean_sim: float) -> None:
    path.write_text(json.dumps({
        "study": study, "model": f"{HERE / 'synthetic.py'}:sleepy",
        "parameters": {"x0": {"lower": 0.0, "upper": 1.0}, "x1": {"lower": 0.0, "upper": 1.0}},
        "fixed": {"mean_sim": mean_sim},
        "targets": [{"name": "y", "output": "y", "data": {"index": [0, 1, 2], "y": [1.0, 2.0, 3.0]},
                     "index_column": "index", "score": "sse"}],
        "n_replicates": 1, "max_trials": trials, "seed": 1,
        "reevaluate": {"top_k": 0}, "stop": {"max_consecutive_failures": trials},
    }))


def one_run(arm: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from distributed import Client

    work = tmp / arm
    work.mkdir()
    sched_file = work / "scheduler.json"
    procs: list[subprocess.Popen] = [subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", str(sched_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        while not sched_file.exists():
            time.sleep(0.1)
        time.sleep(0.3)
        address = json.loads(sched_file.read_text())["address"]
        procs.append(_worker(address, "w0"))
        client = Client(address, set_as_default=False, timeout="30s")
        client.wait_for_workers(1, timeout=60)
        _say(arm, "scheduler and one worker up")
        _job(work / "job.json", f"elastic-{arm}", args.trials, args.mean_sim)
        cmd = [str(Path(sys.executable).parent / "calabaria"), "calibrate", str(work / "job.json"), "--scheduler", address,
               "--storage", f"sqlite:///{work}/s.db", "-o", str(work / "run"), "--log-format", "json", "--no-report"]
        if arm == "fixed":
            cmd += ["--workers", "2"]
        log_lines: list[tuple[float, str]] = []
        cal = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=work)  # logs: stdout

        def read_log() -> None:
            assert cal.stdout is not None
            for line in cal.stdout:
                log_lines.append((time.monotonic(), line))

        reader = threading.Thread(target=read_log, daemon=True)
        reader.start()
        samples: list[tuple[float, int, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    nthreads, processing = client.nthreads(), client.processing()
                    busy = sum(min(n, len(processing.get(w, ()))) for w, n in nthreads.items())
                    samples.append((time.monotonic(), sum(nthreads.values()), busy))
                except Exception:  # noqa: BLE001 - a sample lost while a worker goes away
                    pass
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        events: list[tuple[str, float, float, int]] = []  # (what, action time, time the scheduler saw it, threads after)

        def change(what: str, threads: int, action: Any) -> None:
            t_action = time.monotonic()
            action()
            while sum(client.nthreads().values()) != threads:
                time.sleep(0.05)
            events.append((what, t_action, time.monotonic(), threads))
            _say(arm, f"{what}: the scheduler counts {threads} threads after {time.monotonic() - t_action:.1f} s")
            time.sleep(args.phase)

        while not any("calibration starting" in line for _, line in log_lines):
            if cal.poll() is not None:
                raise RuntimeError(f"calabaria calibrate exited {cal.returncode}: {''.join(l for _, l in log_lines)[-2000:]}")
            time.sleep(0.1)
        start = time.monotonic()
        _say(arm, "calibration started")
        time.sleep(args.phase)
        change("join 2", 3, lambda: procs.extend([_worker(address, "w1"), _worker(address, "w2")]))
        change("retire 1", 2, lambda: client.retire_workers(names=["w1"], close_workers=True))
        change("SIGKILL 1", 1, lambda: os.killpg(procs[-1].pid, signal.SIGKILL))
        cal.wait(600)
        stop.set()
        sampler.join()
        reader.join(5)
        end = time.monotonic()
        client.close()
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
    resizes = []
    for t, line in log_lines:
        if "trials at once resized" in line:
            rec = json.loads(line)
            resizes.append({"at_s": round(t - start, 2), "from": rec["from"], "to": rec["to"], "live_threads": rec["live_threads"]})
    changes = []
    ends = [seen for _, _, seen, _ in events[1:]] + [end]
    for (what, t_action, seen, threads), until in zip(events, ends):
        busy = next((s for s in samples if s[0] >= seen and s[1] == threads and s[2] == threads), None)
        resize = next((t for t, line in log_lines if t >= t_action and "trials at once resized" in line
                       and json.loads(line).get("live_threads") == threads), None)
        phase = [s for s in samples if seen <= s[0] < until and s[1] > 0]
        changes.append({
            "change": what,
            "scheduler_saw_after_s": round(seen - t_action, 2),
            # negative: the wire's reading caught the change before this script's poll did
            "resized_after_seen_s": round(resize - seen, 2) if resize is not None else None,
            "all_busy_after_seen_s": round(busy[0] - seen, 2) if busy is not None else None,
            "phase_s": round(until - seen, 1),
            "phase_utilisation": round(sum(b / n for _, n, b in phase) / max(1, len(phase)), 3),
        })
    first = [s for s in samples if start <= s[0] < events[0][1] and s[1] > 0]
    return {"arm": arm, "exit": cal.returncode, "wall_s": round(end - start, 1), "resizes": resizes,
            "start_utilisation": round(sum(b / n for _, n, b in first) / max(1, len(first)), 3), "changes": changes,
            "trials": _states(work / "s.db", f"elastic-{arm}")}


def _states(db: Path, study: str) -> dict[str, int]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=study, storage=f"sqlite:///{db}").get_trials(deepcopy=False)
    out: dict[str, int] = {"total": len(trials)}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=160)
    ap.add_argument("--mean-sim", type=float, default=0.3)
    ap.add_argument("--phase", type=float, default=6.0, help="seconds between the cluster changes")
    ap.add_argument("--arms", default="auto,fixed")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    out: dict[str, Any] = {"commit": commit, "loadavg_start": os.getloadavg(), "cpus": os.cpu_count(), "runs": []}
    with tempfile.TemporaryDirectory() as d:
        for arm in args.arms.split(","):
            res = one_run(arm, args, Path(d))
            out["runs"].append(res)
            print(json.dumps(res), flush=True)
    out["loadavg_end"] = os.getloadavg()
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
