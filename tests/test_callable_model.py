"""A model given to ``run_calibration`` as the Python function itself (from a notebook or a script)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modelops_calabaria import callables
from modelops_calabaria.job import job_from_dict

from test_multiprocess import env

SUPPORT = Path(__file__).parent / "support"

JOB = {
    "parameters": {"a": {"lower": 0.0, "upper": 2.0}, "b": {"lower": 0.0, "upper": 2.0}},
    "targets": [{"name": "y", "output": "y", "data": {"t": [0, 1, 2], "y": [1.0, 2.0, 3.0]}, "score": "sse"}],
    "n_replicates": 2, "max_trials": 6, "seed": 1, "reevaluate": {"top_k": 0},
}


def test_a_module_function_becomes_its_file_reference() -> None:
    sys.path.insert(0, str(SUPPORT))
    try:
        import models as support_models  # tests/support/models.py
    finally:
        sys.path.remove(str(SUPPORT))
    job = job_from_dict({"study": "callable-file", "model": support_models.linear, **JOB})
    assert job.model == f"{(SUPPORT / 'models.py').resolve()}:linear"
    assert not callables.is_session(job.model)


def test_a_lambda_becomes_a_session_reference_that_only_this_process_resolves() -> None:
    job = job_from_dict({"study": "callable-lambda", "model": lambda params, seed: {"y": [1.0, 2.0, 3.0]}, **JOB})
    assert callables.is_session(job.model)
    assert callables.registered(job.model) is not None
    from modelops_calabaria.models import load_model

    assert load_model(job.model).run({"a": 1.0, "b": 1.0}, 0) == {"y": [1.0, 2.0, 3.0]}


NOTEBOOK = textwrap.dedent('''
    import json, sys
    import numpy as np
    from modelops_calabaria import Settings, run_calibration
    from modelops_calabaria.job import job_from_dict

    def model(params, seed):  # a function of a notebook cell: no file to import it from
        rng = np.random.default_rng(seed)
        t = np.arange(3)
        return {"y": params["a"] * t + params["b"] + rng.normal(0, 0.01, 3)}

    job = job_from_dict({"study": "nb", "model": model, **json.loads(sys.argv[1])})
    settings = Settings(storage=sys.argv[2], scheduler=sys.argv[3] or None, local_processes=None)
    result = run_calibration(job, settings, output_dir=sys.argv[4])
    print(json.dumps({"complete": result.trials["COMPLETE"], "model": job.model}))
''')


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["", "inline"])  # the default local cluster (threads for it) and inline
def test_a_notebook_function_calibrates_on_threads(tmp_path: Path, scheduler: str) -> None:
    done = subprocess.run([sys.executable, "-c", NOTEBOOK, json.dumps(JOB), f"sqlite:///{tmp_path / 's.db'}", scheduler,
                           str(tmp_path / "run")], capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"complete": 6, "model": "python:__main__.model"}


@pytest.mark.slow
def test_a_notebook_function_is_refused_for_other_processes_with_one_line(tmp_path: Path) -> None:
    code = NOTEBOOK.replace("local_processes=None", "local_processes=True")
    code = code.replace("result = run_calibration", "from modelops_calabaria.errors import CalabariaError\ntry:\n    result = run_calibration")
    code = code.replace("print(json.dumps({\"complete\"", "except CalabariaError as e:\n    print('ERR', e); raise SystemExit(2)\nprint(json.dumps({\"complete\"")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(JOB), f"sqlite:///{tmp_path / 's.db'}", "",
                           str(tmp_path / "run")], capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=240)
    assert done.returncode == 2, done.stdout + done.stderr[-2000:]
    assert "defined in this session" in done.stdout
    assert not (tmp_path / "run").exists() and not (tmp_path / "s.db").exists()
