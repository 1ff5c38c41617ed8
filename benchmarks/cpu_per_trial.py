"""The service's own CPU per trial, against a plain multi-process ``study.optimize`` loop.

    python benchmarks/cpu_per_trial.py --trials 40,200 --pairs 3 --replicates 3 --json OUT \\
        [--only service|peer] [--src DIR] [--base-src DIR] [--profile DIR] [--service-env KEY=VALUE]

One CPU-bound individual-based model (``cpu_model.py:ibm_sir``, about 0.2 s of one core
per replicate), one job (two parameters, observed weekly incidence, sse of the
replicates' mean, ``--replicates`` replicates per trial), run two ways, each as a
subprocess whose whole process tree is measured:

- ``service``: ``calabaria calibrate JOB.yaml --storage sqlite:///... --no-report``, as a
  user runs it: a local cluster of one worker process per core (the default for a user
  model), the job's default concurrency; ``reevaluate: {top_k: 0}`` (the peer has no
  end-of-run re-evaluation, and its simulations would only add wall time);
- ``peer``: ``cpu_peer.py``: plain Optuna, one forked process per core running
  ``study.optimize`` on one journal-file study, replicates in-process one after the other.

Per run: wall time (spawn to exit); CPU-s of the whole process tree (user + sys of
every process that ran, from ``wait4``: this process is made a child subreaper, so that
worker processes orphaned by their parent are reaped here too and counted); the
simulations' own CPU-s (each model run appends its thread CPU time to a file); and
non-simulation CPU-s = tree − simulations. For each way, the fixed part (start-up,
shut-down) and the per-trial part are read off two trial counts (medians over pairs):
``per_trial = (nonsim(T2) − nonsim(T1)) / (T2 − T1)``, ``fixed = nonsim(T1) − T1 · per_trial``.

Runs are interleaved: within a pair, each trial count runs service then peer (odd
pairs: in reverse). ``--src DIR`` runs the service from another source tree, through
``PYTHONPATH``; ``--base-src DIR`` adds a third way, ``base``: the service run from that
tree (e.g. an exported older commit), interleaved with the others, for a before/after. ``--profile DIR``
adds one extra run of each trial count's service under ``py-spy record --subprocesses``
(raw, 100 Hz; not counted in the tables).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from _common import machine, print_table

HERE = Path(__file__).resolve().parent
MODEL = HERE / "cpu_model.py"
PEER = HERE / "cpu_peer.py"
TRUTH = {"p_transmit": 0.08, "p_recover": 0.2}
DATA_SEED = 424242
PR_SET_CHILD_SUBREAPER = 36


def observed(fixed: dict[str, Any]) -> list[float]:
    sys.path.insert(0, str(HERE))
    from cpu_model import ibm_sir

    return [float(x) for x in ibm_sir({**fixed, **TRUTH}, DATA_SEED)["incidence"]]


def write_job(path: Path, *, trials: int, replicates: int, incidence: list[float], seed: int,
              fixed: dict[str, Any]) -> None:
    job = {
        "study": f"cpu-per-trial-{trials}",
        "model": f"{MODEL}:ibm_sir",
        "parameters": {"p_transmit": {"lower": 0.01, "upper": 0.15}, "p_recover": {"lower": 0.05, "upper": 0.5}},
        "targets": [{"name": "incidence", "output": "incidence", "score": "sse", "index_column": "week",
                     "data": {"week": list(range(len(incidence))), "incidence": incidence}}],
        "fixed": fixed,
        "n_replicates": replicates,
        "max_trials": trials,
        "seed": seed,
        "reevaluate": {"top_k": 0},
        "stop": {"max_consecutive_failures": max(25, trials)},
    }
    path.write_text(yaml.safe_dump(job, sort_keys=False))


def become_subreaper() -> None:
    """Orphaned descendants (a worker whose nanny died first) are reparented to this process."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def reap_all(deadline_s: float = 30.0) -> int:
    """Wait for every remaining descendant (orphans come to us); kill what is left at the deadline.
    Returns how many had to be killed."""
    killed = 0
    end = time.monotonic() + deadline_s
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return killed
        if pid:
            continue
        if time.monotonic() > end:
            for line in Path("/proc").glob("[0-9]*/stat"):
                try:
                    fields = line.read_text().split(") ")[-1].split()
                except OSError:
                    continue
                if int(fields[1]) == os.getpid():  # ppid: a child of ours
                    os.kill(int(line.parent.name), signal.SIGKILL)
                    killed += 1
            end = time.monotonic() + 5.0
        time.sleep(0.05)


def tree_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


TICK = os.sysconf("SC_CLK_TCK")


