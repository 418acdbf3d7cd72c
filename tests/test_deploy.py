"""Container and cluster manifests, checked without a cluster.

The core kinds go through `kubernetes-validate --strict` (the API's own schemas); the custom
resources (KServe, KubeRay) are loaded and their fields that matter checked against the code.
"""

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
import requests
import yaml

from digitserve.grpc_server import LIVENESS, READINESS
from digitserve.repository import MODEL_NAME
from digitserve.settings import Settings
from tests.conftest import DATA_DIR, MODEL_PATH, ROOT
from tests.live import free_port

DEPLOY = ROOT / "deploy"
PORT = 8000
GRPC_PORT = 8081
IMAGE = "digitserve:0.1.0"
KSERVE_MODEL_DIR = "/mnt/models"
"""Where KServe's storage initializer leaves an InferenceService's storageUri."""


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


def instructions(dockerfile: Path) -> list[str]:
    """A Dockerfile's instructions, continuation lines joined, comments and blank lines left out."""
    joined = dockerfile.read_text().replace("\\\n", " ")
    lines = (line.strip() for line in joined.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def image_command() -> list[str]:
    """The Dockerfile's CMD, the command its container runs."""
    [command] = [line for line in instructions(ROOT / "Dockerfile") if line.startswith("CMD ")]
    argv: list[str] = json.loads(command.removeprefix("CMD "))
    return argv


def containers(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every container spec anywhere in a manifest."""
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "containers" and isinstance(value, list):
                    yield from value
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)


def wait_until_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Poll the readiness probe until it answers 200; fail if the process exits or 60 s pass."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited: {log.read_text()}"
        try:
            if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except requests.RequestException:  # not listening yet
            pass
        time.sleep(0.1)
    pytest.fail(f"the server was not ready in 60 s: {log.read_text()}")


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
    assert container["ports"] == [
        {"name": "http", "containerPort": PORT, "protocol": "TCP"},
        {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
    ]
    assert env_of(container)["DIGITSERVE_GRPC_PORT"] == str(GRPC_PORT)
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
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert set(mounts) == {"/tmp", "/models"}  # noqa: S108
    tmp = mounts["/tmp"]  # noqa: S108 - the one writable path, an emptyDir
    assert "readOnly" not in tmp
    assert "emptyDir" in volumes[tmp["name"]]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def test_deployment_serves_a_read_only_model_repository_volume() -> None:
    deployment = one(DEPLOY / "kubernetes" / "deployment.yaml", "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = env_of(container)
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == "/models"]
    assert env["DIGITSERVE_MODEL_REPOSITORY"] == mount["mountPath"]
    assert mount["readOnly"] is True
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"] == {"claimName": "digitserve-models", "readOnly": True}
    # One model source: a single-model path would hide the repository.
    assert "DIGITSERVE_MODEL_PATH" not in env
    modes = get_args(Settings.model_fields["model_control_mode"].annotation)
    assert env["DIGITSERVE_MODEL_CONTROL_MODE"] in modes


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
    http, grpc = service["spec"]["ports"]
    assert http["targetPort"] == "http"
    assert (grpc["targetPort"], grpc["port"]) == ("grpc", GRPC_PORT)
    assert grpc["appProtocol"] == "kubernetes.io/h2c"  # HTTP/2 without TLS
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
    formats = {entry["name"]: entry for entry in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    # Picked on its own only for its own format: other sklearn and onnx models in the
    # namespace keep their runtimes (a namespace's runtimes come before the cluster's).
    assert {name for name, entry in formats.items() if entry["autoSelect"]} == {"digitserve"}
    assert set(formats) == {"digitserve", "sklearn", "onnx"}


def test_kserve_grpc_runtime_exposes_the_grpc_port_as_h2c() -> None:
    rest = one(DEPLOY / "kserve" / "servingruntime.yaml", "ServingRuntime")
    runtime = one(DEPLOY / "kserve" / "servingruntime-grpc.yaml", "ServingRuntime")
    service = one(DEPLOY / "kserve" / "inferenceservice-grpc.yaml", "InferenceService")
    assert runtime["spec"]["protocolVersions"] == ["grpc-v2"]
    [container] = runtime["spec"]["containers"]
    [rest_container] = rest["spec"]["containers"]
    # KServe exposes one port per container: the gRPC one, named as Knative expects.
    assert container["ports"] == [{"name": "h2c", "containerPort": GRPC_PORT, "protocol": "TCP"}]
    env = env_of(container)
    assert env["DIGITSERVE_GRPC_PORT"] == str(GRPC_PORT)
    assert env.items() >= env_of(rest_container).items()
    for key in ("image", "command", "args", "resources", "securityContext"):
        assert container[key] == rest_container[key], key
    assert container["readinessProbe"]["grpc"] == {"port": GRPC_PORT, "service": READINESS}
    assert container["livenessProbe"]["grpc"] == {"port": GRPC_PORT, "service": LIVENESS}
    model = service["spec"]["predictor"]["model"]
    assert (model["runtime"], model["protocolVersion"]) == ("digitserve-grpc", "grpc-v2")
    formats = {entry["name"]: entry for entry in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert not any(entry["autoSelect"] for entry in formats.values())  # only when named


def test_the_image_exposes_both_ports() -> None:
    [expose] = [line for line in instructions(ROOT / "Dockerfile") if line.startswith("EXPOSE ")]
    assert expose.split()[1:] == [str(PORT), str(GRPC_PORT)]
    # gRPC stays off unless asked for: the image does not set its port.
    assert "DIGITSERVE_GRPC_PORT" not in " ".join(instructions(ROOT / "Dockerfile"))


def test_kserve_serves_the_storage_uri_under_the_inference_service_name() -> None:
    runtime = one(DEPLOY / "kserve" / "servingruntime.yaml", "ServingRuntime")
    service = one(DEPLOY / "kserve" / "inferenceservice.yaml", "InferenceService")
    [container] = runtime["spec"]["containers"]
    # The image's own command; args alone would replace it, not add to it.
    assert container["command"] == image_command()
    assert container["args"] == ["--model-name={{.Name}}"]
    env = env_of(container)
    assert env["DIGITSERVE_MODEL_PATH"] == KSERVE_MODEL_DIR
    assert "DIGITSERVE_MODEL_NAME" not in env  # the name comes from {{.Name}}, not the image
    assert "DIGITSERVE_MODEL_REPOSITORY" not in env
    assert service["spec"]["predictor"]["model"]["storageUri"].startswith(("gs://", "s3://"))
    assert MODEL_NAME.match(service["metadata"]["name"])  # a name the service accepts


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


def test_the_image_runs_the_readmes_serve_command() -> None:
    command = " ".join(image_command())
    assert command == "digitserve serve"
    readme = (ROOT / "README.md").read_text()
    assert any(line.startswith(f"{command} ") for line in readme.splitlines())
    # What the README's command says with flags, the image says with its environment.
    env = [line for line in instructions(ROOT / "Dockerfile") if line.startswith("ENV ")][-1]
    assert {"DIGITSERVE_HOST=0.0.0.0", f"DIGITSERVE_PORT={PORT}"} <= set(env.split())


def test_no_image_or_manifest_bakes_in_a_model_path() -> None:
    """The models ship in the package (src/digitserve/models): no image copies one in."""
    dockerfiles = [ROOT / "Dockerfile", DEPLOY / "ray" / "Dockerfile"]
    manifests = sorted(DEPLOY.rglob("*.yaml"))
    for path in [*dockerfiles, *manifests]:
        text = path.read_text()
        assert "classifier.pickle" not in text, path
        assert not re.search(r"\bmodel/", text), path  # the old top-level model/ folder
    for dockerfile in dockerfiles:
        copies = [line for line in instructions(dockerfile) if line.startswith("COPY ")]
        assert copies
        assert not [line for line in copies if "model" in line], dockerfile
    # The package's models stay in the build context.
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line for line in lines if line.strip() and not line.startswith("#")]
    assert not [pattern for pattern in patterns if "model" in pattern or "pickle" in pattern]
    # The only model path a manifest names is the one KServe fills from storageUri.
    paths = {
        env_of(container).get("DIGITSERVE_MODEL_PATH")
        for path in manifests
        for document in load(path)
        for container in containers(document)
    }
    assert paths == {None, KSERVE_MODEL_DIR}


@pytest.fixture
def kserve_storage(tmp_path: Path) -> Path:
    """A folder laid out as the storage initializer leaves /mnt/models: one model file."""
    folder = tmp_path / "mnt" / "models"
    folder.mkdir(parents=True)
    shutil.copyfile(MODEL_PATH, folder / "model.pickle")
    return folder


@pytest.mark.integration
def test_the_kserve_container_serves_mnt_models_under_the_service_name(
    kserve_storage: Path, tmp_path: Path
) -> None:
    """Run what the runtime's container runs, as KServe would fill it in, on a loopback port."""
    runtime = one(DEPLOY / "kserve" / "servingruntime.yaml", "ServingRuntime")
    [container] = runtime["spec"]["containers"]
    name = "my-digits"
    args = [arg.replace("{{.Name}}", name) for arg in container["args"]]
    program, *rest = container["command"]
    assert program == "digitserve"  # the console script; `python -m digitserve` is the same
    env = env_of(container)
    assert env["DIGITSERVE_MODEL_PATH"] == KSERVE_MODEL_DIR
    env["DIGITSERVE_MODEL_PATH"] = str(kserve_storage)
    port = free_port()
    env |= {"DIGITSERVE_HOST": "127.0.0.1", "DIGITSERVE_PORT": str(port)}  # the image's, locally
    outside = {key: value for key, value in os.environ.items() if not key.startswith("DIGITSERVE_")}
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "digitserve", *rest, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=outside | env,
            start_new_session=True,
        )
        try:
            wait_until_ready(process, url, log_path)
            ready = requests.get(f"{url}/v2/models/{name}/ready", timeout=5)
            assert ready.status_code == 200, ready.text
            assert ready.json() == {"name": name, "ready": True}
            image = base64.b64encode((DATA_DIR / "7_64px.jpg").read_bytes()).decode()
            answer = requests.post(
                f"{url}/v2/models/{name}/infer",
                json={
                    "inputs": [
                        {"name": "image", "shape": [1], "datatype": "BYTES", "data": [image]}
                    ]
                },
                timeout=10,
            )
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["model_name"] == name
            [label] = [output for output in body["outputs"] if output["name"] == "label"]
            assert label["data"] == [7]
            assert requests.get(f"{url}/v2/models/digits/ready", timeout=5).status_code == 404
        finally:
            # SIGINT: no shutdown delay (the runtime's 5 s are for KServe's endpoints).
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                raise
    assert process.returncode == 0


@pytest.mark.integration
def test_the_kserve_grpc_container_answers_its_probes_and_infers(
    kserve_storage: Path, tmp_path: Path
) -> None:
    """The gRPC runtime's container, run locally: its probes' health services, then a call."""
    import grpc
    import tritonclient.grpc as triton
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    runtime = one(DEPLOY / "kserve" / "servingruntime-grpc.yaml", "ServingRuntime")
    [container] = runtime["spec"]["containers"]
    name = "my-digits"
    args = [arg.replace("{{.Name}}", name) for arg in container["args"]]
    _, *rest = container["command"]
    env = env_of(container) | {
        "DIGITSERVE_MODEL_PATH": str(kserve_storage),
        "DIGITSERVE_HOST": "127.0.0.1",
        "DIGITSERVE_PORT": str(free_port()),
        "DIGITSERVE_GRPC_PORT": str(free_port()),  # the runtime's 8081, locally
    }
    outside = {key: value for key, value in os.environ.items() if not key.startswith("DIGITSERVE_")}
    target = f"127.0.0.1:{env['DIGITSERVE_GRPC_PORT']}"
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "digitserve", *rest, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=outside | env,
            start_new_session=True,
        )
        try:
            wait_until_ready(process, f"http://127.0.0.1:{env['DIGITSERVE_PORT']}", log_path)
            with grpc.insecure_channel(target) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                for probe in ("readinessProbe", "livenessProbe"):
                    service = container[probe]["grpc"]["service"]
                    reply = health.Check(health_pb2.HealthCheckRequest(service=service))
                    assert reply.status == health_pb2.HealthCheckResponse.SERVING, probe
            client = triton.InferenceServerClient(target)
            image = triton.InferInput("image", [1], "BYTES")
            image.set_data_from_numpy(
                np.array([(DATA_DIR / "7_64px.jpg").read_bytes()], dtype=np.object_)
            )
            result = client.infer(name, [image])
            client.close()
            assert result.as_numpy("label").tolist() == [7]
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                raise
    assert process.returncode == 0


def test_the_deploying_page_names_files_that_exist() -> None:
    page = (ROOT / "docs" / "deploying.md").read_text()
    named = set(re.findall(r"\b(?:deploy|src|tests|data)/[\w./-]*\w/?", page))
    assert {"deploy/kserve/servingruntime.yaml", "deploy/kubernetes/"} <= named
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing
