"""Imports only point down the layers stated in docs/architecture.md (read from the source's import graph)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "modelops_calabaria"
ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"

# Lowest first; a module may import from its own layer or any layer below it.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"errors", "redaction", "logging", "settings", "dbretry", "storage", "addresses", "outcome", "outputs", "job", "callables"}),
    ("domain", {"models", "targets", "simulation"}),
    ("backend", {"backend"}),
    ("posterior", {"posterior"}),
    ("reporting", {"reporting"}),
    ("sensitivity", {"sensitivity"}),
    ("calibration", {"calibration"}),
    ("projection", {"projection"}),
    ("entry points", {"cli", "__main__", "__init__"}),
]
RANK = {top: rank for rank, (_, tops) in enumerate(LAYERS) for top in tops}


def _top(module_path: Path) -> str:
    rel = module_path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, first component under modelops_calabaria) of every import in ``path``, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "modelops_calabaria":
                names = [a.name for a in node.names]
            elif node.module.startswith("modelops_calabaria."):
                names = [node.module.split(".")[1]]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("modelops_calabaria.")]
        found += [(node.lineno, n) for n in names]
    return found


def test_every_module_is_in_a_layer():
    tops = {_top(p) for p in SRC.rglob("*.py")}
    assert tops <= set(RANK), f"modules in no layer: {sorted(tops - set(RANK))} (add them to LAYERS and docs/architecture.md)"


def test_imports_only_point_down():
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        top = _top(path)
        if top == "__init__":
            continue  # the package's public API re-exports from every layer
        for line, target in _imports(path):
            if target in RANK and RANK[target] > RANK[top]:
                upward.append(f"{path.relative_to(SRC)}:{line} ({LAYERS[RANK[top]][0]}) imports {target} "
                              f"({LAYERS[RANK[target]][0]})")
    assert not upward, "imports that climb a layer:\n" + "\n".join(upward)


def test_only_the_backend_knows_optunas_storage_internals():
    pattern = re.compile(r"optuna\.storages\._|_rdb|_backend|_study_id|_trial_id|_get_trials")
    hits = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if _top(p) != "backend"
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, f"Optuna storage internals outside backend/: {hits}"


@pytest.mark.parametrize("name", [name for name, _ in LAYERS])
def test_the_layers_are_stated_in_the_architecture_doc(name):
    assert name in ARCHITECTURE.read_text().lower()
