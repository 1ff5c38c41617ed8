"""Job files generated from the job's JSON schema, with values at and beyond every limit.

Every leaf field the schema (``job_schema()``, what ``calabaria schema`` prints) describes
is found by walking it, so a field is covered the day it is added. Each is given values at
its bounds and beyond them, special floats, huge integers, wrong types and the YAML 1.1
forms whose meaning differs from YAML 1.2 (written raw into the YAML text). The contract:
the job is accepted, or refused with a CalabariaError of exit code 2 whose message has no
traceback; never another exception, and nothing created in the working directory.

Three tests: a deterministic sweep of every (field, value) pair through the loader
(fast), a Hypothesis search through the loader and ``prepare`` (what ``validate --no-run``
checks: model, data, sampler, storage, run directory), and a few through the real
``calabaria validate --no-run`` command.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelops_calabaria.errors import CalabariaError
from modelops_calabaria.job import job_schema, load_job

CALABARIA = Path(sys.executable).with_name("calabaria")
CSV = "week,cases\n0,12\n1,35\n2,88\n3,245\n4,636\n5,1458\n6,2643\n7,3340\n8,2693\n9,1519\n"
BASE: dict[str, Any] = {
    "study": "fuzz", "model": "seir",
    "parameters": {"beta": {"lower": 0.2, "upper": 1.2}, "gamma": {"lower": 0.05, "upper": 0.5}},
    "fixed": {"sigma": 0.25, "population": 20000, "initial_infected": 20, "n_days": 70, "reporting_rate": 0.3},
    "targets": [{"name": "weekly_cases", "output": "cases", "data": "cases.csv", "index_column": "week", "score": "poisson_nll"}],
    "n_replicates": 1, "max_trials": 4, "seed": 1,
}
RAW = "__RAW_VALUE__"
# Plain scalars whose meaning differs between YAML 1.1 and 1.2, or that Python cannot parse plainly.
YAML_FORMS = ["017", "1:30", "1_000", "0x10", "0o17", "0b11", "on", "off", "yes", "no", "~", ".nan", ".inf", "-.inf",
              "1e400", "-0", "9" * 5000, "2018-01-01", "'1e3'"]
WRONG_TYPES: list[Any] = [True, False, None, "10", "", [], {}, [1, 2], {"x": 1}]
SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 1e300, 5e-324, 1e-300, 2.0**63, 1e19]
HUGE_INTS = [2**31, 2**53 + 1, 2**63, -(2**63) - 1, 10**40]


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return _resolve(schema, schema["$defs"][ref.rsplit("/", 1)[1]]) if ref else node


def _members(schema: dict[str, Any], node: dict[str, Any]) -> list[dict[str, Any]]:
    node = _resolve(schema, node)
    if "anyOf" in node:
        return [m for sub in node["anyOf"] for m in _members(schema, sub)]
    return [node]


def leaf_fields(schema: dict[str, Any] | None = None) -> list[tuple[tuple[Any, ...], list[dict[str, Any]]]]:
    """Every field of the job schema, as (path into a job, its schema forms), objects included."""
    schema = schema or job_schema()
    found: list[tuple[tuple[Any, ...], list[dict[str, Any]]]] = []

    def walk(path: tuple[Any, ...], node: dict[str, Any], depth: int) -> None:
        forms = _members(schema, node)
        found.append((path, forms))
        if depth > 4:
            return
        for form in forms:
            for name, sub in (form.get("properties") or {}).items():
                walk((*path, name), sub, depth + 1)
            extra = form.get("additionalProperties")
            if isinstance(extra, dict) and extra and path == ("parameters",):
                walk((*path, "beta"), extra, depth + 1)
            if form.get("type") == "array" and isinstance(form.get("items"), dict) and path == ("targets",):
                walk((*path, 0), form["items"], depth + 1)

    for name, sub in schema["properties"].items():
        walk((name,), sub, 0)
    return found


def values_for(forms: list[dict[str, Any]]) -> list[Any]:
    """Values at and beyond the limits of a field's forms, special floats, wrong types."""
    values: list[Any] = list(WRONG_TYPES)
    for form in forms:
        kind = form.get("type")
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in form:
                bound = form[key]
                step = 1 if kind == "integer" else max(abs(bound) * 1e-9, 1e-12)
                values += [bound, bound - step, bound + step]
        if kind == "integer":
            values += [0, -1, *HUGE_INTS]
        if kind == "number":
            values += [0, -1.5, *SPECIAL_FLOATS, *HUGE_INTS]
        if kind == "string":
            values += ["x" * (form.get("maxLength", 300) + 1), "a\n", "é", "on", "../../etc/passwd", "/dev/zero"]
        if kind == "array":
            values += [[None], ["x"] * (form.get("maxItems", 10) + 1)]
        if "enum" in form:
            values += [*form["enum"], "nope"]
        if "const" in form:
            values += [form["const"], "nope"]
    return values


