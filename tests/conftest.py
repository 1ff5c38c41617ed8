"""Shared fixtures: a real Dask cluster, real PostgreSQL, job builders.

PostgreSQL tests use CALABARIA_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test).
When it is unreachable they skip on a laptop but FAIL under CI=true.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from modelops_calabaria.job import CalibrationJob, job_from_dict
from modelops_calabaria.logging import configure_logging

SUPPORT = Path(__file__).parent / "support"
PG_URL = os.environ.get("CALABARIA_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def support_model(name: str) -> str:
    """Entrypoint of a test model in tests/support/models.py (loaded by file path on the workers)."""
    return f"{SUPPORT / 'models.py'}:{name}"


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    configure_logging("json")


@pytest.fixture(scope="session")
def dask_cluster():
    """A real LocalCluster: 2 worker processes x 2 threads, shared by the session."""
    from distributed import LocalCluster
    import logging

    cluster = LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    yield cluster
    cluster.close()


@pytest.fixture
def scheduler(dask_cluster) -> str:
    return dask_cluster.scheduler_address


def _pg_reachable(url: str) -> str | None:
    try:
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1), connect_args={"connect_timeout": 3})
        with engine.connect() as c:
            c.execute(sa.text("select 1"))
        engine.dispose()
        return None
    except Exception as e:  # noqa: BLE001
        return str(e).splitlines()[0]


@pytest.fixture(scope="session")
def pg_url() -> str:
    """URL of the test PostgreSQL database; fails (CI) or skips (laptop) when unreachable."""
    problem = _pg_reachable(PG_URL)
    if problem:
        message = f"PostgreSQL at {PG_URL} is unreachable: {problem}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return PG_URL


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_job(tmp_path: Path, **overrides: Any) -> CalibrationJob:
    """A small, fast job on the deterministic `linear` test model (override any field)."""
    data: dict[str, Any] = {
        "study": unique("job"),
        "model": support_model("linear"),
        "parameters": {"a": {"lower": 0.0, "upper": 2.0}, "b": {"lower": 0.0, "upper": 2.0}},
        "targets": [{
            "name": "y",
            "output": "y",
            "data": {"t": [0, 1, 2], "y": [1.0, 2.0, 3.0]},
            "score": "sse",
        }],
        "n_replicates": 2,
        "max_trials": 10,
        "seed": 1,
    }
    data.update(overrides)
    return job_from_dict(data, base_dir=tmp_path)


STORAGE_KINDS = ["sqlite", "journal", "postgresql"]


@pytest.fixture(params=STORAGE_KINDS)
def storage_url(request, tmp_path) -> str:
    """One URL per backend: the contract tests run against each (PostgreSQL: real server)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/study.db"
    if request.param == "journal":
        return f"journal:///{tmp_path}/study.log"
    return request.getfixturevalue("pg_url")