def _kind(pid: int, root: int) -> str:
    if pid == root:
        return "coordinator"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other"
    if "resource_tracker" in cmd:
        return "resource tracker"
    if "spawn_main" in cmd or "forkserver" in cmd:
        return "worker processes"
    return "other"


class TreeSampler:
    """CPU-s per kind of process in the tree under ``root``, from /proc every ``every_s``
    (the last sample of each process counts: what it spent in its last moments is missed)."""

    def __init__(self, root: int, every_s: float = 0.25) -> None:
        import threading

        self.root, self.every_s = root, every_s
        self.seen: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            parents: dict[int, int] = {}
            cpu: dict[int, float] = {}
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    fields = stat.read_text().rsplit(") ", 1)[1].split()
                except (OSError, IndexError):
                    continue
                pid = int(stat.parent.name)
                parents[pid] = int(fields[1])
                cpu[pid] = (int(fields[11]) + int(fields[12])) / TICK
            me = os.getpid()
            for pid in cpu:
                q, hops = pid, 0
                while q in parents and q not in (self.root, me) and hops < 50:
                    q, hops = parents[q], hops + 1
                if q in (self.root, me) and pid != me:
                    kind = self.seen[pid][0] if pid in self.seen else _kind(pid, self.root)
                    self.seen[pid] = (kind, cpu[pid])
            self._stop.wait(self.every_s)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        out: dict[str, float] = {}
        for kind, c in self.seen.values():
            out[kind] = round(out.get(kind, 0.0) + c, 2)
        return out


