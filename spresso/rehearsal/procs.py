"""Processes of one rehearsal, found by a marker in their environment, and free local ports.

Every process the rehearsal starts (moto, MLflow, the Ray head and every node the autoscaler
starts, their workers) inherits ``SPRESSO_REHEARSAL=<id>``; stopping means signalling exactly
those, never a process found by name (other Ray clusters may run on this machine).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

MARKER = "SPRESSO_REHEARSAL"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environ_of(pid: int) -> dict[str, str]:
    """A process's environment at its start ({} when it is gone or not ours to read)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def pids_with(name: str, value: str) -> list[int]:
    """Pids (other than this process) whose environment has ``name=value``."""
    me = os.getpid()
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != me and environ_of(int(entry.name)).get(name) == value:
            out.append(int(entry.name))
    return sorted(out)


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def terminate(name: str, value: str, grace: float = 10.0) -> list[int]:
    """SIGTERM every process marked ``name=value``, SIGKILL what is left after ``grace`` seconds;
    returns the pids still alive afterwards (zombies of our own children are reaped by Popen)."""
    pids = pids_with(name, value)
    signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pids_with(name, value):
        time.sleep(0.2)
    left = pids_with(name, value)
    signal_all(left, signal.SIGKILL)
    time.sleep(0.5)
    return [p for p in pids_with(name, value) if not is_zombie(p)]


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False


def wait_stopped(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate one child we started, killing it if it does not go in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
