"""Coordination cost alone: zero-time simulations through the real service, per storage.

    python benchmarks/coordination.py --storage URL [--storage URL2 | --storage A,B] \\
        --loops 1,4,16 --trials 2000 --json OUT [--latency-curve 10000]

For each storage (``memory``, ``sqlite:///tmp/x.db``, ``journal:///tmp/x.log``,
``postgresql://...``), three measurements:

1. ``service``: for each loop count, one ``run_calibration`` (parallel mode,
   the public API) of ``--trials`` trials whose model is ``synthetic.py:instant``
   (returns at once; ``--replicates`` 1 by default). Every trial still pays
   budget claim (ledger) -> ask (TPE + storage) -> Dask round trip (replicate
   task + reduction task) -> tell (user attrs + state). trials/s and the
   service's own ask/tell p50/p95.

2. ``plain_optuna``: the baseline. ``--baseline-threads`` (16) threads doing raw
   ``study.ask(space)`` / ``study.tell(trial, value)`` with
   ``TPESampler(constant_liar=True, seed=seed)`` (``--baseline-multivariate``
   adds multivariate=True, the service's own TPE setting) on the same storage,
   opened with the service's ``open_optuna_storage`` (same engine options), for
   ``--trials`` trials, no Dask, no ledger, no attrs. Service trials/s / plain
   trials/s = what the service's extra work costs.

3. ``latency_curve`` (``--latency-curve N``): one study run to N trials through
   ``run_calibration`` with ``--curve-loops`` loops (default: the largest of
   ``--loops``, 16 if none), recording every ask's duration and trial number,
   to show how ask latency grows with the study's size: p50 near trial 100 vs
   over the last 100 trials, plus p50 at checkpoints. With many loops the
   latency a loop sees is mostly queueing (about loops / trials per second);
   ``--curve-loops 1`` shows the cost of one ask itself. ``run_calibration`` does not return
   per-trial timings (only percentiles), so for that run only a subclass of the
   service's ``Wire`` is patched into ``modelops_calabaria.calibration.runner``:
   it wraps the runner's ask/tell adapter (whatever its class) and times each
   ``ask()`` as the wire's loop sees it, with its trial number. (With an adapter
   that prefetches asks, that is the wait a loop sees, not the sampler's cost.)
   The JSON says so under ``method``.

Dask (unless ``--scheduler``): a LocalCluster of ``--workers`` (2) processes x
``--threads`` (2) threads. Trials run back to back: the in-process scheduler's
overhead per task is part of what is measured, as it is in a real run.

Storages keep their data: sqlite/journal files and PostgreSQL tables grow by
one study per measurement (unique names); delete the files to start clean.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import optuna
from _common import (
    local_cluster,
    machine,
    make_job,
    make_settings,
    masked,
    parse_setting_overrides,
    pct,
    print_table,
    quiet_logging,
    settings_record,
    storage_kind,
    storage_list,
    study_name,
    warm_up,
)
from optuna.distributions import FloatDistribution

import synthetic
from modelops_calabaria import run_calibration
from modelops_calabaria.calibration import runner as runner_module
from modelops_calabaria.backend.factory import open_optuna_storage
from modelops_calabaria.storage import parse_storage_url

SPACE = {"x0": FloatDistribution(0.0, 1.0), "x1": FloatDistribution(0.0, 1.0)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", action="append", required=True,
                   help="storage URL; repeat, or give a comma list (memory, sqlite:///x.db, journal:///x.log, postgresql://...)")
    p.add_argument("--loops", default="1,4,16", help="comma list of loop counts ('' = skip the per-loop runs)")
    p.add_argument("--trials", type=int, default=2000, help="trials per service run and for the plain-Optuna baseline")
    p.add_argument("--json", dest="json_out", required=True)
    p.add_argument("--latency-curve", type=int, default=0, metavar="N", help="run one study to N trials and report ask latency vs trial count")
    p.add_argument("--curve-loops", type=int, default=None, help="loops of the latency-curve run (default: the largest --loops, else 16)")
    p.add_argument("--replicates", type=int, default=1, help="replicates per trial (instant model)")
    p.add_argument("--baseline-threads", type=int, default=16)
    p.add_argument("--baseline-trials", type=int, default=None, help="default: --trials")
    p.add_argument("--baseline-multivariate", action="store_true", help="baseline TPE with multivariate=True, as the service uses")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    p.add_argument("--threads", type=int, default=2, help="threads per LocalCluster worker")
    p.add_argument("--scheduler", default=None, help="use this Dask scheduler instead of starting a LocalCluster")
    p.add_argument("--setting", action="append", metavar="KEY=VALUE",
                   help="extra Settings field for every service run, e.g. --setting heartbeat_interval_s=5 (repeatable)")
    a = p.parse_args(argv)
    a.overrides = parse_setting_overrides(a.setting)
    try:
        a.loops = [int(x) for x in a.loops.split(",") if x.strip()]
    except ValueError:
        p.error("--loops must be a comma list of integers, e.g. 1,4,16")
    if a.loops and min(a.loops) < 1:
        p.error("--loops values must be >= 1")
    if not a.loops and a.no_baseline and not a.latency_curve:
        p.error("nothing to measure: give --loops, the baseline or --latency-curve")
    if a.trials < 1:
        p.error("--trials must be >= 1")
    a.storage = storage_list(a.storage)
    return a


# -- 1. the service ----------------------------------------------------------------------------


def service_run(url: str, address: str, loops: int, trials: int, replicates: int, seed: int,
                overrides: dict[str, str], prefix: str = "coord") -> tuple[dict[str, Any], Any]:
    job = make_job(study=study_name(f"{prefix}-l{loops}"), model="instant", trials=trials, replicates=replicates,
                   concurrency=loops, mean_sim=0.0, seed=seed)
    settings = make_settings(parallel=True, storage=url, scheduler=address, overrides=overrides)
    with tempfile.TemporaryDirectory(prefix="calabaria-bench-") as tmp:
        r = run_calibration(job, settings, output_dir=Path(tmp) / "run", show_progress=False)
    told = r.this_run["told"]
    lat = r.latency_ms
    row = {
        "path": "service", "loops": loops, "trials": told, "failed": r.this_run["failed"], "wall_time_s": r.wall_time_s,
        "trials_per_s": round(told / r.wall_time_s, 2) if r.wall_time_s else None,
        "ask_ms_p50": lat.get("ask_p50"), "ask_ms_p95": lat.get("ask_p95"),
        "tell_ms_p50": lat.get("tell_p50"), "tell_ms_p95": lat.get("tell_p95"),
        "study": r.study, "settings": settings_record(settings),
    }
    return row, r


# -- 2. plain Optuna -----------------------------------------------------------------------------


def sse(params: dict[str, float], seed: int) -> float:
    y = synthetic.instant(params, seed)["y"]
    return float(sum((a - b) ** 2 for a, b in zip(y, synthetic.OBSERVED)))


def plain_optuna(url: str, trials: int, threads: int, seed: int, multivariate: bool) -> dict[str, Any]:
    storage = open_optuna_storage(parse_storage_url(url), threads)
    sampler = optuna.samplers.TPESampler(constant_liar=True, multivariate=multivariate, seed=seed)
    study = optuna.create_study(study_name=study_name("plain"), storage=storage, sampler=sampler, direction="minimize")
    lock = threading.Lock()
    claimed = [0]
    asks: list[float] = []
    tells: list[float] = []
    errors: list[str] = []

    def loop() -> None:
        while True:
            with lock:
                if claimed[0] >= trials or errors:
                    return
                claimed[0] += 1
            try:
                t0 = time.perf_counter()
                trial = study.ask(SPACE)
                t1 = time.perf_counter()
                study.tell(trial, sse(trial.params, seed))
                t2 = time.perf_counter()
            except Exception as e:  # noqa: BLE001 - reported in the JSON
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                return
            with lock:
                asks.append((t1 - t0) * 1000)
                tells.append((t2 - t1) * 1000)

    workers = [threading.Thread(target=loop, name=f"plain-{i}") for i in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    if isinstance(storage, optuna.storages.RDBStorage):
        storage.engine.dispose()
    return {
        "path": "plain_optuna", "loops": threads, "trials": len(asks), "wall_time_s": round(wall, 3),
        "trials_per_s": round(len(asks) / wall, 2) if wall else None,
        "ask_ms_p50": pct(asks, 50), "ask_ms_p95": pct(asks, 95), "tell_ms_p50": pct(tells, 50), "tell_ms_p95": pct(tells, 95),
        "sampler": f"TPESampler(constant_liar=True, multivariate={multivariate}, seed={seed})",
        "study": study.study_name, **({"error": errors[0]} if errors else {}),
    }


# -- 3. ask latency against trial count ---------------------------------------------------------


class TimedStudy:
    """Stands between the wire and the runner's ask/tell adapter (whatever its class), timing each
    ``ask()`` and ``tell_complete()`` as the wire's loop sees it; everything else passes through."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.asks: list[tuple[int, float, float]] = []  # (trial number, ms, perf_counter at the end)
        self.tells: list[tuple[int, float, float]] = []
        self._rec = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def ask(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        trial = self._inner.ask(*args, **kwargs)
        t1 = time.perf_counter()
        with self._rec:
            self.asks.append((trial.number, (t1 - t0) * 1000, t1))
        return trial

    def tell_complete(self, trial: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = self._inner.tell_complete(trial, *args, **kwargs)
        t1 = time.perf_counter()
        with self._rec:
            self.tells.append((trial.number, (t1 - t0) * 1000, t1))
        return out


class TimedWire(runner_module.Wire):  # type: ignore[misc]
    """The service's Wire, with its ask/tell adapter wrapped in a TimedStudy."""

    last: TimedStudy | None = None

    def __post_init__(self) -> None:
        self.study = TimedStudy(self.study)
        TimedWire.last = self.study
        super().__post_init__()


@contextmanager
def timed_wire() -> Iterator[type[TimedWire]]:
    original = runner_module.Wire
    runner_module.Wire = TimedWire  # type: ignore[misc]
    TimedWire.last = None
    try:
        yield TimedWire
    finally:
        runner_module.Wire = original  # type: ignore[misc]


def window(rows: list[tuple[int, float, float]], lo: int, hi: int) -> list[tuple[int, float, float]]:
    return [r for r in rows if lo <= r[0] < hi]


def rate(rows: list[tuple[int, float, float]]) -> float | None:
    """Asks per second over a window (completion times of its asks)."""
    if len(rows) < 2:
        return None
    times = sorted(r[2] for r in rows)
    span = times[-1] - times[0]
    return round((len(times) - 1) / span, 2) if span > 0 else None


def latency_curve(url: str, address: str, n: int, loops: int, replicates: int, seed: int,
                  overrides: dict[str, str]) -> dict[str, Any]:
    with timed_wire() as cls:
        row, _ = service_run(url, address, loops, n, replicates, seed, overrides, prefix="curve")
    adapter = cls.last
    if adapter is None or not adapter.asks:
        raise RuntimeError("the patched Wire was not used by run_calibration (the runner changed): "
                           "drive the ask/tell adapter + optuna directly instead")
    asks = sorted(adapter.asks)
    tells = sorted(adapter.tells)
    half = 50
    early_lo, early_hi = (max(0, 100 - half), 100 + half) if n >= 150 else (0, min(n, 100))
    end_lo = max(0, n - 100)
    checkpoints = sorted({c for c in (100, 250, 500, 1000, 2000, 3000, 5000, 7500, 10000, 20000) if c + half <= n} | {n})
    curve = []
    for c in checkpoints:
        lo, hi = (end_lo, n) if c == n else (c - half, c + half)
        w = window(asks, lo, hi)
        curve.append({"trial": c, "window": [lo, hi], "ask_ms_p50": pct([r[1] for r in w], 50),
                      "ask_ms_p95": pct([r[1] for r in w], 95), "tell_ms_p50": pct([r[1] for r in window(tells, lo, hi)], 50),
                      "asks_per_s": rate(w)})
    early, end = window(asks, early_lo, early_hi), window(asks, end_lo, n)
    a100, aend = pct([r[1] for r in early], 50), pct([r[1] for r in end], 50)
    return {
        "trials": row["trials"], "loops": loops, "wall_time_s": row["wall_time_s"], "trials_per_s": row["trials_per_s"],
        "ask_ms_p50_near_100": a100, "ask_ms_p50_at_end": aend,
        "ask_growth_end_over_100": round(aend / a100, 2) if a100 and aend else None,
        "tell_ms_p50_near_100": pct([r[1] for r in window(tells, early_lo, early_hi)], 50),
        "tell_ms_p50_at_end": pct([r[1] for r in window(tells, end_lo, n)], 50),
        "trials_per_s_near_100": rate(early), "trials_per_s_at_end": rate(end),
        "windows": {"near_100": [early_lo, early_hi], "end": [end_lo, n]},
        "curve": curve, "study": row["study"], "settings": row["settings"],
    }


# -- main ---------------------------------------------------------------------------------------

COLUMNS = [
    ("storage", "storage", ""), ("path", "path", ""), ("loops", "loops", "d"), ("trials", "trials", "d"),
    ("wall_time_s", "wall s", ".2f"), ("trials_per_s", "trials/s", ".1f"),
    ("ask_ms_p50", "ask p50", ".1f"), ("ask_ms_p95", "ask p95", ".1f"), ("tell_ms_p50", "tell p50", ".1f"), ("tell_ms_p95", "tell p95", ".1f"),
]


def measure_storage(url: str, a: argparse.Namespace, address: str) -> dict[str, Any]:
    shown = masked(url)
    out: dict[str, Any] = {"storage": shown, "kind": storage_kind(url), "service": []}
    for loops in a.loops:
        row, _ = service_run(url, address, loops, a.trials, a.replicates, a.seed, a.overrides)
        out["service"].append(row)
        print_table([{"storage": shown, **row}], COLUMNS)
        print(flush=True)
    if not a.no_baseline:
        base = plain_optuna(url, a.baseline_trials or a.trials, a.baseline_threads, a.seed, a.baseline_multivariate)
        out["plain_optuna"] = base
        same = next((r for r in out["service"] if r["loops"] == a.baseline_threads), None)
        if same and base.get("trials_per_s"):
            out["service_over_plain_trials_per_s"] = round(same["trials_per_s"] / base["trials_per_s"], 3)
        print_table([{"storage": shown, **base}], COLUMNS)
        print(flush=True)
    if a.latency_curve:
        loops = a.curve_loops or max(a.loops, default=16)
        curve = latency_curve(url, address, a.latency_curve, loops, a.replicates, a.seed, a.overrides)
        out["latency_curve"] = curve
        print(f"{shown}: latency curve to {curve['trials']} trials, {loops} loops: ask p50 {curve['ask_ms_p50_near_100']} ms near trial 100, "
              f"{curve['ask_ms_p50_at_end']} ms at the end (x{curve['ask_growth_end_over_100']}); "
              f"{curve['trials_per_s_near_100']} -> {curve['trials_per_s_at_end']} trials/s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    quiet_logging()
    result: dict[str, Any] = {
        "method": {
            "service": "run_calibration (parallel mode) with the instant model: claim + ask + Dask round trip + tell per trial",
            "plain_optuna": "threads doing study.ask(space)/study.tell(value) on the same storage, no Dask, no ledger",
            "latency_curve": "run_calibration; a Wire subclass patched into modelops_calabaria.calibration.runner wraps the "
                             "runner's ask/tell adapter and records each ask() as the loop sees it (duration, trial number): "
                             "the same span the adapter times for its own ask percentiles; tell_complete() is timed the same way, "
                             "as the loop sees it (the service's own tell percentiles may time only the storage write)",
        },
        "config": {"loops": a.loops, "trials": a.trials, "replicates": a.replicates, "baseline_threads": a.baseline_threads,
                   "latency_curve": a.latency_curve, "seed": a.seed, "setting_overrides": a.overrides,
                   "cluster": "external" if a.scheduler else {"n_workers": a.workers, "threads_per_worker": a.threads, "processes": True}},
        "machine": machine(),
        "storages": {},
    }
    failed = False
    with local_cluster(scheduler=a.scheduler, n_workers=a.workers, threads_per_worker=a.threads) as address:
        warm_up(address, "instant", a.overrides)
        for url in a.storage:
            try:
                result["storages"][masked(url)] = measure_storage(url, a, address)
            except Exception as e:  # noqa: BLE001 - one storage failing must not lose the others' numbers
                failed = True
                traceback.print_exc()
                result["storages"][masked(url)] = {"storage": masked(url), "error": f"{type(e).__name__}: {e}"}
    rows = []
    for s in result["storages"].values():
        rows += [{"storage": s["storage"], **r} for r in s.get("service", [])]
        if "plain_optuna" in s:
            rows.append({"storage": s["storage"], **s["plain_optuna"]})
    print("summary")
    print_table(rows, COLUMNS)
    for s in result["storages"].values():
        c = s.get("latency_curve")
        if c:
            print(f"{s['storage']}: ask p50 near trial 100 {c['ask_ms_p50_near_100']} ms -> at trial {c['trials']} {c['ask_ms_p50_at_end']} ms")
    Path(a.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json_out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.json_out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