def _set(job: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    job = yaml.safe_load(yaml.safe_dump(job))  # a deep copy
    node: Any = job
    for key in path[:-1]:
        if isinstance(key, int):
            node = node[key]
            continue
        if not isinstance(node.get(key), (dict, list)):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return job


def write_job(directory: Path, path: tuple[Any, ...], value: Any, raw: str | None = None) -> Path:
    """The base job with ``value`` at ``path`` (or the raw YAML text ``raw`` there)."""
    job = _set(BASE, path, RAW if raw is not None else value)
    text = yaml.safe_dump(job, sort_keys=False, allow_unicode=True, width=10**9)
    if raw is not None:
        text = text.replace(RAW, raw)
    (directory / "cases.csv").write_text(CSV)
    file = directory / "job.yaml"
    file.write_text(text)
    return file


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def check_contract(directory: Path, file: Path, *, prepare: bool) -> None:
    """Accepted, or refused with exit code 2 and no traceback; nothing created."""
    before = _files(directory)
    cwd = os.getcwd()
    os.chdir(directory)
    try:
        job = load_job(file)
        if prepare:
            from modelops_calabaria.calibration.runner import prepare as prepare_run
            from modelops_calabaria.settings import resolve_settings

            prepare_run(job, resolve_settings(job.execution.model_dump()))
    except CalabariaError as e:
        assert e.exit_code == 2, (e.exit_code, str(e))
        message = str(e)
        assert message.strip() and "Traceback" not in message, message
    finally:
        os.chdir(cwd)
    assert _files(directory) == before, sorted(_files(directory) - before)


FIELDS = leaf_fields()
CASES = [(path, value) for path, forms in FIELDS for value in values_for(forms)]


def test_the_schema_walk_finds_every_field():
    paths = {path for path, _ in FIELDS}
    for name in job_schema()["properties"]:
        assert (name,) in paths
    for nested in [("parameters", "beta", "lower"), ("targets", 0, "score"), ("sampler", "options"), ("stop", "patience"),
                   ("reevaluate", "replicates"), ("execution", "storage"), ("parameters", "beta", "prior", "sd")]:
        assert nested in paths, nested
    assert len(CASES) > 1000


def test_every_field_at_and_beyond_its_limits(tmp_path):
    """The sweep: every field x every value of values_for, and every YAML 1.1 form, through the loader."""
    for i, (path, value) in enumerate(CASES):
        directory = tmp_path / str(i)
        directory.mkdir()
        check_contract(directory, write_job(directory, path, value), prepare=False)
    for i, (path, _) in enumerate(FIELDS):
        for j, form in enumerate(YAML_FORMS):
            directory = tmp_path / f"y{i}-{j}"
            directory.mkdir()
            check_contract(directory, write_job(directory, path, None, raw=form), prepare=False)


_field = st.sampled_from(FIELDS)


@st.composite
def _mutation(draw: Any) -> tuple[tuple[Any, ...], Any, str | None]:
    path, forms = draw(_field)
    if draw(st.integers(0, 4)) == 0:
        return path, None, draw(st.sampled_from(YAML_FORMS))
    typed = st.sampled_from(values_for(forms))
    free = st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30), st.booleans())
    return path, draw(st.one_of(typed, free)), None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mutations=st.lists(_mutation(), min_size=1, max_size=3))
def test_generated_jobs_keep_the_contract(tmp_path_factory, mutations):
    """Up to three fields changed at once, through the loader and ``prepare`` (validate --no-run)."""
    directory = tmp_path_factory.mktemp("job")
    job = BASE
    raws = {}
    for n, (path, value, raw) in enumerate(mutations):
        job = _set(job, path, f"{RAW}{n}" if raw is not None else value)
        if raw is not None:
            raws[f"{RAW}{n}"] = raw
    text = yaml.safe_dump(job, sort_keys=False, allow_unicode=True, width=10**9)
    for marker, raw in raws.items():
        text = text.replace(marker, raw)
    (directory / "cases.csv").write_text(CSV)
    (directory / "job.yaml").write_text(text)
    check_contract(directory, directory / "job.yaml", prepare=True)


@pytest.mark.parametrize("path, raw", [
    (("max_trials",), "017"), (("timeout_s",), "1e300"), (("fixed", "sigma"), ".nan"),
    (("sampler",), "{name: cmaes, options: {popsize: 1000000000}}"), (("concurrency",), "auto"),
])
def test_through_the_command(tmp_path, path, raw):
    """A few generated jobs through the real ``calabaria validate --no-run``: exit 0 or 2, one error line."""
    file = write_job(tmp_path, path, None, raw=raw)
    before = _files(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALABARIA_")}
    proc = subprocess.run([str(CALABARIA), "validate", "--no-run", str(file)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 2), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    if proc.returncode == 2:
        assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1, proc.stderr
    else:
        assert raw == "auto", proc.stdout  # the documented form is accepted
    assert _files(tmp_path) == before


@pytest.mark.parametrize("field, value", [("concurrency", "auto"), ("ramp", "off"), ("ramp", False), ("sampler", "grid"),
                                          ("concurrency", 8)])
def test_the_schema_accepts_the_documented_short_forms(field, value):
    """An editor validating a job file against `calabaria schema` accepts what the loader accepts."""
    import jsonschema

    job = _set(BASE, (field,), value)
    jsonschema.validate(job, job_schema())
    jsonschema.validate(_set(BASE, ("targets", 0, "score"), "sse"), job_schema())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_set(BASE, (field,), "sometimes"), job_schema())
