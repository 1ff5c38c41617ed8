"""Eight processes open one fresh study file at the same instant: every one succeeds.

Optuna's storage writes its schema version (``version_info``, ``alembic_version``)
whenever it is opened, even read-only, when it finds the tables but not yet the
version: a reader (``calabaria status``, a coordinator checking for an existing
study) that looked at the file while a creator was half-way stamped the version
too, and one of them failed on ``UNIQUE constraint failed: alembic_version.version_num``.
Real processes (spawned) released by one barrier, writers and readers mixed,
repeated on fresh files.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from pathlib import Path

import optuna
import pytest

from modelops_calabaria.backend.factory import open_store
from modelops_calabaria.backend.relational import schema_lock
from modelops_calabaria.errors import StudyNotFoundError
from modelops_calabaria.storage import parse_storage_url

PROCESSES = 8
ROUNDS = 2


def _open(url: str, read_only: bool, barrier, results) -> None:
    target = parse_storage_url(url)
    barrier.wait()
    try:
        deadline = time.monotonic() + 120  # a hang guard only
        while True:  # a reader looks until the study storage is there
            try:
                backend = open_store(target, 1, read_only=read_only)
                break
            except StudyNotFoundError:
                if time.monotonic() > deadline:
                    results.put("reader never saw the study storage")
                    return
                time.sleep(0.01)
        if not read_only:
            with schema_lock(target):  # as the runner creates the study (calibration/runner.py)
                optuna.create_study(study_name="s", storage=backend.optuna_storage, load_if_exists=True)
            backend.ledger.ensure_budget("s", 10)
        backend.close()
        results.put("ok")
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        results.put(f"{type(e).__name__}: {e}")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_eight_processes_create_one_fresh_study_file_at_once(tmp_path: Path, kind: str):
    ctx = mp.get_context("spawn")
    for r in range(ROUNDS):
        url = f"sqlite:///{tmp_path}/s{r}.db" if kind == "sqlite" else f"journal:///{tmp_path}/s{r}.log"
        barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
        procs = [ctx.Process(target=_open, args=(url, i % 2 == 1, barrier, results)) for i in range(PROCESSES)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=300) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert outcomes == ["ok"] * PROCESSES, f"round {r}: {outcomes}"
        backend = open_store(parse_storage_url(url), 1, read_only=True)
        try:
            assert optuna.study.get_all_study_names(storage=backend.optuna_storage) == ["s"]
            assert backend.ledger.budget("s") == (0, 10)
        finally:
            backend.close()


def test_a_reader_waits_for_a_creator_half_way_and_writes_nothing_meanwhile(tmp_path: Path):
    """The interleaving itself: Optuna's tables exist, the version is not stamped yet, the creator
    holds the schema lock. A read-only open (``calabaria status``) waits for it instead of stamping."""
    import sqlalchemy as sa
    from optuna.storages import RDBStorage
    from optuna.storages._rdb import models

    url = f"sqlite:///{tmp_path}/s.db"
    target = parse_storage_url(url)
    opened: list = []

    def read() -> None:
        try:
            opened.append(open_store(target, 1, read_only=True))
        except BaseException as e:  # noqa: BLE001 - checked below
            opened.append(e)

    with schema_lock(target):
        engine = sa.create_engine(url)
        models.BaseModel.metadata.create_all(engine)  # the creator, half-way: tables, no version yet
        with engine.begin() as c:  # alembic's table made, its row not yet written
            c.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        reader = threading.Thread(target=read)
        reader.start()
        reader.join(timeout=3)
        with engine.connect() as c:
            stamped = c.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar_one()
        assert reader.is_alive() and not opened and stamped == 0
        RDBStorage(url).engine.dispose()  # the creator finishes (stamps the version)
        optuna.create_study(study_name="s", storage=url)
        engine.dispose()
    reader.join(timeout=120)
    backend = opened[0]
    assert not isinstance(backend, BaseException), backend
    assert optuna.study.get_all_study_names(storage=backend.optuna_storage) == ["s"]
    backend.close()
