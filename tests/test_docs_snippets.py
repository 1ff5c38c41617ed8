"""The documentation stays true: README's and docs' Python snippets run as saved scripts,
and the documented optuna-dashboard commands build a URL Optuna's tools accept."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_snippets() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for i, block in enumerate(re.findall(r"^```python\n(.*?)^```", doc.read_text(encoding="utf-8"), re.S | re.M)):
            found.append((f"{doc.relative_to(ROOT)}#{i}", block))
    return found


def test_there_are_snippets_to_run():
    assert any(name.startswith("README.md") for name, _ in python_snippets())


@pytest.mark.slow
@pytest.mark.parametrize(("name", "code"), python_snippets(), ids=[n for n, _ in python_snippets()])
def test_python_snippet_runs_as_a_script(name, code, tmp_path):
    # run from a copy of the repository's examples, as a user who saved the snippet would
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    script = tmp_path / "snippet.py"
    script.write_text(code)
    env = {**os.environ, "CALABARIA_LOCAL_WORKERS": "2"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, f"{name}:\n{proc.stderr[-3000:]}"


def _dashboard_command(kind: str) -> str:
    if kind == "compose":
        service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["optuna-dashboard"]
        shell = service["command"][2].replace("$$", "$")  # compose's own escape
    else:
        docs = yaml.safe_load_all((ROOT / "deploy/k8s/components/dashboard/dashboard.yaml").read_text())
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        shell = deployment["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert shell.startswith("exec optuna-dashboard ")
    return shell.replace("exec optuna-dashboard", "printf '%s\\n'", 1)


@pytest.mark.parametrize("kind", ["compose", "k8s"])
@pytest.mark.parametrize("dsn", ["postgres://u:pw@db:5432/calabaria", "postgresql://u:pw@db:5432/calabaria",
                                 "postgresql+psycopg2://u:pw@db:5432/calabaria"])
def test_dashboard_commands_name_the_psycopg2_driver_once(kind, dsn):
    out = subprocess.run(["sh", "-c", _dashboard_command(kind)], env={"CALABARIA_STORAGE": dsn, "PATH": os.environ["PATH"]},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[-1] == "postgresql+psycopg2://u:pw@db:5432/calabaria"
