"""The production manifests in deploy/, checked offline against the Kubernetes API models (no cluster needed)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

client = pytest.importorskip(
    "kubernetes.client", reason="the kubernetes package is not installed (test extra)"
)

ROOT = Path(__file__).resolve().parents[1]


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "deploy" / name).read_text())


def problems(value, kind: str, where: str = "") -> list[str]:
    """Where `value` breaks the Kubernetes model `kind` ('V1PodTemplateSpec', 'list[V1EnvVar]', ...): unknown
    fields and wrong types, strictly (the API server would drop or reject them)."""
    # The client spells containers list[X] or List[X], dict(str, X), dict[str, X] or Dict[str, X] by version.
    if inner := re.fullmatch(r"[lL]ist\[(.+)\]", kind):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [p for i, item in enumerate(value) for p in problems(item, inner[1], f"{where}[{i}]")]
    if inner := re.fullmatch(r"(?:dict\(|[dD]ict\[)str, (.+)[)\]]", kind):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        return [p for key, item in value.items() for p in problems(item, inner[1], f"{where}.{key}")]
    simple = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
    if kind in simple:
        ok = isinstance(value, simple[kind]) and not (kind == "int" and isinstance(value, bool))
        return [] if ok else [f"{where}: expected {kind}, got {value!r}"]
    model = getattr(client, kind)
    if not isinstance(value, dict):
        return [f"{where}: expected a {kind} mapping"]
    fields = {json_name: attr for attr, json_name in model.attribute_map.items()}
    found = []
    for key, item in value.items():
        if key not in fields:
            found.append(f"{where}.{key}: not a field of {kind}")
        else:
            found += problems(item, model.openapi_types[fields[key]], f"{where}.{key}")
    return found


def build(value, kind: str):
    """The client's own deserialisation (it also enforces required fields)."""

    class Response:
        data = json.dumps(value)

    return client.ApiClient().deserialize(Response(), kind)


def pod_templates(cluster: dict) -> dict[str, dict]:
    spec = cluster["spec"]
    groups = {"head": spec["headGroupSpec"]} | {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    return {name: group["template"] for name, group in groups.items()}


def test_the_ray_cluster_pods_are_valid_kubernetes_and_the_gpu_group_asks_for_gpus():
    cluster = load("raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    for name, template in pod_templates(cluster).items():
        assert problems(template, "V1PodTemplateSpec", name) == []
        assert build(template, "V1PodTemplateSpec").spec.containers
    gpu = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    (container,) = gpu["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == gpu["rayStartParams"]["num-gpus"] == "1"
    for group in cluster["spec"]["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_the_ray_cluster_runs_the_ray_the_project_pins():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (pinned,) = re.findall(r"ray\[data\]==([\d.]+)", " ".join(extras["ray"]))
    assert load("raycluster.yaml")["spec"]["rayVersion"] == pinned
    assert f'"ray[default]=={pinned}"' in (ROOT / "Dockerfile").read_text()


def test_the_dagster_values_point_the_code_location_at_the_ray_cluster():
    values = load("dagster-values.yaml")
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert problems(deployment["env"], "list[V1EnvVar]", "env") == []
    assert problems(deployment["resources"], "V1ResourceRequirements", "resources") == []
    env = {e["name"]: e["value"] for e in deployment["env"]}
    cluster = load("raycluster.yaml")
    assert env["INSTRUCT_LF_ENV"] == "prod"
    assert env["INSTRUCT_LF_RAY_ADDRESS"] == f"ray://{cluster['metadata']['name']}-head-svc:10001"
    head = pod_templates(cluster)["head"]["spec"]["containers"][0]
    assert 10001 in {p["containerPort"] for p in head["ports"]}
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "instruct_lf_dagster.definitions"]
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    resources = launcher["config"]["k8sRunLauncher"]["runK8sConfig"]["containerConfig"]["resources"]
    assert problems(resources, "V1ResourceRequirements", "run resources") == []
    # The code location and the CPU workers run one image (Ray needs one Ray and one Python on both ends).
    image = deployment["image"]
    images = {c["image"] for t in pod_templates(cluster).values() for c in t["spec"]["containers"]}
    assert f"{image['repository']}:{image['tag']}" in images


def test_the_checker_catches_what_the_api_server_would_refuse():
    template = {"spec": {"containers": [{"name": "w", "image": "x", "resource": {"limits": {"cpu": "1"}}}]}}
    assert problems(template, "V1PodTemplateSpec") == [
        ".spec.containers[0].resource: not a field of V1Container"
    ]
    template = {"spec": {"containers": [{"name": "w", "ports": [{"containerPort": "6379"}]}]}}
    assert problems(template, "V1PodTemplateSpec") == [
        ".spec.containers[0].ports[0].containerPort: expected int, got '6379'"
    ]
    with pytest.raises(ValueError, match="name"):
        build({"spec": {"containers": [{"image": "x"}]}}, "V1PodTemplateSpec")
