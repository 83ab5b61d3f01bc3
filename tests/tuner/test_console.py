"""What reaches the console and what the experiment's driver log gets (tuner/ray_runtime.py), without a cluster:
Ray's real worker-output dispatcher and console printer, Ray's and Optuna's real loggers. A real search's console
and driver log: tests/tuner/test_tune.py (in-process) and tests/tuner/test_faults.py (the CLI as a subprocess)."""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest
from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
from ray._private.worker import print_to_stdstream
from ray.tune.experimental.output import get_air_verbosity

from tuner import ray_runtime
from tuner.cli import build_parser, format_params


@pytest.fixture
def routed(tmp_path, monkeypatch):
    """The driver log of an experiment under tmp_path, with Ray's console printer of worker output installed as
    ``ray.init(log_to_driver=True)`` installs it; everything undone afterwards."""
    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    dispatcher.add_handler(ray_runtime.RAY_CONSOLE_HANDLER, functools.partial(print_to_stdstream, ignore_prefix=False))
    exp = tmp_path / "exp"

    def route(verbose: bool):
        ray_runtime.set_verbose(verbose)
        path = ray_runtime.route_output(str(exp))
        ray_runtime._route_worker_output()
        return path

    try:
        yield route
    finally:
        ray_runtime.set_verbose(False)
        ray_runtime._close_route()
        dispatcher.remove_handler(ray_runtime.RAY_CONSOLE_HANDLER)
        dispatcher.remove_handler("skintune_driver_log")
        for handler in ray_runtime._console_handlers("ray"):
            handler.removeFilter(ray_runtime._QUIET)
            handler.setLevel(logging.NOTSET)
        for handler in ray_runtime._console_handlers("optuna"):
            handler.setLevel(logging.NOTSET)


def _worker(line: str, pid="4242") -> dict:
    """A batch of forwarded worker output, as Ray's log subscriber hands it to the dispatcher."""
    return {"ip": "10.0.0.1", "localhost": "10.0.0.1", "pid": pid, "job": "01000000", "is_err": True, "lines": [line]}


def test_worker_output_goes_to_the_driver_log_and_with_verbose_to_the_console_too(routed, capsys):
    path = routed(verbose=False)
    assert path.name == "driver.log" and path.parent.name == "logs" and path.parent.parent.name == "exp"
    dispatcher.emit({**_worker("Reporting training result 1: TrainingReport(...) from rank 0"), "actor_name": "W"})
    dispatcher.emit(_worker("(raylet) a worker was killed: out of memory", pid="raylet"))
    err = capsys.readouterr().err
    assert "Reporting training result" not in err
    assert "out of memory" in err  # the node's own messages stay on the console
    log = path.read_text()
    assert "(W pid=4242) Reporting training result 1" in log and "out of memory" in log

    routed(verbose=True)  # --verbose: Ray's console printer again, and the driver log as before
    dispatcher.emit(_worker("Reporting training result 2: TrainingReport(...) from rank 1"))
    assert "Reporting training result 2" in capsys.readouterr().err
    assert "Reporting training result 2" in path.read_text()


def _shown(name: str, level: int, message: str) -> bool:
    """Whether Ray's or Optuna's own console handler prints this record (their levels and filters, as logging
    applies them; their streams are the stderr of the time they were made, which pytest does not capture)."""
    logger = logging.getLogger(name)
    record = logger.makeRecord(name, level, __file__, 0, message, (), None)
    handlers = ray_runtime._console_handlers(name.split(".")[0])
    handlers = [h for h in handlers if not type(h).__module__.startswith("_pytest")]  # pytest's log capture
    assert handlers, name
    return logger.isEnabledFor(level) and any(level >= h.level and h.filter(record) for h in handlers)


def test_ray_and_optuna_records_go_to_the_driver_log_and_only_errors_to_the_console(routed):
    import optuna

    path = routed(verbose=False)
    records = [
        ("ray.tune.tune", logging.WARNING, "Experiment has been interrupted, resume with Tuner.restore", False),
        ("ray.tune.tune", logging.INFO, "Total run time: 3 s", False),
        ("optuna.storages._in_memory", logging.INFO, "A new study created in memory with name: smoke", False),
        ("ray.tune.execution.insufficient_resources_manager", logging.WARNING, "No trial is running", True),
        ("ray.tune.execution.tune_controller", logging.ERROR, "Trial task failed for trial t1", True),
    ]
    optuna.logging.get_logger("optuna")  # Optuna's console handler exists
    for name, level, message, on_console in records:
        assert _shown(name, level, message) is on_console, message
        logging.getLogger(name).log(level, message)
    log = path.read_text()
    for _, _, message, _ in records:
        assert message in log, message
    # quiet Tune: the legacy output engine at verbose 0 prints nothing (the new one prints a configuration table
    # and a TensorBoard hint into Ray's session folder even then)
    assert ray_runtime.tune_verbosity() == 0 and get_air_verbosity(ray_runtime.tune_verbosity()) is None

    routed(verbose=True)  # --verbose: the console as Ray (logging_level=WARNING) and Optuna have it by default
    assert _shown("ray.tune.tune", logging.WARNING, "a warning")
    assert not _shown("ray.tune.tune", logging.INFO, "info")
    assert _shown("optuna.storages._in_memory", logging.INFO, "A new study created")
    assert get_air_verbosity(ray_runtime.tune_verbosity()) is not None  # Tune's own status tables


def test_verbose_is_a_global_flag_also_accepted_after_a_ray_command():
    parser = build_parser()
    assert parser.parse_args(["--verbose", "tune", "--config", "x.yaml"]).verbose is True
    assert parser.parse_args(["tune", "--config", "x.yaml", "--verbose"]).verbose is True
    assert parser.parse_args(["retrain", "--experiment", "e", "--verbose"]).verbose is True
    assert parser.parse_args(["tune", "--config", "x.yaml"]).verbose is False
    assert parser.parse_args(["compare", "--experiment", "e"]).verbose is False


def test_parameters_print_as_values_not_numpy_reprs():
    params = {"w_site": np.float64(1.0), "lr_head": np.float64(0.0031622776601683794), "pretrained": np.False_}
    text = format_params({**params, "lesion_loss": "ce", "depth": np.int64(3)})
    assert text == "w_site=1, lr_head=0.003162, pretrained=False, lesion_loss=ce, depth=3"
