"""Start or join Ray for the driver, safely, and send Ray's own output to the experiment's driver log.

Safely: the dashboard and the Jobs API stay on 127.0.0.1 unless the user joins an existing cluster. The dashboard
stays on: when ASHA stops a trial, its workers' placement group is freed by a helper actor that needs Ray's State
API, which the dashboard serves (without it the stopped trial's CPUs stayed reserved and the next trial waited for
ever).

The driver log (:func:`driver_log`, ``<storage>/<experiment>/logs/driver.log``) receives what Ray prints for a
run: the output of its worker processes that Ray forwards to the driver (Ray Train's per-rank "Reporting training
result" lines, its controller's and helper actors' messages, the trials' own prints) and the driver's ``ray`` and
``optuna`` log records down to INFO. The console keeps skintune's own lines (one per trial, see
:class:`tuner.tune_callbacks.TrialLines`), Ray's errors, its warning that a trial cannot get its resources, and
the raylet's and autoscaler's messages (a worker killed for memory, nodes added). ``skintune --verbose`` puts
everything back on the console as well, with Tune's status tables.

Imports of ``ray`` are inside the functions, so that the CLI can set :func:`set_verbose` without loading Ray.
"""

from __future__ import annotations

import atexit
import logging
import os
import shlex
import sys
from pathlib import Path

from trainables import storage

LOG_NAME = "driver.log"
# Ray's own forwarder of worker output to the driver's console (ray._private.worker.connect, log_to_driver)
RAY_CONSOLE_HANDLER = "ray_print_logs"
_FILE_HANDLER = "skintune_driver_log"
# Ray's warning that a trial cannot be scheduled (too few CPUs/GPUs): the console keeps it, a search would hang
_KEPT_WARNINGS = ("ray.tune.execution.insufficient_resources_manager",)
_CLUSTER_SOURCES = ("raylet", "autoscaler")  # pseudo-pids of the node's and the cluster's own messages

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_verbose = False
_air_output_set = False  # RAY_AIR_NEW_OUTPUT=0 was set here (not by the user)
_route: dict = {}  # the driver log being written: {"path": Path, "handler": logging.FileHandler}
_LOG = logging.getLogger("skintune.driver")
_LOG.propagate = False
_LOG.setLevel(logging.INFO)


def set_verbose(on: bool) -> None:
    """``skintune --verbose``: Ray's output on the console too (it always goes to the driver log)."""
    global _verbose
    _verbose = on
    if _route:
        _set_console()


def is_verbose() -> bool:
    return _verbose


def tune_verbosity() -> int:
    """Tune's ``RunConfig(verbose=...)``: its status tables with ``--verbose``, otherwise none (skintune prints one
    line per trial). Quiet Tune uses its legacy output engine (``RAY_AIR_NEW_OUTPUT=0``, set by
    :func:`route_output`): the new one prints its configuration table and a TensorBoard hint pointing into Ray's
    session folder even at verbose 0."""
    return 1 if _verbose else 0


def driver_log(experiment_dir: str) -> Path:
    """Where the driver log of the experiment at ``experiment_dir`` is written: ``<experiment>/logs/driver.log``.
    For an experiment on cloud storage it is a node-local file (under the skintune cache), copied to
    ``<experiment>/logs/driver.log`` there when the command ends."""
    if storage.is_uri(experiment_dir):
        return storage.cache_dir("logs", experiment_dir) / LOG_NAME
    return Path(experiment_dir).expanduser() / "logs" / LOG_NAME


def route_output(experiment_dir: str) -> Path:
    """Send Ray's (and Optuna's) driver-side log records to the experiment's driver log, and keep only what
    :mod:`this module <tuner.ray_runtime>` says on the console. Idempotent; returns the log's path."""
    path = driver_log(experiment_dir)
    if _route.get("path") != path:
        _close_route()
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")  # appends: one log per experiment, every command
        handler.set_name(_FILE_HANDLER)
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter(_FORMAT))
        _route.update(path=path, handler=handler)
        _LOG.addHandler(handler)
        for name in ("ray", "optuna"):
            logger = logging.getLogger(name)
            logger.addHandler(handler)
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
        _LOG.info("---- skintune %s (pid %d) ----", shlex.join(sys.argv[1:]), os.getpid())
        shown = "also shown here (--verbose)" if _verbose else "`skintune --verbose` shows it here too"
        print(f"logs: Ray's output goes to {path}; {shown}", flush=True)
        if storage.is_uri(experiment_dir):
            atexit.register(_publish, path, storage.join(experiment_dir, "logs", LOG_NAME))
    _set_console()
    return path


def _close_route() -> None:
    handler = _route.pop("handler", None)
    _route.clear()
    if handler is not None:
        for name in ("ray", "optuna", _LOG.name):
            logging.getLogger(name).removeHandler(handler)
        handler.close()


