"""The scheduler address, through the real CLI: a wrong service on the port, a closed port,
malformed addresses. Each ends in one ``error:`` line, the right exit code, no traceback, no
hang, and nothing created (no run directory, no study file)."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from modelops_calabaria.errors import ConfigurationError
from modelops_calabaria.settings import Settings, resolve_settings

from conftest import support_model

CALABARIA = Path(sys.executable).with_name("calabaria")
# A bound on the whole command, so that a hang fails the test instead of stalling the suite:
# the probe gives up after 10 s; the rest is interpreter start-up on a loaded machine.
COMMAND_TIMEOUT_S = 120


def _job(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({
        "study": "address-test",
        "model": support_model("linear"),
        "parameters": {"a": {"lower": 0.0, "upper": 2.0}, "b": {"lower": 0.0, "upper": 2.0}},
        "targets": [{"name": "y", "output": "y", "data": {"t": [0, 1, 2], "y": [1.0, 2.0, 3.0]}, "score": "sse"}],
        "n_replicates": 1,
        "max_trials": 2,
    }))
    return path


def _calibrate(tmp_path: Path, scheduler: str) -> subprocess.CompletedProcess:
    job = _job(tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    proc = subprocess.run([str(CALABARIA), "calibrate", str(job), "--scheduler", scheduler, "--output", str(tmp_path / "run"),
                           "--storage", f"sqlite:///{tmp_path}/study.db"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL,
                          env={"PATH": str(CALABARIA.parent), "HOME": str(tmp_path)})
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1, proc.stderr
    assert {p.name for p in tmp_path.iterdir()} == before, "something was created"
    return proc


@pytest.fixture
def http_server() -> Iterator[str]:
    """A real HTTP server on a loopback port: the wrong service at the scheduler address."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def eager_replier() -> Iterator[str]:
    """A server that sends an HTTP error the moment a client connects, then hangs up: read as
    Dask's frame header, its first 8 bytes announce a frame of exabytes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the block ends: nothing listens there


@pytest.mark.slow
@pytest.mark.parametrize("server", ["http_server", "eager_replier"])
def test_wrong_service_at_scheduler_address_fails_within_bound(server, request, tmp_path):
    address = request.getfixturevalue(server)
    proc = _calibrate(tmp_path, address)
    assert proc.returncode == 1
    assert f"no Dask scheduler answered at {address}" in proc.stderr
    assert "check the address and port" in proc.stderr


@pytest.mark.slow
def test_closed_scheduler_port_fails_at_once(tmp_path):
    address = f"tcp://127.0.0.1:{_closed_port()}"
    proc = _calibrate(tmp_path, address)
    assert proc.returncode == 1
    assert f"cannot reach the Dask scheduler at {address}" in proc.stderr


@pytest.mark.parametrize("address, fragment", [
    ("tcp://127.0.0.1:notaport", "the port must be a number from 1 to 65535"),
    ("127.0.0.1:99999", "the port must be a number from 1 to 65535"),
    ("tcp://127.0.0.1:0", "the port is missing or 0"),
    ("tcp://scheduler", "the port is missing"),
    ("tcp://:8786", "the host is empty"),
    ("tcp://sched uler:8786", "not a valid host name"),
    ("http://127.0.0.1:8787", "unknown scheme 'http'"),
    ("tcp://127.0.0.1:8786/status", "expected only SCHEME://HOST:PORT"),
])
def test_malformed_scheduler_address_is_refused_when_settings_resolve(address, fragment):
    with pytest.raises(ConfigurationError, match=fragment) as raised:
        resolve_settings(scheduler=address)
    assert raised.value.exit_code == 2 and repr(address) in raised.value.message
    with pytest.raises(ConfigurationError, match=fragment):
        Settings(scheduler=address)  # the API path checks too


@pytest.mark.parametrize("given, normalised", [
    ("127.0.0.1:8786", "tcp://127.0.0.1:8786"),
    (" TCP://Sched.example:8786 ", "tcp://sched.example:8786"),
    ("tls://[::1]:8786", "tls://[::1]:8786"),
    ("Inline", "inline"),
    ("", None),
    (None, None),
])
def test_well_formed_scheduler_addresses_are_normalised(given, normalised):
    assert resolve_settings(scheduler=given).scheduler == normalised


def test_worker_command_checks_the_address_before_waiting_for_the_study(tmp_path):
    proc = subprocess.run([str(CALABARIA), "worker", "--study", "nothing-yet", "--storage", f"sqlite:///{tmp_path}/s.db",
                           "--scheduler", "tcp://127.0.0.1:notaport", "--wait", "600"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "the port must be a number" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
