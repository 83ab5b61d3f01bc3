"""``skintune submit`` and ``skintune jobs``: run any skintune command on a Ray cluster as a Ray Job.

The Jobs API listens on the cluster's dashboard port, on 127.0.0.1 by default (reach a remote head with
``ray dashboard cluster.yaml``, an SSH tunnel). Ray 2.60 protects it with token authentication: the token is read
from the standard places (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``) and sent as a header;
it is never printed. Every failure (unreachable address, refused token, unknown job, a job that fails) becomes one
:class:`UserError` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import time
from pathlib import Path

from trainables.errors import UserError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Never shipped to the cluster: environments, results, data, caches, VCS. Ray reads these as .gitignore lines, where
# a pattern without a slash matches at any depth ("data" would drop the trainables/data package): folders are
# anchored to the project root with a leading "/"; only the file-type patterns match anywhere.
EXCLUDES = ["/.venv", "/.git", "/results", "/data", "/.pytest_cache", "/.ruff_cache", "/.mypy_cache"]
EXCLUDES += ["/benchmarks/results", "/benchmarks/.cache", "__pycache__/", "*.pt", "*.safetensors"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def upload_root() -> Path:
    """A job's working directory: this project when skintune runs from its source checkout (the job then runs
    exactly this code, shadowing the copy installed on the nodes), else (a regular ``pip install``) the current
    folder, for the experiment files that the command names; the nodes' installed skintune runs then."""
    return PROJECT_ROOT if (PROJECT_ROOT / "pyproject.toml").is_file() else Path.cwd()


def default_address() -> str:
    """Ray's own convention for the Jobs API address, then the local dashboard (or its SSH tunnel)."""
    return os.environ.get("RAY_API_SERVER_ADDRESS") or DEFAULT_ADDRESS


def _token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(path).expanduser().is_file() if path else Path("~/.ray/auth_token").expanduser().is_file()


def _enable_token_auth() -> None:
    """Send the token when one is found and the user did not choose a mode (RAY_AUTH_MODE) explicitly."""
    if "RAY_AUTH_MODE" not in os.environ and _token_available():
        os.environ["RAY_AUTH_MODE"] = "token"
    if os.environ.get("RAY_AUTH_MODE") == "token":
        # ray/_raylet.pyi stubs only part of the compiled module; both names exist in it at runtime
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

        Config.initialize("")  # Ray caches the mode and the token: read them again
        AuthenticationTokenLoader.instance().reset_cache()


def _explain(exc: Exception, address: str, job_id: str | None = None) -> UserError:
    """One line for the user; the token never appears (Ray's messages do not contain it either)."""
    from ray.exceptions import AuthenticationError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, AuthenticationError):
        return UserError(
            f"the cluster at {address} refused the request ({text.rstrip(':')}): put the cluster's token in "
            "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (`ray get-auth-token` on the head prints it)"
        )
    if isinstance(exc, ConnectionError) or "Failed to connect" in text:
        return UserError(
            f"cannot reach the Ray Jobs API at {address}: is the cluster up, and the dashboard tunnel open "
            "(`ray dashboard cluster.yaml`)? Pass --address http://HOST:8265"
        )
    if job_id and "404" in text:
        return UserError(f"no job {job_id!r} on the cluster at {address} (see `skintune jobs list`)")
    return UserError(f"Ray Jobs API at {address}: {text}")


def client(address: str):
    from ray.job_submission import JobSubmissionClient

    _enable_token_auth()
    if not os.environ.get("RAY_ADDRESS", "http").startswith("http"):
        # a GCS address (e.g. from `ray start`) makes the SDK also dial the GCS, whose refusals are logged as extra
        # lines; these commands only speak HTTP to the Jobs API
        os.environ.pop("RAY_ADDRESS")
    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        raise _explain(exc, address) from None


def check_command(command: list[str]) -> None:
    """Refuse what cannot work on a cluster: nothing to run, or results written into the job's temp dir."""
    if not command:
        raise UserError("nothing to submit: give a skintune command after --, e.g. -- tune --config X.yaml")
    if command[0] in {"submit", "jobs", "tensorboard"}:
        raise UserError(f"`{command[0]}` runs on your machine, not as a cluster job")
    for flag in ("--storage", "--out"):
        if flag in command[:-1]:
            value = command[command.index(flag) + 1]
            if "://" not in value and not value.startswith(("/", "~")):
                raise UserError(
                    f"{flag} {value}: a relative path would land in the job's temporary working dir on the "
                    "cluster and be lost; give shared storage (s3://bucket/prefix) or an absolute path"
                )


def submit(address: str, command: list[str], env: dict | None = None, working_dir: bool = True) -> str:
    """Submit ``skintune <command>`` with :func:`upload_root` as the job's working_dir; return the submission id."""
    check_command(command)
    runtime_env: dict = {"env_vars": {"PYTHONUNBUFFERED": "1", **(env or {})}}
    if working_dir:
        runtime_env.update(working_dir=str(upload_root()), excludes=EXCLUDES)
    entrypoint = "python -m tuner.cli " + shlex.join(command)
    jobs = client(address)
    try:
        return jobs.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, metadata={"tool": "skintune"})
    except Exception as exc:  # noqa: BLE001
        raise _explain(exc, address) from None


def _call(address: str, job_id: str | None, method: str, *args):
    jobs = client(address)
    try:
        return getattr(jobs, method)(*args)
    except Exception as exc:  # noqa: BLE001
        raise _explain(exc, address, job_id) from None


def status(address: str, job_id: str):
    """The job's JobDetails (status, message, entrypoint, times)."""
    return _call(address, job_id, "get_job_info", job_id)


def list_jobs(address: str) -> list:
    return sorted(_call(address, None, "list_jobs"), key=lambda j: j.start_time or 0)


def logs(address: str, job_id: str) -> str:
    return _call(address, job_id, "get_job_logs", job_id)


def stop(address: str, job_id: str) -> bool:
    return _call(address, job_id, "stop_job", job_id)


def follow(address: str, job_id: str, write=print) -> str:
    """Stream the job's logs until it ends; return its final status (polls when the log stream breaks)."""
    jobs = client(address)

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            write(lines, end="", flush=True)

    with contextlib.suppress(Exception):  # a broken stream is not the job's failure: fall back to polling
        asyncio.run(tail())
    while (details := status(address, job_id)).status not in TERMINAL:
        time.sleep(1.0)
    return details


def finish(details, job_id: str) -> str:
    """The one-line outcome of a finished job; a failed or stopped job is an error."""
    if details.status == "SUCCEEDED":
        return f"job {job_id} SUCCEEDED"
    reason = (details.message or "").strip().splitlines()
    raise UserError(
        f"job {job_id} {details.status}: {reason[-1] if reason else 'see its logs'} "
        f"(full logs: skintune jobs logs {job_id})"
    )
