"""Exposure: every server a local run starts listens where ``listen_host`` says (loopback by default).

A real ``calabaria calibrate`` with a local cluster (no ``--scheduler``) runs as a subprocess;
while its trials run, every listening socket of the coordinator and of all its descendants
(Dask worker processes, the sampler process) is read with psutil.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from test_faults import CLI, clean_env, told, wait_for, write_job


def listening_sockets(root: int) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket of ``root`` and its descendants."""
    parent = psutil.Process(root)
    found = []
    for proc in [parent, *parent.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        found += [(proc.pid, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return found


@pytest.mark.slow
@pytest.mark.parametrize("listen_host", [None, "127.0.0.2"])
def test_every_listening_socket_of_a_local_run_is_on_the_listen_host(tmp_path, listen_host):
    storage = f"sqlite:///{tmp_path}/s.db"
    job, study = write_job(tmp_path, max_trials=200, fixed={"delay": 0.3})
    env = clean_env(**({"CALABARIA_LISTEN_HOST": listen_host} if listen_host else {}))
    calib = subprocess.Popen([*CLI, "calibrate", str(job), "--storage", storage, "--local-workers", "2",
                              "--output", str(tmp_path / "run"), "--grace", "5"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: told(storage, study) >= 4, 180, "4 trials")
        sockets = listening_sockets(calib.pid)
    finally:
        calib.send_signal(signal.SIGTERM)
        try:
            _, err = calib.communicate(timeout=120)
        finally:
            if calib.poll() is None:
                calib.kill()
    assert calib.returncode == 0, err[-2000:]
    # The scheduler and its HTTP server (dashboard), and per worker its nanny (in the
    # coordinator), the worker and the worker's HTTP server: at least 2 + 3 x 2.
    assert len(sockets) >= 8, sockets
    # The coordinator and both worker processes (forked from the local cluster's fork server).
    assert len({pid for pid, _, _ in sockets if pid != calib.pid}) >= 2, sockets
    if listen_host is None:
        exposed = [s for s in sockets if not ipaddress.ip_address(s[1]).is_loopback]
        assert not exposed, f"listening beyond loopback: {exposed}"
    else:
        assert {ip for _, ip, _ in sockets} == {listen_host}, sockets