def measure(cmd: list[str], env: dict[str, str], workdir: Path, label: str) -> dict[str, Any]:
    sims = workdir / "sims.log"
    sims.unlink(missing_ok=True)
    env = {**os.environ, **env, "CPU_MODEL_LOG": str(sims)}
    load = os.getloadavg()[0]
    cpu0 = tree_cpu()
    t0 = time.perf_counter()
    with open(workdir / f"{label}.out", "w") as out, open(workdir / f"{label}.err", "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=workdir)
        sampler = TreeSampler(proc.pid)
        rc = proc.wait()
        split = sampler.stop()
    wall = time.perf_counter() - t0
    killed = reap_all()
    cpu = tree_cpu() - cpu0
    runs = [float(x) for x in sims.read_text().split()] if sims.exists() else []
    return {"rc": rc, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "simulations": len(runs),
            "sim_cpu_s": round(sum(runs), 3), "nonsim_cpu_s": round(cpu - sum(runs), 3), "killed_after": killed,
            "loadavg_1m_before": round(load, 2),
            "cpu_by_process": split}


def service_cmd(job: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "modelops_calabaria", "calibrate", str(job), "--output", str(run_dir / "out"),
            "--storage", f"sqlite:///{run_dir / 'study.db'}", "--no-report"]


def run_service(trials: int, a: argparse.Namespace, incidence: list[float], root: Path, n: int,
                profile: Path | None = None, src: str | None = None, label: str = "service") -> dict[str, Any]:
    d = root / f"{label}-{trials}-{n}"
    d.mkdir()
    job = d / "job.yaml"
    write_job(job, trials=trials, replicates=a.replicates, incidence=incidence, seed=a.seed, fixed=a.fixed)
    cmd = service_cmd(job, d)
    if profile is not None:
        cmd = ["py-spy", "record", "--subprocesses", "--format", "raw", "-r", "100", "-o",
               str(profile / f"service-{trials}.raw"), "--", *cmd]
    env = dict(a.service_env)
    if src:
        env["PYTHONPATH"] = str(Path(src).resolve())
    r = measure(cmd, env, d, "service")
    results = d / "out" / "results.json"
    if results.exists():
        data = json.loads(results.read_text())
        r["told"] = (data.get("this_run") or {}).get("told")
        r["best_loss"] = data.get("best_loss")
        r["service_wall_time_s"] = data.get("wall_time_s")
    return r


def run_peer(trials: int, a: argparse.Namespace, data_file: Path, root: Path, n: int) -> dict[str, Any]:
    d = root / f"peer-{trials}-{n}"
    d.mkdir()
    cmd = [sys.executable, str(PEER), "--journal", str(d / "journal.log"), "--data", str(data_file),
           "--trials", str(trials), "--replicates", str(a.replicates), "--processes", str(a.processes),
           "--seed", str(a.seed), "--fixed", json.dumps(a.fixed)]
    r = measure(cmd, {}, d, "peer")
    try:
        out = json.loads((d / "peer.out").read_text().strip().splitlines()[-1])
        r["told"], r["best_loss"] = out["trials"], out["best_loss"]
    except (IndexError, ValueError, KeyError):
        pass
    return r


def summarise(rows: list[dict[str, Any]], trial_counts: list[int]) -> list[dict[str, Any]]:
    out = []
    for way in ("service", "base", "peer"):
        med: dict[int, dict[str, float]] = {}
        for t in trial_counts:
            rs = [r for r in rows if r["way"] == way and r["trials"] == t and r["rc"] == 0]
            if not rs:
                continue
            m = {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "cpu_s", "sim_cpu_s", "nonsim_cpu_s")}
            m["n"] = len(rs)
            med[t] = m
            out.append({"way": way, "trials": t, "runs": len(rs), **{k: round(v, 2) for k, v in m.items() if k != "n"},
                        "trials_per_s": round(t / m["wall_s"], 3), "nonsim_per_trial": round(m["nonsim_cpu_s"] / t, 3)})
        if len(med) >= 2:
            t1, t2 = min(med), max(med)
            per = (med[t2]["nonsim_cpu_s"] - med[t1]["nonsim_cpu_s"]) / (t2 - t1)
            out.append({"way": way, "trials": f"{t1}->{t2}", "fixed_cpu_s": round(med[t1]["nonsim_cpu_s"] - t1 * per, 2),
                        "per_trial_cpu_s": round(per, 4)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", default="40,200", help="comma list of trial budgets")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--replicates", type=int, default=3)
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="peer: processes (default: cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--population", type=int, default=None,
                   help="people in the model (default 30000: ~0.2 s a replicate); small = coordination cost alone")
    p.add_argument("--only", choices=["service", "peer"], default=None)
    p.add_argument("--src", default=None, help="run the service from this source directory (PYTHONPATH)")
    p.add_argument("--base-src", default=None,
                   help="also run the service from this source directory (e.g. an older commit's src/), as way 'base'")
    p.add_argument("--service-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the service's command (repeatable)")
    p.add_argument("--profile", default=None, help="directory for py-spy profiles of one extra service run per trial count")
    p.add_argument("--keep", action="store_true", help="keep the run directories (logs, studies)")
    p.add_argument("--json", dest="json_out", required=True)
    a = p.parse_args(argv)
    a.service_env = dict(kv.split("=", 1) for kv in a.service_env)
    counts = [int(x) for x in a.trials.split(",") if x.strip()]
    become_subreaper()
    a.fixed = {"population": a.population} if a.population else {}
    incidence = observed(a.fixed)
    env = machine()
    rows: list[dict[str, Any]] = []
    root = Path(tempfile.mkdtemp(prefix="cpu-per-trial-"))
    data_file = root / "data.json"
    data_file.write_text(json.dumps({"incidence": incidence}))
    print(f"runs in {root}; {a.replicates} replicates, trials {counts}, {a.pairs} pairs, load {os.getloadavg()[0]:.2f}",
          flush=True)
    ways = [a.only] if a.only else ["service", "peer"]
    if a.base_src:
        ways.insert(1, "base")
    for n in range(a.pairs):
        for t in counts:
            for way in (ways if n % 2 == 0 else ways[::-1]):
                if way == "peer":
                    r = run_peer(t, a, data_file, root, n)
                else:
                    src = a.base_src if way == "base" else a.src
                    r = run_service(t, a, incidence, root, n, src=src, label=way)
                r.update(way=way, trials=t, pair=n)
                rows.append(r)
                print(json.dumps(r), flush=True)
    if a.profile:
        prof = Path(a.profile)
        prof.mkdir(parents=True, exist_ok=True)
        for t in counts:
            run_service(t, a, incidence, root, 99, profile=prof, src=a.src)
    summary = summarise(rows, counts)
    print_table([s for s in summary if "runs" in s], [
        ("way", "way", ""), ("trials", "trials", ""), ("runs", "runs", "d"), ("wall_s", "wall s", ".1f"),
        ("trials_per_s", "trials/s", ".3f"), ("cpu_s", "CPU-s", ".1f"), ("sim_cpu_s", "sim CPU-s", ".1f"),
        ("nonsim_cpu_s", "non-sim CPU-s", ".1f"), ("nonsim_per_trial", "non-sim/trial", ".3f")])
    for s in summary:
        if "per_trial_cpu_s" in s:
            print(f"{s['way']}: fixed {s['fixed_cpu_s']} CPU-s, per trial {s['per_trial_cpu_s']} CPU-s ({s['trials']})")
    Path(a.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json_out).write_text(json.dumps({"runs": rows, "summary": summary, "machine": env,
                                            "args": {k: v for k, v in vars(a).items()}}, indent=2, default=str) + "\n")
    print(f"wrote {a.json_out}")
    if not a.keep:
        import shutil
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