def _publish(path: Path, uri: str) -> None:
    try:
        storage.write_bytes(uri, path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - the run itself is done; only its log copy failed
        print(f"skintune: the driver log stays at {path} (copying it to {uri} failed: {exc})", file=sys.stderr)


class _QuietConsole(logging.Filter):
    """On Ray's console handler without --verbose: errors, and the warning that a trial cannot get resources."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.name in _KEPT_WARNINGS


_QUIET = _QuietConsole()


def _set_console() -> None:
    """The console handlers of the ``ray`` and ``optuna`` loggers (all but the driver log's): with --verbose as
    ``ray.init(logging_level=WARNING)`` and Optuna's defaults left them, otherwise quiet."""
    global _air_output_set
    for handler in _console_handlers("ray"):
        handler.setLevel(logging.WARNING)
        handler.removeFilter(_QUIET)
        if not _verbose:
            handler.addFilter(_QUIET)
    for handler in _console_handlers("optuna"):
        handler.setLevel(logging.NOTSET if _verbose else logging.WARNING)
    if not _verbose and "RAY_AIR_NEW_OUTPUT" not in os.environ:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # read by Tuner.fit (ray.tune.experimental.output)
        _air_output_set = True
    elif _verbose and _air_output_set:
        os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        _air_output_set = False


def _console_handlers(name: str) -> list[logging.Handler]:
    if name == "optuna":
        import optuna.logging

        optuna.logging.get_logger("optuna")  # optuna adds its console handler on first use
    return [h for h in logging.getLogger(name).handlers if h.get_name() != _FILE_HANDLER]


def _log_worker_lines(data: dict) -> None:
    """A batch of worker output forwarded by Ray (see ray._private.worker.print_logs) into the driver log."""
    who = data.get("actor_name") or data.get("task_name") or ""
    pid = data.get("pid")
    ip = data.get("ip")
    where = f"{who + ' ' if who else ''}pid={pid}{'' if ip == data.get('localhost') else f', ip={ip}'}"
    for line in data.get("lines", []):
        _LOG.info("(%s) %s", where, line)


def _quiet(console):
    """Ray's console forwarder, passing on only the raylet's and the autoscaler's messages."""

    def forward(data: dict) -> None:
        if data.get("pid") in _CLUSTER_SOURCES:
            console(data)

    forward.ray_console = console  # type: ignore[attr-defined]
    return forward


def _route_worker_output() -> None:
    """Worker output that Ray forwards to this driver: into the driver log; on the console only with --verbose
    (and the raylet's and autoscaler's messages always)."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    dispatcher.remove_handler(_FILE_HANDLER)
    dispatcher.add_handler(_FILE_HANDLER, _log_worker_lines)
    for name, handle in list(dispatcher.handlers):
        if name != RAY_CONSOLE_HANDLER:
            continue
        console = getattr(handle, "ray_console", handle)
        dispatcher.remove_handler(name)
        dispatcher.add_handler(name, console if _verbose else _quiet(console))


def init_ray(
    address: str | None = None, num_cpus: int | None = None, min_cpus: int = 1, log_dir: str | None = None
) -> dict:
    """Join ``address`` / ``RAY_ADDRESS`` if given, else start a local Ray; return the cluster's resources.

    Locally, logical CPUs default to at least ``min_cpus`` (a trial's driver plus its workers) so that a 2-core
    laptop can still run a 2-worker DDP trial; Ray's CPU counts are scheduling slots, not pinned cores.
    ``log_dir``: the experiment folder (or URI) whose driver log receives Ray's output (:func:`route_output`).
    """
    import ray

    if log_dir is not None:
        route_output(log_dir)
    level = logging.INFO if _route else logging.WARNING
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        env = {"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}}
        if address:
            # Ray's own helper actors (e.g. Train's placement-group cleaner) then find this cluster even when
            # several Ray instances run on one machine.
            env["env_vars"]["RAY_ADDRESS"] = address
            ray.init(address=address, runtime_env=env, logging_level=level)
        else:
            # one logical CPU more than cores: it hosts the trials' drivers (a quarter CPU each, they only wait)
            cpus = num_cpus or max((os.cpu_count() or 1) + 1, min_cpus)
            ray.init(
                num_cpus=cpus,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                runtime_env=env,
                logging_level=level,
                log_to_driver=True,
            )
    if _route:
        # ray.init gives every handler of the "ray" logger its own format: the driver log keeps its own
        _route["handler"].setFormatter(logging.Formatter(_FORMAT))
        _route_worker_output()
    return ray.cluster_resources()


def use_gpu(setting: bool | str) -> bool:
    """``auto``: GPUs when the cluster has them."""
    import ray

    if setting == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return bool(setting)
