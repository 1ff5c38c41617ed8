"""Processes of a command run in a session of its own, read from /proc: what is left of it
after it returns, and what it listens on while it runs.

A process belongs to the run when any of these holds: its session is the command's
(started with ``start_new_session``, so the session id is the command's pid); it
descends from the command; its environment holds the run's token (every process the
command starts inherits it, including worker processes that left the session); it holds
a file or directory under the run's directory open.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

TOKEN_VAR = "PROCESS_TEST_TOKEN"


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, session id) of ``pid``, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[3])


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _has_token(pid: int, token: str) -> bool:
    try:
        return f"{TOKEN_VAR}={token}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _holds_files_under(pid: int, root: Path) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(str(root)):
                return True
        except OSError:
            continue
    return False


def members(root_pid: int, token: str, run_dir: Path | None = None) -> dict[int, str]:
    """Live processes of the run (not zombies), with their command lines."""
    me = os.getpid()
    stats = {p: s for p in _pids() if (s := _stat(p)) is not None}
    found = {p for p, (_, sid) in stats.items() if sid == root_pid or p == root_pid}
    changed = True
    while changed:  # descendants of what is found
        new = {p for p, (ppid, _) in stats.items() if ppid in found and p not in found}
        found |= new
        changed = bool(new)
    found |= {p for p in stats if _has_token(p, token)}
    if run_dir is not None:
        found |= {p for p in stats if _holds_files_under(p, run_dir.resolve())}
    found.discard(me)
    alive = {}
    for p in found:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive[p] = _cmdline(p)
    return alive


def start(args: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``args`` in a session of its own, its environment marked with a fresh token."""
    token = uuid.uuid4().hex
    proc = subprocess.Popen(args, env={**env, TOKEN_VAR: token}, cwd=cwd, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, token


def kill_members(root_pid: int, token: str, run_dir: Path | None = None) -> None:
    """Clean up after a failed test: SIGKILL whatever of the run is left."""
    for pid in members(root_pid, token, run_dir):
        try:
            os.kill(pid, 9)
        except OSError:
            pass


def left_after(proc: subprocess.Popen, token: str, run_dir: Path | None, settle_s: float = 1.0) -> dict[int, str]:
    """What of the run is alive ``settle_s`` after the command returned (the contract's bound)."""
    assert proc.poll() is not None
    time.sleep(settle_s)
    return members(proc.pid, token, run_dir)


def listening(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket (IPv4 and IPv6) held by ``pids``."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes[link[8:-1]] = pid
    found = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            hex_addr, hex_port = cols[1].split(":")
            found.append((inodes[cols[9]], _address(hex_addr, v6), int(hex_port, 16)))
    return found


def _address(hex_addr: str, v6: bool) -> str:
    import ipaddress

    raw = bytes.fromhex(hex_addr)
    if not v6:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # /proc prints IPv6 as four host-order 32-bit words
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return str(ipaddress.IPv6Address(words))


def reap(proc: subprocess.Popen, token: str, run_dir: Path | None = None) -> None:
    """Whatever happened: kill the command if it still runs, then every process of its tree."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate()
    kill_members(proc.pid, token, run_dir)


def run_to_end(args: list[str], env: dict[str, str], cwd: Path,
               timeout: float) -> tuple[subprocess.CompletedProcess, dict[int, str]]:
    """Run a command in a session of its own to its end; return its outcome and what of it is
    alive 1 s after it returned (:func:`left_after`)."""
    proc, token = start(args, env, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
        left = left_after(proc, token, cwd)
    finally:
        reap(proc, token, cwd)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), left

