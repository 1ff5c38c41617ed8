"""Run a calibration whose simulations go to Dask workers submitted as SLURM jobs.

The other SLURM path (``calabaria-*.sbatch``) gives each coordinator its own Dask
cluster inside its allocation. This one keeps a single coordinator (on the login node,
or in a small long-running allocation) and lets dask-jobqueue's ``SLURMCluster`` submit
batch jobs of Dask workers, which suits many short simulations and an elastic queue:

    pip install "dask-jobqueue>=0.8.2"          # in the same environment as calabaria
    export CALABARIA_STORAGE=postgresql://calabaria@dbhost:5432/calabaria
    python deploy/slurm/dask_slurm_cluster.py examples/seir/job.yaml \\
        --jobs 4 --cores 16 --memory 32GB --walltime 04:00:00 --queue compute

The worker jobs run ``sys.executable``: the environment must be on a file system the
compute nodes see (so must a model loaded by file path). Extra coordinators may join the
same study at any time with ``CALABARIA_SCHEDULER=<printed address> calabaria worker``.

Contract: :func:`build_calabaria_command` returns the coordinator's argv (parsed by
tests/test_deploy.py with the CLI's own parser); :func:`main` returns the exit code of
that command, and always closes the cluster (cancelling the worker jobs) on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any


def build_calabaria_command(job_file: str, scheduler_address: str, extra: Sequence[str] = ()) -> list[str]:
    """The coordinator's command line: ``calabaria calibrate`` on the given scheduler.

    Args:
        job_file: Path of the job file (YAML or JSON).
        scheduler_address: Address of the SLURMCluster's scheduler (``tcp://host:port``).
        extra: More ``calabaria calibrate`` options, passed through unchanged.

    Returns:
        The argv list; the storage URL is not in it (it is read from CALABARIA_STORAGE so
        that a password never shows in the process list).
    """
    return ["calabaria", "calibrate", job_file, "--scheduler", scheduler_address, *extra]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse this script's options; anything after ``--`` goes to ``calabaria calibrate``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("job_file", help="job file (YAML or JSON)")
    p.add_argument("--jobs", type=int, default=2, help="SLURM jobs of Dask workers to keep running")
    p.add_argument("--adapt", action="store_true", help="scale between 1 and --jobs jobs with the load")
    p.add_argument("--cores", type=int, default=8, help="cores per SLURM job")
    p.add_argument("--processes", type=int, default=None,
                   help="Dask worker processes per job (default: one per core; simulations hold the GIL)")
    p.add_argument("--memory", default="16GB", help="memory per SLURM job")
    p.add_argument("--walltime", default="02:00:00", help="time limit of each worker job")
    p.add_argument("--queue", default=None, help="partition (#SBATCH -p)")
    p.add_argument("--account", default=None, help="account (#SBATCH -A)")
    p.add_argument("--interface", default=None, help="network interface of the workers, e.g. ib0")
    p.add_argument("--local-directory", default=os.environ.get("TMPDIR", "/tmp"),
                   help="node-local scratch directory of the workers")
    p.add_argument("--wait-workers", type=float, default=600.0,
                   help="seconds to wait for the first worker before giving up")
    argv = list(sys.argv[1:] if argv is None else argv)
    # Split by hand: argparse.REMAINDER after a positional would swallow this script's options.
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = p.parse_args(argv)
    args.calibrate_args = extra
    return args


def make_cluster(args: argparse.Namespace) -> Any:
    """Start the scheduler in this process and describe the worker jobs (none submitted yet)."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:  # an optional dependency: only this path needs it
        sys.exit('error: dask-jobqueue is not installed: pip install "dask-jobqueue>=0.8.2"')
    processes = args.processes or args.cores
    return SLURMCluster(
        queue=args.queue,
        account=args.account,
        cores=args.cores,
        processes=processes,
        memory=args.memory,
        walltime=args.walltime,
        interface=args.interface,
        local_directory=args.local_directory,
        python=sys.executable,
        # SLURM's SIGTERM before the time limit lets a worker hand its tasks back.
        job_extra_directives=["--signal=TERM@60"],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Start the SLURMCluster, run the calibration on it, and close the cluster."""
    args = parse_args(argv)
    if not os.environ.get("CALABARIA_STORAGE"):
        print("error: export CALABARIA_STORAGE (the study must be in storage the workers' "
              "coordinators share, e.g. postgresql://...)", file=sys.stderr)
        return 2
    cluster = make_cluster(args)
    try:
        if args.adapt:
            cluster.adapt(minimum_jobs=1, maximum_jobs=args.jobs)
        else:
            cluster.scale(jobs=args.jobs)
        print(f"Dask scheduler {cluster.scheduler_address}, dashboard {cluster.dashboard_link}", flush=True)
        print(cluster.job_script(), flush=True)
        from distributed import Client

        with Client(cluster) as client:  # fail early, with a clear message, if no job ever starts
            try:
                client.wait_for_workers(1, timeout=args.wait_workers)
            except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
                print(f"error: no Dask worker job started within {args.wait_workers:.0f} s (squeue -u $USER)",
                      file=sys.stderr)
                return 1
        command = build_calabaria_command(args.job_file, cluster.scheduler_address, args.calibrate_args)
        return subprocess.call(command)
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
