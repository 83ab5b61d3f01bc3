"""The shipped cluster.yaml and KubeRay manifests, checked offline (no cluster, no network, no credentials).

cluster.yaml must pass Ray's own schema and Ray's stricter config checks, keep the dashboard on the head's
loopback with token authentication on, and start GPU workers from zero. ``validate_cluster_file`` must turn each
kind of mistake into one line naming the file, the YAML line and the key (and the fix).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config

from trainables.errors import UserError
from tuner.cluster_config import validate_cluster_file

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster.yaml"
KUBERAY = ROOT / "deploy" / "kuberay"
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
COMMAND_KEYS = [
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
]


def _cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def _commands(cfg: dict) -> list[str]:
    return [cmd for key in COMMAND_KEYS for cmd in cfg.get(key, [])]


def _mutated(tmp_path: Path, old: str, new: str) -> Path:
    """cluster.yaml with ``old`` (which must occur exactly once) replaced by ``new``, written to tmp_path."""
    text = CLUSTER.read_text()
    assert text.count(old) == 1, f"the test's anchor {old!r} is not unique in cluster.yaml"
    path = tmp_path / "my-cluster.yaml"
    path.write_text(text.replace(old, new))
    return path


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def _error(path: Path) -> str:
    with pytest.raises(UserError) as info:
        validate_cluster_file(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)), message
    return message


# --- the shipped file -------------------------------------------------------------------------------------------


def test_shipped_cluster_yaml_matches_rays_schema():
    cfg = _cluster()
    jsonschema.validate(cfg, SCHEMA)
    # the schema has teeth: it rejects an unknown key, so passing it means something
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**cfg, "max_worker": 8}, SCHEMA)


def test_shipped_cluster_yaml_passes_validate_cluster_file():
    summary = validate_cluster_file(CLUSTER)
    assert summary["cluster_name"] == "skintune"
    assert summary["provider"] == {"type": "aws", "region": "us-west-2"}
    assert summary["head"]["name"] == "ray.head.cpu" and summary["head"]["instance_type"] == "m5.2xlarge"
    assert summary["head"]["resources"].get("GPU", 0) == 0 and summary["head"]["resources"]["CPU"] > 0
    assert [w["name"] for w in summary["workers"]] == ["ray.worker.gpu"]
    assert summary["text"].startswith("cluster.yaml: valid (head: ray.head.cpu m5.2xlarge")
    assert "ray.worker.gpu g5.xlarge [4 CPU, 1 GPU] x0-8" in summary["text"]


def test_dashboard_on_loopback_and_token_auth_on_every_node():
    cfg = _cluster()
    head_start = [c for c in cfg["head_start_ray_commands"] if "ray start" in c]
    worker_start = [c for c in cfg["worker_start_ray_commands"] if "ray start" in c]
    assert head_start and worker_start
    assert all("--dashboard-host=127.0.0.1" in c for c in head_start)
    assert all("RAY_AUTH_MODE=token" in c for c in head_start + worker_start)
    assert not [c for c in _commands(cfg) if "0.0.0.0" in c]
    assert not [c for c in _commands(cfg) if "RAY_AUTH_MODE=disabled" in c]
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # the token reaches every node


def test_rays_defaults_do_not_reopen_the_dashboard():
    """Ray's AWS defaults.yaml starts the head with --dashboard-host=0.0.0.0; the merged config must not."""
    prepared = prepare_config(copy.deepcopy(_cluster()))
    merged = _commands(prepared)
    assert any("--dashboard-host=127.0.0.1" in c for c in prepared["head_start_ray_commands"])
    assert not [c for c in merged if "0.0.0.0" in c]
    # control: without our start commands Ray's defaults would bind every interface
    bare = {k: v for k, v in _cluster().items() if k != "head_start_ray_commands"}
    assert any("--dashboard-host=0.0.0.0" in c for c in prepare_config(bare)["head_start_ray_commands"])


