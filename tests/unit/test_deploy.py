"""The Dockerfile and the KServe manifests: they parse, and every argument they give
``forwardpass serve`` is one its parser accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import yaml

from forwardpass.cli.serve import serve
from forwardpass.config import ServerConfig

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
KSERVE = ROOT / "deploy" / "kserve"


def _instructions() -> dict[str, list[str]]:
    """Dockerfile instruction → its arguments (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


def _serve_params(args: list[str]) -> dict[str, Any]:
    """``forwardpass serve ARGS`` parsed as the CLI parses them (a bad one raises)."""
    assert args[0] == "serve", args
    with click.Context(serve) as parent:
        ctx = serve.make_context("serve", list(args[1:]), parent=parent)
    return dict(ctx.params)


def test_the_dockerfile_serves_the_mounted_repository_as_a_user() -> None:
    steps = _instructions()
    assert steps["FROM"][0].startswith("python:") and "slim" in steps["FROM"][0]
    assert any("[grpc]" in run for run in steps["RUN"])
    assert json.loads(steps["ENTRYPOINT"][-1]) == ["forwardpass"]
    params = _serve_params(json.loads(steps["CMD"][-1]))
    assert params["model_repository"] == Path("/models")
    assert params["host"] == "0.0.0.0"
    exposed = {int(p) for p in steps["EXPOSE"][-1].split()}
    assert exposed == {params["http_port"], params["grpc_port"]} == {8000, 8001}
    user = steps["USER"][-1]
    assert user not in ("root", "0")
    (check,) = steps["HEALTHCHECK"]
    assert f"127.0.0.1:{params['http_port']}/v2/health/ready" in check


def _runtime() -> dict[str, Any]:
    document = yaml.safe_load((KSERVE / "servingruntime.yaml").read_text())
    assert document["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert document["kind"] == "ServingRuntime"
    return dict(document)


def test_the_serving_runtime_is_an_open_inference_protocol_runtime() -> None:
    runtime = _runtime()
    spec = runtime["spec"]
    assert set(spec["protocolVersions"]) == {"v2", "grpc-v2"}
    formats = {f["name"]: f for f in spec["supportedModelFormats"]}
    assert set(formats) == {"onnx", "triton"}
    assert all(f["autoSelect"] and isinstance(f["version"], str) for f in formats.values())
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    params = _serve_params(container["args"])
    assert params["model_repository"] == Path("/mnt/models")  # KServe's storage mount
    assert params["host"] == "0.0.0.0"
    assert (params["http_port"], params["grpc_port"]) == (8080, 9000)  # KServe's defaults
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(params["http_port"])
    assert spec["annotations"]["prometheus.kserve.io/path"] == "/metrics"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert ServerConfig.from_env(env).workers == int(env["FORWARDPASS_WORKERS"])


def test_the_inference_services_use_the_runtime() -> None:
    spec = _runtime()["spec"]
    formats = {f["name"] for f in spec["supportedModelFormats"]}
    grpc_port = _serve_params(spec["containers"][0]["args"])["grpc_port"]
    services = list(yaml.safe_load_all((KSERVE / "inferenceservice.yaml").read_text()))
    assert len(services) == 2
    for service in services:
        assert (service["apiVersion"], service["kind"]) == (
            "serving.kserve.io/v1beta1",
            "InferenceService",
        )
        model = service["spec"]["predictor"]["model"]
        assert model["runtime"] == _runtime()["metadata"]["name"]
        assert model["modelFormat"]["name"] in formats
        assert model["protocolVersion"] in spec["protocolVersions"]
        assert re.match(r"^(pvc|gs|s3|https?)://", model["storageUri"])
        if model["protocolVersion"] == "grpc-v2":
            (port,) = model["ports"]
            assert port["name"] == "h2c" and port["containerPort"] == grpc_port
