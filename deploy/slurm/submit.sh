#!/usr/bin/env bash
# Submit one calibration to SLURM: the leader (creates the study, works on it) and an
# array of N extra coordinators that start once the leader has started.
#
#   export CALABARIA_STORAGE=postgresql://calabaria@dbhost:5432/calabaria   # password in ~/.pgpass
#   export CALABARIA_VENV=$HOME/calabaria/.venv                             # optional
#   deploy/slurm/submit.sh examples/seir/job.yaml 8
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
JOB_FILE=${1:?usage: submit.sh JOB_FILE [N_EXTRA_COORDINATORS]}
N=${2:-4}
: "${CALABARIA_STORAGE:?export CALABARIA_STORAGE first}"
STUDY=$("${CALABARIA_VENV:+$CALABARIA_VENV/bin/}python3" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["study"])' "$JOB_FILE")

leader=$(sbatch --parsable --export=ALL "$here/calabaria-calibrate.sbatch" "$JOB_FILE")
echo "study $STUDY: leader job $leader"
if [ "$N" -gt 0 ]; then
  # after: start once the leader has started (not finished): they share its budget.
  workers=$(sbatch --parsable --export=ALL --dependency="after:${leader}" --array="1-${N}" \
    "$here/calabaria-workers.sbatch" "$STUDY")
  echo "study $STUDY: $N extra coordinators in array job $workers"
fi
echo "progress: calabaria status --study $STUDY"
