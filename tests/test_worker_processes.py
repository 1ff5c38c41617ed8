"""Local worker processes: forked from one server that imported them, and quiet while idle.

The fork server is started once per coordinator process, so these tests run their cluster in
a fresh Python process of their own (a real subprocess): what the server preloaded there is
this test's model, whatever other tests started in the pytest process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

MODEL = '''
import os
with open(os.environ["IMPORT_LOG"], "a") as f:  # one line per process that imports this file
    f.write(f"{os.getpid()}\\n")

def counted(params, seed):
    return {"y": [float(params["x"]) + seed, 2.0, 3.0]}

counted.outputs = ("y",)
'''

SCRIPT = '''
import json, os, sys

def worker_state():
    import os, sys, dask
    return {"pid": os.getpid(), "ppid": os.getppid(), "omp": os.environ.get("OMP_NUM_THREADS"),
            "profile": dask.config.get("distributed.worker.profile.enabled"),
            "trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            "pandas": "pandas" in sys.modules}

if __name__ == "__main__":
    from modelops_calabaria.models import load_model
    from modelops_calabaria.simulation import connect_service
    from modelops_calabaria.simulation.task import SimContext
    load_model(sys.argv[1])  # as a run does: the coordinator checks the model first
    service = connect_service(None, SimContext(sys.argv[1], {}, (), None, 0), local_workers=2, processes=True)
    try:
        states = list(service.client.run(worker_state).values())
        result = service.client.submit(lambda: __import__("modelops_calabaria.simulation.task", fromlist=["x"])
                                       .run_replicate(SimContext(sys.argv[1], {}, (), None, 0), {"x": 1.5}, 7, 0),
                                       pure=False).result()
        # The service restarts a worker left running a timed-out model: the new one comes from the server too.
        import time
        service.recycle([sorted(service.client.nthreads())[0]])
        for thread in service._recyclers:
            thread.join(120)
        deadline = time.monotonic() + 60
        while len(service.client.nthreads()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        after = list(service.client.run(worker_state).values())
        print(json.dumps({"coordinator": os.getpid(), "workers": states, "after_restart": after, "error": result.error,
                          "env_left": os.environ.get("CALABARIA_PRELOAD_MODEL"),
                          "pandas_here": "pandas" in sys.modules}))
    finally:
        service.close()
'''


def _run(tmp_path: Path, extra_env: dict[str, str] | None = None) -> tuple[dict, list[int]]:
    (tmp_path / "model.py").write_text(MODEL)
    (tmp_path / "script.py").write_text(SCRIPT)
    log = tmp_path / "imports.log"
    env = {**os.environ, "IMPORT_LOG": str(log), **(extra_env or {})}
    env.pop("CALABARIA_PRELOAD_MODEL", None)
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    out = subprocess.run([sys.executable, str(tmp_path / "script.py"), f"{tmp_path / 'model.py'}:counted"],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), [int(x) for x in log.read_text().split()]


def test_local_workers_are_forked_from_one_server_that_imported_the_model_once(tmp_path):
    report, importers = _run(tmp_path)
    workers = report["workers"]
    assert len(workers) == 2 and report["error"] is None
    server = {w["ppid"] for w in workers}
    # Both workers are children of one server, which is not the coordinator ...
    assert len(server) == 1 and report["coordinator"] not in server
    # ... and the model file was imported by the coordinator (its checks) and the server only:
    # the workers inherited it instead of importing it again.
    assert sorted(importers) == sorted([report["coordinator"], *server])
    assert not {w["pid"] for w in workers} & set(importers)
    # Dask's pre-spawn environment still reaches the workers (numpy reads it at import).
    assert all(w["omp"] == "1" for w in workers)
    # The model's name does not stay in the coordinator's environment, and Dask's own
    # fork-server preload (pandas and its other optional packages) was not imported here.
    assert report["env_left"] is None
    assert report["pandas_here"] is False and not any(w["pandas"] for w in workers)
    # A worker the service restarts (after a timeout) is forked from the same server, without imports.
    after = report["after_restart"]
    assert len(after) == 2 and {w["ppid"] for w in after} == server
    assert len({w["pid"] for w in after} - {w["pid"] for w in workers}) == 1
    assert not {w["pid"] for w in after} & set(importers)
    # The local cluster's settings reach the workers: no statistical profiler while they run,
    # and glibc's adaptive allocator (Dask's MALLOC_TRIM_THRESHOLD_ made numpy models slower).
    assert [w["profile"] for w in workers] == [False, False]
    assert [w["trim"] for w in workers] == [None, None]


def test_a_method_the_user_chose_for_dask_worker_processes_stands(tmp_path):
    report, importers = _run(tmp_path, {"DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD": "fork"})
    workers = report["workers"]
    assert report["error"] is None
    # fork: the workers are children of the coordinator's nannies (same process), and inherit
    # the model the coordinator imported: no server, no import of their own.
    assert {w["ppid"] for w in workers} == {report["coordinator"]}
    assert importers == [report["coordinator"]]


def test_importing_the_run_path_does_not_import_scipy_stats():
    code = textwrap.dedent("""
        import sys
        import modelops_calabaria.calibration.runner, modelops_calabaria.cli
        print(sorted(m for m in ("scipy.stats", "pandas", "distributed", "matplotlib") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


WATCH_SCRIPT = '''
import json, sys, time
if __name__ == "__main__":
    from modelops_calabaria.simulation import connect_service
    from modelops_calabaria.simulation.task import SimContext
    service = connect_service(None, SimContext(sys.argv[1], {}, (), None, 0), local_workers=2, processes=True)
    try:
        cluster = service._cluster
        before = sorted(service.client.nthreads())
        # A nanny that gives up (as when its worker's restart fails on a loaded machine): the
        # cluster drops it after its lost-worker timeout and would never start another.
        name, nanny = sorted(cluster.workers.items())[0]
        cluster.sync(nanny.close)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (len(service.client.nthreads()) == 2
                                                  and set(service.client.nthreads()) != set(before)):
            time.sleep(0.5)
        after = sorted(service.client.nthreads())
        result = service.submit(0, {"x": 1.0}, [1, 2]).result()
        print(json.dumps({"before": before, "after": after, "error": result.error}))
    finally:
        service.close()
'''


def test_a_local_worker_whose_nanny_gave_up_is_replaced(tmp_path):
    (tmp_path / "model.py").write_text(MODEL)
    (tmp_path / "watch.py").write_text(WATCH_SCRIPT)
    env = {**os.environ, "IMPORT_LOG": str(tmp_path / "imports.log")}
    out = subprocess.run([sys.executable, str(tmp_path / "watch.py"), f"{tmp_path / 'model.py'}:counted"],
                         capture_output=True, text=True, env=env, timeout=400, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(report["before"]) == 2 and len(report["after"]) == 2
    assert set(report["after"]) != set(report["before"])  # a new worker took the closed one's place
    assert report["error"] is None  # and the cluster runs replicates again
