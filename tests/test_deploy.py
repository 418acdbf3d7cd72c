"""Container and cluster manifests, checked without a cluster.

The core kinds go through `kubernetes-validate --strict` (the API's own schemas); the custom
resources (KServe, KubeRay) are loaded and their fields that matter checked against the code.
"""

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from digitserve.settings import Settings
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
PORT = 8000
IMAGE = "digitserve:0.1.0"


def load(path: Path) -> list[dict[str, Any]]:
    """Every document in a YAML file."""
    with path.open() as handle:
        return [document for document in yaml.safe_load_all(handle) if document]


def one(path: Path, kind: str) -> dict[str, Any]:
    """The single document of a kind in a file."""
    [document] = [d for d in load(path) if d["kind"] == kind]
    return document


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """A container's environment as a dict."""
    return {item["name"]: item["value"] for item in container.get("env", [])}


def test_core_kinds_pass_strict_schema_validation() -> None:
    files = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
    assert [f.name for f in files] == ["deployment.yaml", "hpa.yaml", "pdb.yaml", "service.yaml"]
    validate = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run(
        [str(validate), "--strict", *map(str, files)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == 4


def test_deployment_probes_ports_resources_and_security() -> None:
    deployment = one(DEPLOY / "kubernetes" / "deployment.yaml", "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == IMAGE
    assert container["ports"] == [{"name": "http", "containerPort": PORT, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert set(container["resources"]["limits"]) >= {"memory"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsNonRoot"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    [mount] = container["volumeMounts"]
    assert mount["mountPath"] == "/tmp"  # noqa: S108 - the one writable path, an emptyDir
    [volume] = pod["volumes"]
    assert volume["name"] == mount["name"]
    assert "emptyDir" in volume
    assert deployment["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def test_the_drain_fits_in_the_termination_grace_period() -> None:
    deployment = one(DEPLOY / "kubernetes" / "deployment.yaml", "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = env_of(container)
    delay = float(env["DIGITSERVE_SHUTDOWN_DELAY_SECONDS"])
    grace = float(env["DIGITSERVE_SHUTDOWN_TIMEOUT_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > delay + grace
    readiness = container["readinessProbe"]
    # The endpoint goes within one failed probe; the delay outlasts that.
    assert delay > readiness["periodSeconds"] * readiness["failureThreshold"]


def test_every_digitserve_variable_in_the_manifests_is_a_setting() -> None:
    names = set()
    for path in DEPLOY.rglob("*.yaml"):
        text = path.read_text()
        names |= {word.strip("\"':,") for word in text.split() if word.startswith("DIGITSERVE_")}
    assert names
    fields = {f"DIGITSERVE_{name.upper()}" for name in Settings.model_fields}
    assert names <= fields, names - fields


def test_service_hpa_and_pdb_point_at_the_deployment() -> None:
    deployment = one(DEPLOY / "kubernetes" / "deployment.yaml", "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(DEPLOY / "kubernetes" / "service.yaml", "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    [port] = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    hpa = one(DEPLOY / "kubernetes" / "hpa.yaml", "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] >= 2  # with the PDB, a drain never empties the service
    pdb = one(DEPLOY / "kubernetes" / "pdb.yaml", "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_kserve_runs_the_image_as_an_open_inference_protocol_runtime() -> None:
    runtime = one(DEPLOY / "kserve" / "servingruntime.yaml", "ServingRuntime")
    service = one(DEPLOY / "kserve" / "inferenceservice.yaml", "InferenceService")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    [container] = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"] == IMAGE
    assert container["ports"] == [{"containerPort": PORT, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": PORT}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": PORT}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    model = service["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2"
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {entry["name"] for entry in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    # The model is in the image: no storage initializer.
    assert "storageUri" not in model
    # The URL's model name is the InferenceService's name.
    assert env_of(container)["DIGITSERVE_MODEL_NAME"] == service["metadata"]["name"]


@pytest.mark.filterwarnings(
    # Ray Serve's own pydantic models use a keyword pydantic 2 deprecates; not ours to fix.
    "ignore:Using extra keyword arguments on `Field` is deprecated"
)
def test_rayservice_deploys_the_ray_app_with_two_replicas() -> None:
    import ray
    from ray.serve import Application

    from digitserve.ray_app import DEPLOYMENT_NAME, app_builder

    service = one(DEPLOY / "ray" / "rayservice.yaml", "RayService")
    assert service["apiVersion"] == "ray.io/v1"
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__  # the image's Ray is the extra's pin
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    [application] = serve_config["applications"]
    assert application["import_path"] == "digitserve.ray_app:app_builder"
    assert application["route_prefix"] == "/"
    [deployment] = application["deployments"]
    assert deployment["name"] == DEPLOYMENT_NAME
    assert deployment["num_replicas"] == application["args"]["replicas"] == 2
    # The builder accepts these arguments and builds the application (no cluster needed).
    assert isinstance(app_builder(application["args"]), Application)
    [head] = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert {"name": "serve", "containerPort": PORT} in head["ports"]
    images = {head["image"]} | {
        container["image"]
        for group in cluster["workerGroupSpecs"]
        for container in group["template"]["spec"]["containers"]
    }
    assert images == {"digitserve-ray:0.1.0"}
    dockerfile = (DEPLOY / "ray" / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-py311" in dockerfile


def test_dockerfile_is_non_root_with_a_health_check_and_read_only_friendly() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in dockerfile.splitlines()]
    froms = [line for line in lines if line.startswith("FROM ")]
    assert all(":" in line.split()[1] and ":latest" not in line for line in froms)
    assert "USER 10001:10001" in lines
    assert any(line.startswith("HEALTHCHECK ") and "/readyz" in dockerfile for line in lines)
    assert "ENV PYTHONDONTWRITEBYTECODE=1 \\" in lines  # no .pyc written at run time
    assert lines[-1] == 'CMD ["digitserve", "serve"]'
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests", "data", "deploy"} <= set(ignored)
