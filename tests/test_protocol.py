"""The model protocol and safe resume: starting points, fingerprints, sibling imports,
--seed, signature errors, the dry run, `calabaria models` and `schema`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from modelops_calabaria import Settings, run_calibration
from modelops_calabaria.errors import JobSpecError, StudyMismatchError
from modelops_calabaria.job import job_from_dict, job_schema

from conftest import make_job, support_model, unique

CALABARIA = Path(sys.executable).with_name("calabaria")


def _settings(storage: str, parallel: bool = True, fast_path: bool = False, scheduler: str = "inline") -> Settings:
    return Settings(parallel_trials=parallel, storage=storage, scheduler=scheduler, local_workers=2,
                    log_format="json", fast_path=fast_path)


def _trials(study: str, storage: str) -> list:
    from modelops_calabaria.backend.factory import open_optuna_storage
    from modelops_calabaria.storage import parse_storage_url

    return optuna.load_study(study_name=study, storage=open_optuna_storage(parse_storage_url(storage), 1)).get_trials()


def _cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CALABARIA_") and k != "PARALLEL_TRIALS"}
    clean.update(env or {})
    return subprocess.run([str(CALABARIA), *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=clean)


STARTS = [{"a": 0.25, "b": 1.5}, {"a": 1.75, "b": 0.5}, {"a": 1.0, "b": 1.0}]


def _start_job(tmp_path, study: str, max_trials: int = 12):
    return make_job(tmp_path, study=study, max_trials=max_trials, start=STARTS[:2],
                    parameters={"a": {"lower": 0.0, "upper": 2.0, "guess": 1.0}, "b": {"lower": 0.0, "upper": 2.0, "guess": 1.0}})


def _check_starts_once(trials, max_trials: int) -> None:
    assert len(trials) == max_trials
    assert all(t.state == TrialState.COMPLETE for t in trials)  # nothing left WAITING
    for point in STARTS:
        assert sum(t.params == point for t in trials) == 1, point


def test_starting_points_run_first_and_once_across_coordinators(tmp_path):
    """Two coordinators on one study (one creates it, one joins): each start point exactly once."""
    storage = f"sqlite:///{tmp_path}/s.db"
    job = _start_job(tmp_path, unique("starts"), max_trials=16)
    errors: list[BaseException] = []

    def coordinator(joining: bool) -> None:
        try:
            run_calibration(job, _settings(storage), output_dir=tmp_path / ("b" if joining else "a"),
                            concurrency=3, joining=joining)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    first = threading.Thread(target=coordinator, args=(False,))
    first.start()
    second = threading.Thread(target=coordinator, args=(True,))
    second.start()
    first.join()
    second.join()
    assert not errors, errors
    trials = _trials(job.study, storage)
    _check_starts_once(trials, 16)
    assert {tuple(sorted(t.params.items())) for t in trials if t.number < 3} == {tuple(sorted(p.items())) for p in STARTS}


def test_starting_points_on_postgresql(tmp_path, pg_url):
    job = _start_job(tmp_path, unique("starts-pg"))
    run_calibration(job, _settings(pg_url), output_dir=tmp_path / "run", concurrency=4)
    _check_starts_once(_trials(job.study, pg_url), 12)


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "batched"])
def test_starting_points_with_the_fast_path(tmp_path, parallel):
    storage = f"sqlite:///{tmp_path}/s.db"
    job = _start_job(tmp_path, unique("starts-fast"))
    run_calibration(job, _settings(storage, parallel, fast_path=True), output_dir=tmp_path / "run", concurrency=3)
    _check_starts_once(_trials(job.study, storage), 12)


def test_changed_data_or_model_is_refused_then_accepted(tmp_path):
    storage = f"sqlite:///{tmp_path}/s.db"
    model = tmp_path / "m.py"
    model.write_text("import numpy as np\n\ndef f(params, seed):\n    return {'y': params['a'] * np.arange(3.0) + params['b']}\n")
    base = {"study": "resume", "model": "m.py:f", "parameters": {"a": {"lower": 0, "upper": 2}, "b": {"lower": 0, "upper": 2}},
            "targets": [{"name": "y", "output": "y", "data": {"t": [0, 1, 2], "y": [1.0, 2.0, 3.0]}, "score": "sse"}],
            "n_replicates": 1, "max_trials": 3}
    run_calibration(job_from_dict(base, base_dir=tmp_path), _settings(storage), output_dir=tmp_path / "r1")
    changed = json.loads(json.dumps(base))
    changed["targets"][0]["data"]["y"] = [1.0, 2.0, 4.0]
    with pytest.raises(StudyMismatchError, match="observed data of target 'y' changed") as info:
        run_calibration(job_from_dict(changed, base_dir=tmp_path), _settings(storage), output_dir=tmp_path / "r2", max_trials=5)
    assert "--accept-changes" in str(info.value) and "new study name" in str(info.value)
    model.write_text(model.read_text() + "\n# edited\n")
    with pytest.raises(StudyMismatchError, match="the model's file changed"):
        run_calibration(job_from_dict(base, base_dir=tmp_path), _settings(storage), output_dir=tmp_path / "r2", max_trials=5)
    result = run_calibration(job_from_dict(changed, base_dir=tmp_path), _settings(storage), output_dir=tmp_path / "r2",
                             max_trials=5, accept_changes=True)
    assert result.trials["COMPLETE"] == 5
    # accepted: the next resume with the same inputs goes through without the flag
    run_calibration(job_from_dict(changed, base_dir=tmp_path), _settings(storage), output_dir=tmp_path / "r3", max_trials=5)


def test_spent_budget_points_to_extend(tmp_path):
    from structlog.testing import capture_logs

    storage = f"sqlite:///{tmp_path}/s.db"
    job = make_job(tmp_path, study=unique("spent"), max_trials=3)
    run_calibration(job, _settings(storage), output_dir=tmp_path / "r1")
    with capture_logs() as logs:
        run_calibration(job, _settings(storage), output_dir=tmp_path / "r2")
    notes = [e["event"] for e in logs if "--extend" in e["event"]]
    assert notes and "already holds 3 trials of its budget of 3" in notes[0]


def test_failed_trials_budget_note_says_most_failed():
    from modelops_calabaria.calibration.provenance import budget_note

    assert "7 of them failed" in budget_note(10, 10, 7)
    assert budget_note(9, 10, 7) is None


SIBLING_MODEL = """
from wave_helper_{tag} import curve


