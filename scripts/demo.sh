#!/usr/bin/env bash
# Set up (once) and run the SEIR demo calibration on the embedded default:
# a local Dask cluster and a SQLite study under runs/seir-demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
exec .venv/bin/calabaria calibrate examples/seir/job.yaml "$@"
