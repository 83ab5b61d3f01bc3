"""``skintune tensorboard`` stops the TensorBoard server it started when it is itself stopped (no Ray needed)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _port_free(port: int) -> bool:
    """Nothing listens on ``port`` (a closed connection's TIME_WAIT does not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_stopping_the_command_stops_its_tensorboard_server(tmp_path, free_port):
    (tmp_path / "exp" / "tune").mkdir(parents=True)  # an experiment folder (no events needed to serve)
    port = free_port()
    cmd = [sys.executable, "-m", "tuner.cli", "tensorboard", "--storage", str(tmp_path), "--experiment", "exp"]
    proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        deadline = time.time() + 120
        while True:  # until TensorBoard answers on its port
            assert proc.poll() is None, "skintune tensorboard ended by itself"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, "TensorBoard did not answer within 120 s"
                time.sleep(0.5)
        (server,) = _children(proc.pid)
        assert not _port_free(port)

        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        assert not _alive(server)  # stopped and reaped before the command exited
        assert _port_free(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if server is not None and _alive(server):
            os.kill(server, signal.SIGKILL)
