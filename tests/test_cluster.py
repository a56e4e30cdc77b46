"""Cluster configurations: the AWS launcher YAML passes Ray's own autoscaler schema and checks,
and has the intended shape; the KubeRay manifests have what KubeRay requires of them."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def aws() -> dict:
    return load(CLUSTER / "aws.yaml")


def test_aws_launcher_config_passes_rays_schema_and_checks(aws):
    from ray.autoscaler._private.util import validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(aws, schema)
    # What `ray up` runs after filling in defaults (head type known, min_workers within max_workers).
    validate_config({"cluster_synced_files": [], **aws})


def test_aws_cluster_has_a_cpu_head_data_workers_and_gpu_trainers(aws):
    types = aws["available_node_types"]
    head = types[aws["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # drivers and Tune only; no tasks on the head
    gpu_types = [t for t in types.values() if t["node_config"]["InstanceType"].startswith(("g5.", "g6."))]
    cpu_workers = [t for name, t in types.items() if name != aws["head_node_type"] and t not in gpu_types]
    assert gpu_types and cpu_workers
    for node_type in types.values():
        assert 0 <= node_type.get("min_workers", 0) <= node_type.get("max_workers", aws["max_workers"])
        # S3 through an instance profile, never keys in the config
        assert "Name" in node_type["node_config"]["IamInstanceProfile"]
    setup = " ".join(aws["head_setup_commands"] + aws["worker_setup_commands"])
    assert "pip install -q -e ~/eain-dist" in setup and aws["file_mounts"]["~/eain-dist"] == "."
    assert all("RAY_AUTH_MODE=token" in command for command in aws["head_start_ray_commands"][1:]
               + aws["worker_start_ray_commands"][1:])
    assert "AWS_SECRET_ACCESS_KEY" not in (CLUSTER / "aws.yaml").read_text()


def _containers(pod_template: dict) -> list[dict]:
    containers = pod_template["spec"]["containers"]
    assert containers and all(container.get("image") for container in containers)
    return containers


def _check_cluster_spec(spec: dict) -> None:
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    _containers(head["template"])
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        for container in _containers(group["template"]):
            assert container["resources"]["requests"] and container["resources"]["limits"]


def _gpu_groups(spec: dict) -> list[dict]:
    return [g for g in spec["workerGroupSpecs"]
            if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])]


def test_raycluster_manifest_has_what_kuberay_requires():
    cluster = load(CLUSTER / "kuberay" / "raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster" and cluster["metadata"]["name"]
    spec = cluster["spec"]
    _check_cluster_spec(spec)
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpu = _gpu_groups(spec)
    assert len(gpu) == 1
    for container in gpu[0]["template"]["spec"]["containers"]:
        # KubeRay passes the limit to Ray as the node's GPU count; requests must equal limits.
        resources = container["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    cpu = [g for g in spec["workerGroupSpecs"] if g not in gpu]
    assert cpu and all("nvidia.com/gpu" not in c["resources"]["limits"]
                       for g in cpu for c in g["template"]["spec"]["containers"])


def test_rayjob_manifest_runs_training_on_that_cluster():
    job = load(CLUSTER / "kuberay" / "rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert "jobs/train.py" in spec["entrypoint"] and "train.use_gpu=true" in spec["entrypoint"]
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec)  # one or the other
    if "rayClusterSpec" in spec:
        _check_cluster_spec(spec["rayClusterSpec"])
    else:
        cluster = load(CLUSTER / "kuberay" / "raycluster.yaml")
        assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    yaml.safe_load(spec.get("runtimeEnvYAML", "{}"))  # a YAML document inside the YAML


def test_manifest_and_dockerfile_entrypoints_exist():
    job = load(CLUSTER / "kuberay" / "rayjob.yaml")
    script = next(word for word in job["spec"]["entrypoint"].split() if word.endswith(".py"))
    assert (ROOT / script.removeprefix("/home/ray/eain-dist/")).is_file()
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert "WORKDIR /home/ray/eain-dist" in dockerfile and "rayproject/ray:2.60.0" in dockerfile
