"""Shared fixtures: a real Dask cluster, real PostgreSQL, job builders.

PostgreSQL tests use CALABARIA_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test).
When it is unreachable they skip on a laptop but FAIL under CI=true.

Fault tests that stop or restart PostgreSQL use ``throwaway_pg`` instead: a server of
their own (initdb in a temporary directory, a free loopback port), so that the suite
never disturbs a server anything else on the machine uses.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
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


@pytest.fixture(autouse=True)
def _release_study_connections():
    """After each test, close the connections of every study backend it opened.

    The registry behind ``backend_of`` holds backends weakly, but a test may still hold a
    study (and so its storage's pool) in a module-level or cached object; closing them
    here keeps a whole suite well under PostgreSQL's ``max_connections``. Disposing an
    engine only closes its idle connections: a storage used again opens new ones.
    """
    yield
    import gc

    from modelops_calabaria.backend import factory

    for backend in list(factory._BY_STORAGE.values()):
        try:
            backend.close()
        except Exception:  # noqa: BLE001 - a server a fault test stopped: nothing left to close
            pass
    factory._BY_STORAGE.clear()
    gc.collect()  # storages nobody holds any more: their pools' connections close with them


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    configure_logging("json")


@pytest.fixture(scope="session")
def dask_cluster():
    """A real LocalCluster: 2 worker processes x 2 threads, shared by the session."""
    from distributed import LocalCluster
    import logging

    cluster = LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address="127.0.0.1:0",
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
    """URL of the test PostgreSQL database; fails (CI) or skips (laptop) when unreachable.

    Under pytest-xdist each worker gets a fresh database of its own next to
    CALABARIA_TEST_PG's (``<name>_gw0``, ...), so that tests which compare a
    database before and after (bad inputs, status) never see another worker's studies.
    """
    problem = _pg_reachable(PG_URL)
    if problem:
        _unavailable(f"PostgreSQL at {PG_URL} is unreachable: {problem}")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return PG_URL
    base, _, name = PG_URL.rpartition("/")
    own = f"{name.split('?')[0]}_{worker}"
    admin = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg2://", 1),
                             isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{own}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{own}"'))
    finally:
        admin.dispose()
    url = f"{base}/{own}"
    os.environ["CALABARIA_TEST_PG"] = url  # subprocesses the tests start see the same database
    return url


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(message: str) -> None:
    """A test's service is missing: a failure under CI=true, a skip elsewhere."""
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


def _postgres_bin() -> Path | None:
    """The directory of initdb/pg_ctl: PATH, else the newest /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0, reverse=True):
        if Path(candidate, "initdb").is_file() and Path(candidate, "pg_ctl").is_file():
            return Path(candidate)
    return None


class ThrowawayPostgres:
    """A PostgreSQL server of one's own: a data directory in a fresh temporary directory,
    trust authentication, listening on 127.0.0.1 only, on a free port, its Unix socket in
    that directory. Run as the ``postgres`` user when the tests run as root (PostgreSQL
    refuses root), which then owns the directory. ``url`` names its ``postgres`` database.
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="calabaria-pg-"))  # not pytest's tmp_path: root-only mode 700
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as: list[str] = []
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        os.chmod(self.root, 0o700)

    def _run(self, *args: str, timeout: float = 120) -> None:
        proc = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}\n{log}")

    def init(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--locale=C", "--no-sync")

    def start(self, max_connections: int = 200) -> None:
        """Start the server; with a small ``max_connections`` no slot is kept back for superusers."""
        reserved = "" if max_connections >= 20 else " -c superuser_reserved_connections=0"
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
                   f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections={max_connections}"
                   f"{reserved}")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "120", "start")

    def start_again(self, max_connections: int) -> None:
        """Stop and start with another ``max_connections`` (a setting read only at start)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        self.start(max_connections)

    def restart(self) -> None:
        """Stop (fast: open connections are cut, as a real restart cuts them) and start again."""
        # -l as for start: without it the new server writes to pg_ctl's stdout, whose pipe then never closes.
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w", "-t", "120",
                  "restart")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop")
            except (RuntimeError, subprocess.SubprocessError):
                pass
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def throwaway_pg() -> Iterator[ThrowawayPostgres]:
    """A fresh PostgreSQL server for this test alone, stopped and deleted after it.

    Fails under CI=true when it cannot be started (binaries missing, initdb failing);
    skips elsewhere.
    """
    bindir = _postgres_bin()
    if bindir is None:
        _unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin")
    server = ThrowawayPostgres(bindir)
    try:
        server.init()
        server.start()
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        server.stop()
        _unavailable(f"could not start a throw-away PostgreSQL server: {e}")
    try:
        yield server
    finally:
        server.stop()


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
