"""StudyBackend is the only way to a study: no code outside backend/ uses Optuna's storage directly.

The one sanctioned use of ``StudyBackend.optuna_storage`` outside ``backend/`` is to build
an ``optuna.Study`` over it (``optuna.create_study(storage=...)`` / ``optuna.load_study``),
since samplers and ``study.ask`` need one. Reading or writing the storage itself
(``get_all_trials``, ``set_study_system_attr``, ...) goes through the backend's methods, whose
contract (backend/base.py) every storage kind honours.
"""

from __future__ import annotations

import ast
from pathlib import Path

import optuna
import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "modelops_calabaria"
# Every method of Optuna's storage interface: calling one outside backend/ bypasses the gateway.
STORAGE_METHODS = frozenset(
    name for name in dir(optuna.storages.BaseStorage) if not name.startswith("_") and callable(getattr(optuna.storages.BaseStorage, name))
)
STUDY_BUILDERS = {"create_study", "load_study"}


def _modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if "backend" not in p.relative_to(PACKAGE).parts]


def _uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    sanctioned: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in STUDY_BUILDERS:
            sanctioned |= {id(k.value) for k in node.keywords if k.arg == "storage"}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "optuna_storage" and id(node) not in sanctioned:
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: .optuna_storage outside optuna.create_study/load_study")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in STORAGE_METHODS
                and node.func.attr.startswith(("get_", "set_", "create_new", "delete_", "check_trial"))):
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: storage method {node.func.attr}()")
    return found


def test_the_storage_interface_is_what_this_test_knows() -> None:
    assert {"get_all_trials", "set_study_system_attr", "get_study_system_attrs", "get_n_trials"} <= STORAGE_METHODS


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_raw_storage_use_outside_the_backend(path: Path) -> None:
    assert _uses(path) == []


def test_the_check_finds_a_raw_use(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f(b, sid):\n    return b.optuna_storage.get_all_trials(sid)\n")
    ok = tmp_path / "ok.py"
    ok.write_text("import optuna\ndef f(b):\n    return optuna.load_study(study_name='s', storage=b.optuna_storage)\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path
    try:
        assert len(_uses(bad)) == 2 and _uses(ok) == []
    finally:
        PACKAGE = saved
