"""``skintune tensorboard``: TensorBoard bound to 127.0.0.1 over one experiment's folder.

TensorBoard runs as a child process for as long as the command does: when the command is stopped (Ctrl-C,
SIGTERM, SIGHUP), it stops TensorBoard before it exits, so that no server is left holding the port.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from trainables.errors import UserError

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def logdir(storage: str, experiment: str) -> Path:
    path = Path(storage).expanduser() / experiment
    if not path.exists():
        raise UserError(f"{path}: no such experiment; check --storage and --experiment")
    return path


def command(storage: str, experiment: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tensorboard.main",
        "--logdir",
        str(logdir(storage, experiment)),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds serve()'s finally, which stops the server


def stop(server: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop the TensorBoard server (SIGTERM, then SIGKILL after ``timeout`` seconds) and reap it."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def serve(storage: str, experiment: str, port: int = 6006) -> None:
    """Run TensorBoard until it exits or this process is stopped, and stop it with this process."""
    cmd = command(storage, experiment, port)
    print(f"TensorBoard for {experiment} at http://127.0.0.1:{port}/ (Ctrl-C stops it)", flush=True)
    server = subprocess.Popen(cmd)
    previous = {sig: signal.signal(sig, _exit_on_signal) for sig in STOP_SIGNALS}
    try:
        server.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop(server)
