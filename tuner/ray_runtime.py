"""Start or join Ray for the driver, safely: the dashboard and the Jobs API stay on 127.0.0.1 unless the user joins
an existing cluster. The dashboard stays on: when ASHA stops a trial, its workers' placement group is freed by a
helper actor that needs Ray's State API, which the dashboard serves (without it the stopped trial's CPUs stayed
reserved and the next trial waited for ever).
"""

from __future__ import annotations

import logging
import os

import ray


def init_ray(address: str | None = None, num_cpus: int | None = None, min_cpus: int = 1) -> dict:
    """Join ``address`` / ``RAY_ADDRESS`` if given, else start a local Ray; return the cluster's resources.

    Locally, logical CPUs default to at least ``min_cpus`` (a trial's driver plus its workers) so that a 2-core
    laptop can still run a 2-worker DDP trial; Ray's CPU counts are scheduling slots, not pinned cores.
    """
    if ray.is_initialized():
        return ray.cluster_resources()
    address = address or os.environ.get("RAY_ADDRESS")
    env = {"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}}
    if address:
        # Ray's own helper actors (e.g. Train's placement-group cleaner) then find this cluster even when
        # several Ray instances run on one machine.
        env["env_vars"]["RAY_ADDRESS"] = address
        ray.init(address=address, runtime_env=env, logging_level=logging.WARNING)
    else:
        # one logical CPU more than cores: it hosts the trials' drivers (a quarter CPU each, they only wait)
        cpus = num_cpus or max((os.cpu_count() or 1) + 1, min_cpus)
        ray.init(
            num_cpus=cpus,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            runtime_env=env,
            logging_level=logging.WARNING,
            log_to_driver=True,
        )
    return ray.cluster_resources()


def use_gpu(setting: bool | str) -> bool:
    """``auto``: GPUs when the cluster has them."""
    if setting == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return bool(setting)
