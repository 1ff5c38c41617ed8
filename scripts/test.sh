#!/usr/bin/env bash
# Set up (once) and run the whole test suite against real Dask, SQLite, journal files and
# the PostgreSQL server at CALABARIA_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
# Debian's docker-compose validates the compose file (no Docker engine is needed or used).
if ! command -v docker-compose >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null) || echo "warning: could not install docker-compose" >&2
fi
# Debian's chromium renders report.html in tests/test_report.py (headless, no network).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "warning: could not install chromium" >&2
fi
# Start the local PostgreSQL cluster if it is installed but stopped.
if command -v pg_ctlcluster >/dev/null 2>&1 && command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
# Three pytest-xdist processes: most tests wait on subprocesses, Dask and PostgreSQL rather than
# on the CPU, so three share a 2-core machine well (CALABARIA_TEST_PROCESSES=0 runs in one process).
exec .venv/bin/python -m pytest -n "${CALABARIA_TEST_PROCESSES:-3}" --dist worksteal "$@"
