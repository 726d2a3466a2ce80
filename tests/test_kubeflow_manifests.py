"""kubeflow/serving manifests: parse with PyYAML and check they fit together.

TF Serving 2.16.1 image, gRPC 8500 + REST 8501 on the container and the Service, the config
file path and poll flag, model `graft` at /models/graft inside the mounted `graft-models` claim,
readiness on GET /v1/models/graft:8501, resource requests and limits; a locked-down security
context (non-root, read-only root file system, no privilege escalation, no capabilities) and
an image that is pinned by digest or documents how to pin it.
"""
from __future__ import annotations

import posixpath
import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

DIR = Path(__file__).resolve().parents[1] / "kubeflow" / "serving"


@pytest.fixture(scope="module")
def docs() -> dict:
    by_kind: dict = {}
    for path in sorted(DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def _one(docs, kind):
    assert len(docs.get(kind, [])) == 1, f"expected one {kind}"
    return docs[kind][0]


def _flags(args: list[str]) -> dict:
    return dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)


def _container(docs):
    containers = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_kustomization_lists_existing_files(docs):
    kustomization = _one(docs, "Kustomization")
    for name in kustomization["resources"]:
        assert (DIR / name).is_file(), name
    assert "pvc.yaml" not in kustomization["resources"]


def test_configmap_models_config(docs):
    config = _one(docs, "ConfigMap")["data"]["models.config"]
    assert "model_config_list" in config
    assert re.findall(r'name:\s*"([^"]+)"', config) == ["graft"]
    assert re.findall(r'base_path:\s*"([^"]+)"', config) == ["/models/graft"]
    assert re.search(r'model_platform:\s*"tensorflow"', config)
    assert config.count("{") == config.count("}")


def test_deployment_image_args_ports(docs):
    container = _container(docs)
    assert re.fullmatch(r"tensorflow/serving:2\.16\.1(@sha256:[0-9a-f]{64})?",
                        container["image"]), container["image"]
    flags = _flags(container["args"])
    assert flags["port"] == "8500" and flags["rest_api_port"] == "8501"
    assert int(flags["file_system_poll_wait_seconds"]) > 0
    ports = {p["containerPort"]: p for p in container["ports"]}
    assert set(ports) == {8500, 8501}
    assert ports[8500]["name"] == "grpc" and ports[8501]["name"] == "http"


def test_config_file_and_model_dir_are_mounted(docs):
    deployment = _one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(docs)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}

    config_file = _flags(container["args"])["model_config_file"]
    config_dir, config_name = posixpath.split(config_file)
    config_volume = volumes[mounts[config_dir]]
    assert config_volume["configMap"]["name"] == _one(docs, "ConfigMap")["metadata"]["name"]
    assert config_name in _one(docs, "ConfigMap")["data"]

    base_path = "/models/graft"
    model_mount = next(p for p in mounts if base_path == p or base_path.startswith(p + "/"))
    claim = volumes[mounts[model_mount]]["persistentVolumeClaim"]
    assert claim["claimName"] == "graft-models"
    assert _one(docs, "PersistentVolumeClaim")["metadata"]["name"] == "graft-models"


def test_readiness_probe_and_resources(docs):
    container = _container(docs)
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/v1/models/graft"
    assert probe["port"] in (8501, "http")
    resources = container["resources"]
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[section])


def test_service_exposes_both_ports_to_the_pods(docs):
    service = _one(docs, "Service")
    labels = _one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["port"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {8500, 8501}
    container_ports = {p["name"]: p["containerPort"] for p in _container(docs)["ports"]}
    for port, spec in ports.items():
        target = spec.get("targetPort", port)
        assert container_ports.get(target, target) == port


def test_pod_and_container_are_locked_down(docs):
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    container = _container(docs)
    pod_sc, sc = pod.get("securityContext", {}), container.get("securityContext", {})
    assert pod_sc.get("runAsNonRoot") is True and sc.get("runAsNonRoot") is True
    # The image's default user is root: runAsNonRoot alone would stop the pod from starting.
    assert isinstance(pod_sc.get("runAsUser"), int) and pod_sc["runAsUser"] > 0
    assert sc.get("readOnlyRootFilesystem") is True
    assert sc.get("allowPrivilegeEscalation") is False
    assert sc.get("privileged", False) is False
    assert sc.get("capabilities", {}).get("drop") == ["ALL"]
    assert not sc.get("capabilities", {}).get("add")
    assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
    assert pod.get("automountServiceAccountToken") is False
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    # A read-only root still needs a writable /tmp: an emptyDir, size-limited.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert volumes[mounts["/tmp"]]["emptyDir"].get("sizeLimit")
    for path, name in mounts.items():  # everything else is mounted read-only
        if path != "/tmp":
            assert next(m for m in container["volumeMounts"] if m["mountPath"] == path)[
                "readOnly"] is True, path


def test_image_pinned_by_digest_or_pinning_documented(docs):
    image = _container(docs)["image"]
    kustomization = _one(docs, "Kustomization")
    pins = [i for i in kustomization.get("images", []) if i.get("name") == "tensorflow/serving"]
    for pin in pins:
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", pin.get("digest", "")), pin
    if "@sha256:" in image or pins:
        return
    # Tag only: the manifest must say how to pin it (no invented digest).
    text = (DIR / "deployment.yaml").read_text()
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    assert "tensorflow/serving:2.16.1@sha256:" in comments
    assert "imagetools inspect tensorflow/serving:2.16.1" in comments
    assert "images:" in (DIR / "kustomization.yaml").read_text()
