"""Finished simulations on disk, one file per (scenario, draw): what makes a projection resumable.

Each (scenario, draw) is one submission of its ``R`` replicates; when it returns,
its values are written to ``chunks/<scenario>/<draw>.json`` through a temporary
file and ``os.replace`` (atomic on POSIX: a file either holds a whole chunk or
does not exist). A projection killed at any instant (SIGKILL included) and run
again with the same request reads the chunks present and submits only the
others: every requested simulation ends up recorded exactly once; the ones in
flight at the kill were never recorded and run again.

``plan.json`` holds the request's fingerprint (scenarios, draws, seeds, points,
days): a restart with another request into the same directory is refused rather
than mixing two projections. No database is involved, so there is nothing to
test on SQLite or PostgreSQL here: the output directory is the ledger.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from modelops_calabaria.errors import ConfigurationError

PLAN = "plan.json"


def _atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class ChunkStore:
    """The chunk files of one projection's output directory."""

    def __init__(self, out_dir: Path, fingerprint: str) -> None:
        self.dir = out_dir
        self.fingerprint = fingerprint

    def check(self) -> None:
        """Refuse (ConfigurationError) a directory holding another projection's chunks; creates nothing."""
        plan = self.dir / PLAN
        if plan.is_file():
            try:
                stored = json.loads(plan.read_text(encoding="utf-8")).get("fingerprint")
            except (OSError, ValueError):
                stored = None
            if stored != self.fingerprint:
                raise ConfigurationError(f"output {self.dir} holds a projection of another request (other scenarios, "
                                         "draws, seed or dates)", hint="pass a new --output, or delete that directory to start afresh")

    def open(self, plan: dict[str, Any]) -> None:
        """Create the directory and record the plan (once)."""
        if not (self.dir / PLAN).is_file():
            _atomic(self.dir / PLAN, json.dumps({"fingerprint": self.fingerprint, **plan}, indent=1, default=str))

    def path(self, scenario: str, draw: int) -> Path:
        return self.dir / "chunks" / scenario / f"{draw:05d}.json"

    def done(self, scenario: str, draw: int) -> bool:
        return self.path(scenario, draw).is_file()

    def write(self, scenario: str, draw: int, seeds: list[int], values: list[list[float]], busy_s: float) -> None:
        _atomic(self.path(scenario, draw), json.dumps({"scenario": scenario, "draw": draw, "seeds": seeds,
                                                       "busy_s": busy_s, "values": values}))

    def read(self, scenario: str, draw: int) -> dict[str, Any]:
        return json.loads(self.path(scenario, draw).read_text(encoding="utf-8"))