def model(params, seed):
    return {{"y": curve(params["a"], params["b"])}}
"""
SIBLING_HELPER = """
import numpy as np


def curve(a, b):
    return a * np.arange(3.0) + b
"""


@pytest.mark.parametrize("where", ["inline", "local-cluster"])
def test_model_file_imports_a_module_beside_it(tmp_path, where, scheduler):
    tag = unique("m").replace("-", "_")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.py").write_text(SIBLING_MODEL.format(tag=tag))
    (folder / f"wave_helper_{tag}.py").write_text(SIBLING_HELPER)
    job = make_job(tmp_path, model=f"{folder / 'model.py'}:model", max_trials=6)
    result = run_calibration(job, _settings(f"sqlite:///{tmp_path}/s.db", scheduler="inline" if where == "inline" else scheduler),
                             output_dir=tmp_path / "run")
    assert result.trials["COMPLETE"] == 6


def test_wrong_signature_states_the_expected_one(tmp_path):
    from modelops_calabaria.models import load_model

    (tmp_path / "bad.py").write_text("def model(params):\n    return {}\n")
    with pytest.raises(JobSpecError, match=r"cannot be called as model\(params, seed\)"):
        load_model(f"{tmp_path / 'bad.py'}:model")


@pytest.mark.slow
def test_validate_runs_the_model_once(tmp_path):
    (tmp_path / "m.py").write_text("import numpy as np\n\ndef f(params, seed):\n    return {'y': params['beta'] * np.ones(3)}\n")
    job = {"study": "v", "model": "m.py:f", "parameters": {"betta": {"lower": 0, "upper": 1}},
           "targets": [{"name": "y", "output": "y", "data": {"t": [0, 1, 2], "y": [1, 2, 3]}, "score": "sse"}]}
    (tmp_path / "job.json").write_text(json.dumps(job))
    proc = _cli("validate", "job.json", cwd=tmp_path)
    assert proc.returncode == 2 and "KeyError: 'beta'" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert _cli("validate", "job.json", "--no-run", cwd=tmp_path).returncode == 0
    job["parameters"] = {"beta": {"lower": 0, "upper": 1}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    proc = _cli("validate", "job.json", cwd=tmp_path)
    assert proc.returncode == 0 and "dry run at the midpoint: y " in proc.stdout, proc.stderr


def test_missing_package_names_it_and_where_to_install(tmp_path):
    (tmp_path / "m.py").write_text("import no_such_simulator_pkg\n\ndef f(params, seed):\n    return {}\n")
    job = {"study": "v", "model": "m.py:f", "parameters": {"a": {"lower": 0, "upper": 1}},
           "targets": [{"name": "y", "output": "y", "data": {"t": [0], "y": [1]}, "score": "sse"}]}
    (tmp_path / "job.json").write_text(json.dumps(job))
    proc = _cli("validate", "job.json", cwd=tmp_path)
    assert proc.returncode == 2
    assert "'no_such_simulator_pkg', which is not installed" in proc.stderr and "every Dask worker" in proc.stderr


@pytest.mark.slow
def test_seed_flag_and_worker_refuses_another(tmp_path):
    job = make_job(tmp_path, study=unique("seed"), max_trials=2, seed=1)
    data = job.to_storable()
    data["model"] = support_model("linear")
    (tmp_path / "job.json").write_text(json.dumps(data))
    storage = f"sqlite:///{tmp_path}/s.db"
    proc = _cli("calibrate", "job.json", "--seed", "5", "--storage", storage, "--scheduler", "inline", "--output",
                str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    loaded = optuna.load_study(study_name=job.study, storage=storage)
    stored = json.loads(loaded._storage.get_study_system_attrs(loaded._study_id)["calabaria:job"])
    assert stored["seed"] == 5
    proc = _cli("worker", "--study", job.study, "--storage", storage, "--seed", "6", "--scheduler", "inline", cwd=tmp_path)
    assert proc.returncode == 2 and "runs with seed 5, not --seed 6" in proc.stderr, proc.stderr


def test_schema_describes_every_field():
    schema = job_schema()
    missing = []
    for name, model in [("CalibrationJob", schema), *schema["$defs"].items()]:
        for field, prop in model.get("properties", {}).items():
            if not prop.get("description"):
                missing.append(f"{name}.{field}")
    assert not missing, missing
    props = schema["properties"]
    for field in ("replicate_retries", "retry_lost_trials", "start"):
        assert props[field]["description"]
    assert schema["$defs"]["ExecutionSpec"]["properties"]["replicates_per_task"]["description"]
    assert schema["$defs"]["ParameterSpec"]["properties"]["step"]["description"]
    assert schema["$defs"]["ScoreSpec"]["properties"]["floor"]["description"]


def test_models_lists_every_builtin_parameter_and_output(tmp_path):
    import inspect

    from modelops_calabaria.models import BUILTINS
    from modelops_calabaria.models.catalog import CATALOG

    proc = _cli("models", cwd=tmp_path)
    assert proc.returncode == 0
    assert set(CATALOG) == set(BUILTINS)
    for name, fn in BUILTINS.items():
        doc = CATALOG[name]
        assert f"{name}:" in proc.stdout
        required = {p.name: 0.3 for p in doc.parameters if p.default is None}
        outputs = fn({**required, "n_days": 28}, 1)
        assert set(outputs) == {o.name for o in doc.outputs} == set(fn.outputs)
        source = inspect.getsource(sys.modules[fn.__module__])
        for p in doc.parameters:
            assert f'"{p.name}"' in source, p.name  # every documented parameter is read by the code


def test_readme_job_reference_is_a_valid_job():
    import yaml

    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text[text.index("## Job file reference"):]
    start = section.index("```yaml") + len("```yaml")
    job = job_from_dict(yaml.safe_load(section[start:section.index("```", start)]))
    assert job.targets[1].on == ["date", "age_group", "region"] and job.targets[1].match == "accumulate"
    assert len(job.starting_points()) == 2