def test_gpu_workers_scale_from_zero():
    cfg = _cluster()
    workers = {n: t for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"]}
    assert workers
    for name, spec in workers.items():
        assert spec["min_workers"] == 0, name
        assert spec["resources"].get("GPU", 0) >= 1, name
        assert 1 <= spec["max_workers"] <= cfg["max_workers"], name
    assert "GPU" not in cfg["available_node_types"][cfg["head_node_type"]]["resources"]


# --- mistakes, each one line naming the file, the line and the key ----------------------------------------------


@pytest.mark.parametrize(
    "old, new, needle, expected",
    [
        ("\nmax_workers: 8\n", "\nmax_worker: 8\n", "max_worker: 8", ["unknown key 'max_worker'", "'max_workers'"]),
        (
            "    min_workers: 0\n",
            "    min_wokers: 0\n",
            "min_wokers",
            ["unknown key 'min_wokers'", "available_node_types.ray.worker.gpu", "did you mean 'min_workers'"],
        ),
        (
            "    min_workers: 0\n",
            '    min_workers: "two"\n',
            'min_workers: "two"',
            ["available_node_types.ray.worker.gpu.min_workers", "'two'", "integer"],
        ),
        ("idle_timeout_minutes: 10\n", "idle_timeout_minutes: 10: 5\n", "idle_timeout_minutes", ["not valid YAML"]),
    ],
    ids=["top-level-typo", "node-type-typo", "wrong-type", "yaml-syntax"],
)
def test_mistakes_name_file_line_and_key(tmp_path, old, new, needle, expected):
    path = _mutated(tmp_path, old, new)
    message = _error(path)
    assert f"{path} line {_line_of(path, needle)}:" in message, message
    for part in expected:
        assert part in message, message


def test_unknown_head_node_type_is_caught_beyond_the_schema(tmp_path):
    path = _mutated(tmp_path, "head_node_type: ray.head.cpu\n", "head_node_type: ray.head.gpu\n")
    jsonschema.validate(yaml.safe_load(path.read_text()), SCHEMA)  # the schema alone lets it through
    message = _error(path)
    assert f"line {_line_of(path, 'head_node_type:')}:" in message
    assert "'ray.head.gpu'" in message and "did you mean 'ray.head.cpu'" in message


def test_worker_type_above_the_global_max_workers_is_caught(tmp_path):
    path = _mutated(tmp_path, "    max_workers: 8\n", "    max_workers: 12\n")
    jsonschema.validate(yaml.safe_load(path.read_text()), SCHEMA)
    message = _error(path)
    assert f"line {_line_of(path, 'max_workers: 12')}:" in message
    assert "available_node_types.ray.worker.gpu.max_workers 12 exceeds the global max_workers 8" in message


def test_rays_own_check_runs_sum_of_min_workers(tmp_path):
    """Each type is fine on its own; Ray's validate_config catches that together they exceed max_workers."""
    cpu_type = "  ray.worker.cpu:\n    min_workers: 4\n    max_workers: 4\n    resources: {CPU: 2}\n"
    cpu_type += "    node_config: {InstanceType: m5.large}\n"
    path = _mutated(
        tmp_path, "  ray.worker.gpu:\n    min_workers: 0\n", cpu_type + "  ray.worker.gpu:\n    min_workers: 6\n"
    )
    jsonschema.validate(yaml.safe_load(path.read_text()), SCHEMA)
    message = _error(path)
    assert "max_workers" in message and "min_workers" in message and "Ray's cluster-config check" in message


@pytest.mark.parametrize(
    "content, expected",
    [("- a\n- b\n", "got a list"), ("", "got an empty file"), ("just a string\n", "got a str")],
)
def test_not_a_mapping(tmp_path, content, expected):
    path = tmp_path / "cluster.yaml"
    path.write_text(content)
    assert expected in _error(path)


def test_missing_file(tmp_path):
    assert "no such cluster config file" in _error(tmp_path / "nope.yaml")


# --- KubeRay ------------------------------------------------------------------------------------------------------


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


@pytest.mark.parametrize("name, kind", [("raycluster.yaml", "RayCluster"), ("rayjob.yaml", "RayJob")])
def test_kuberay_manifests(name, kind):
    doc = yaml.safe_load((KUBERAY / name).read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    spec = doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterSpec"]
    assert spec["authOptions"]["mode"] == "token"
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("dashboard-host", "unset") != "0.0.0.0"
    assert not [s for s in _strings(doc) if "0.0.0.0" in s or "RAY_AUTH_MODE=disabled" in s]
    for container in head["template"]["spec"]["containers"]:
        assert "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {})
    groups = spec["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
        limits = [c["resources"]["limits"] for c in group["template"]["spec"]["containers"]]
        assert any(int(lim.get("nvidia.com/gpu", 0)) >= 1 for lim in limits), group["groupName"]


def test_kuberay_raycluster_dashboard_on_loopback():
    doc = yaml.safe_load((KUBERAY / "raycluster.yaml").read_text())
    assert doc["spec"]["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"


def test_kuberay_rayjob_runs_the_demo_tune():
    spec = yaml.safe_load((KUBERAY / "rayjob.yaml").read_text())["spec"]
    assert spec["entrypoint"] == "skintune tune --config experiments/demo.yaml --storage s3://YOUR-BUCKET/skintune"
    assert spec["shutdownAfterJobFinishes"] is True
