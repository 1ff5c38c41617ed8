"""Finished simulations on disk, in an append-only journal: what makes a projection resumable.

Each (scenario, draw) is one submission of its ``R`` replicates; when it returns, its
values are appended to ``chunks.jsonl`` as one line (JSON, newline-terminated), handed
to the kernel at most ``FLUSH_S`` after it was written (and at close). A projection
killed at any instant (SIGKILL included) loses nothing the kernel already holds: at
worst the chunks of its last ``FLUSH_S`` seconds, which run again, and a last line cut
short, which is dropped (the file is truncated after the last whole line) when the
journal is opened again. A restart with the same request reads the lines present and
submits only the other (scenario, draw) pairs: every requested simulation ends up
recorded exactly once; the ones not recorded at the kill run again. No fsync, and no
flush per line: fsync protects against a crash of the machine, not of the process,
and either cost more CPU than the simulations of a cheap model (docs/performance.md,
"Projections").

``plan.json`` holds the request's fingerprint (scenarios, draws, seeds, points,
days): a restart with another request into the same directory is refused rather
than mixing two projections. No database is involved, so there is nothing to test
on SQLite or PostgreSQL here: the output directory is the ledger.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO, Any

from modelops_calabaria.errors import ConfigurationError

PLAN = "plan.json"
JOURNAL = "chunks.jsonl"
FLUSH_S = 1.0  # the most a kill can lose (those chunks run again)


def read_journal(path: Path) -> tuple[dict[tuple[str, int], dict[str, Any]], int]:
    """The whole lines of a journal (first record per key) and the byte length they end at."""
    records: dict[tuple[str, int], dict[str, Any]] = {}
    good = 0
    if not path.is_file():
        return records, 0
    with path.open("rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break  # torn by a kill mid-write
            try:
                rec = json.loads(line)
                key = (str(rec["scenario"]), int(rec["draw"]))
            except (ValueError, KeyError, TypeError):
                break
            records.setdefault(key, rec)
            good += len(line)
    return records, good


class ChunkStore:
    """The journal of one projection's output directory."""

    def __init__(self, out_dir: Path, fingerprint: str) -> None:
        self.dir = out_dir
        self.fingerprint = fingerprint
        self._records: dict[tuple[str, int], dict[str, Any]] = {}
        self._fh: IO[bytes] | None = None
        self._flushed = 0.0

    def check(self) -> None:
        """Refuse (ConfigurationError) a directory holding another projection's journal; creates nothing."""
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
        """Create the directory, record the plan (once), read the journal and open it for appending."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / PLAN).is_file():
            tmp = self.dir / f".{PLAN}.tmp{os.getpid()}"
            tmp.write_text(json.dumps({"fingerprint": self.fingerprint, **plan}, indent=1, default=str), encoding="utf-8")
            os.replace(tmp, self.dir / PLAN)
        path = self.dir / JOURNAL
        self._records, good = read_journal(path)
        self._fh = path.open("ab")
        self._fh.truncate(good)  # drop a torn last line; appends go after the last whole one

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def done(self, scenario: str, draw: int) -> bool:
        return (scenario, draw) in self._records

    def write(self, scenario: str, draw: int, seeds: list[int], values: list[list[float]], busy_s: float) -> None:
        """Append one finished (scenario, draw) (in the kernel within ``FLUSH_S``)."""
        assert self._fh is not None, "open() first"
        rec = {"scenario": scenario, "draw": draw, "seeds": seeds, "busy_s": busy_s, "values": values}
        self._fh.write((json.dumps(rec) + "\n").encode("utf-8"))
        now = time.monotonic()
        if now - self._flushed >= FLUSH_S:
            self._fh.flush()
            self._flushed = now
        self._records[(scenario, draw)] = rec

    def read(self, scenario: str, draw: int) -> dict[str, Any]:
        return self._records[(scenario, draw)]
