"""``skintune tensorboard``: TensorBoard bound to 127.0.0.1 over one experiment's folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from trainables.errors import UserError


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


def serve(storage: str, experiment: str, port: int = 6006) -> None:
    cmd = command(storage, experiment, port)
    print(f"TensorBoard for {experiment} at http://127.0.0.1:{port}/ (Ctrl-C stops it)")
    subprocess.run(cmd, check=False)
