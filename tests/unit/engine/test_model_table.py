"""The model table's lifecycle: failed uploads change nothing, bad names leave no trace and no
memory, OS errors name no server path, model control and strict readiness as in Triton."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from model_builders import ADD_CONFIG, add_model, null_config, run_with_engine, write_model

from forwardpass.config import ServerConfig
from forwardpass.datatypes import DataType
from forwardpass.engine import Engine, ModelState
from forwardpass.errors import (
    InvalidArgument,
    InvalidModelConfig,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from forwardpass.protocol.http import HttpApp, HttpRequest
from forwardpass.types import InferRequest, Tensor

UPLOAD = {"model_control_mode": "explicit", "load_models": ("*",), "allow_model_upload": True}


@pytest.fixture
def add_repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_model(
        root, "add", config=ADD_CONFIG, model=add_model(), files={"labels.txt": "a\nb\nc\n"}
    )
    return root


async def _add(engine: Engine, value: float = 1.0) -> Any:
    x = np.full((1, 3), value, np.float32)
    response = await engine.infer(InferRequest("add", [Tensor("x", DataType.FP32, x)]))
    return response.outputs[0].data


def test_failed_upload_leaves_the_model_on_disk_and_serving(add_repo: Path) -> None:
    model_file = add_repo / "add" / "1" / "model.onnx"
    good = model_file.read_bytes()

    async def body(engine: Engine) -> None:
        before = await _add(engine)
        config = {"platform": "onnxruntime_onnx", "max_batch_size": 8}
        with pytest.raises(InvalidModelConfig):
            await engine.load("add", config, {"file:1/model.onnx": b"garbage"})
        assert model_file.read_bytes() == good  # the repository is as it was
        assert engine.handle("add").state is ModelState.READY  # and the old model serves
        assert (await _add(engine) == before).all()
        await engine.load("add")  # a reload (or a restart) still finds the good model
        assert engine.is_ready("add")
        assert not [p for p in add_repo.rglob("*") if p.name.startswith(".upload-")]

    run_with_engine(add_repo, body, **UPLOAD)


def test_successful_upload_is_kept_with_its_config(add_repo: Path) -> None:
    async def body(engine: Engine) -> None:
        config = {"platform": "onnxruntime_onnx", "max_batch_size": 2}
        model = add_model().SerializeToString()
        await engine.load("copy", config, {"file:1/model.onnx": model})
        assert engine.handle("copy").config.max_batch_size == 2
        assert (add_repo / "copy" / "1" / "model.onnx").read_bytes() == model
        assert engine.handle("copy").entry.path == add_repo / "copy"  # type: ignore[union-attr]
        await engine.load("copy")  # from the repository now, with the uploaded config
        assert engine.handle("copy").config.max_batch_size == 2

    run_with_engine(add_repo, body, **UPLOAD)


def test_failed_upload_of_a_new_model_leaves_no_entry_and_no_folder(add_repo: Path) -> None:
    async def body(engine: Engine) -> None:
        with pytest.raises(InvalidModelConfig):
            await engine.load("fresh", {"platform": "onnxruntime_onnx"}, {"1/model.onnx": b"x"})
        assert engine.table.get("fresh") is None
        assert not (add_repo / "fresh").exists()
        assert "fresh" not in {row.name for row in engine.index()}

    run_with_engine(add_repo, body, **UPLOAD)


def test_overlong_name_is_400_without_server_paths_and_leaves_no_ghost(add_repo: Path) -> None:
    name = "é" * 200  # 200 characters, 400 bytes: over the file system's 255

    async def body(engine: Engine) -> None:
        for call in (
            engine.load(name),
            engine.load(name, {"backend": "null"}, {"1/x": b"x"}),
        ):
            with pytest.raises(InvalidArgument) as info:
                await call
            assert "255 bytes" in info.value.message
            assert "/" not in info.value.message
        assert name not in {row.name for row in engine.index()}
        with pytest.raises(InvalidArgument):
            await engine.unload(name)
        with pytest.raises(NotFound):
            await engine.unload("never-there")

    run_with_engine(add_repo, body, **UPLOAD)


def test_os_errors_name_no_server_path(add_repo: Path) -> None:
    broken = add_repo / "odd" / "1" / "model.onnx"
    broken.mkdir(parents=True)  # a folder where the model file should be
    (add_repo / "dirconfig" / "config.pbtxt").mkdir(parents=True)

    async def body(engine: Engine) -> None:
        for name in ("odd", "dirconfig"):
            with pytest.raises(InvalidModelConfig) as info:
                await engine.load(name)
            assert str(add_repo) not in info.value.message, info.value.message
            reason = engine.handle(name).reason
            assert reason and str(add_repo) not in reason
        assert not (tmp := [r.reason for r in engine.index() if str(add_repo) in r.reason]), tmp

    run_with_engine(add_repo, body, model_control_mode="explicit")


def test_unknown_names_keep_no_memory(add_repo: Path) -> None:
    async def body(engine: Engine) -> None:
        app = HttpApp(engine)

        async def churn(start: int, count: int) -> None:
            for i in range(start, start + count):
                name = f"unknown-{i}"
                infer = orjson.dumps(
                    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
                )
                for method, path, payload in (
                    ("POST", f"/v2/repository/models/{name}/load", b"{}"),
                    ("POST", f"/v2/repository/models/{name}/unload", b"{}"),
                    ("POST", f"/v2/models/{name}/infer", infer),
                    ("GET", f"/v2/models/{name}", b""),
                    ("GET", f"/v2/models/{name}/ready", b""),
                ):
                    response = await app.handle(HttpRequest(method, path, payload))
                    assert response.status == 404, response.body

        await churn(0, 500)  # warm every code path first
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            await churn(500, 10_000)
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        stats = after.compare_to(before, "lineno")
        grown = sum(s.size_diff for s in stats if s.size_diff > 0)
        assert grown < 200_000, f"{grown} bytes kept after 10,000 unknown names"
        assert engine.table._locks == {}
        assert engine.table.names() == {"add"}

    run_with_engine(add_repo, body, model_control_mode="explicit", load_models=("*",))


def test_model_control_none_and_poll_refuse_the_api_as_triton(add_repo: Path) -> None:
    async def body(engine: Engine) -> None:
        assert engine.is_ready("add")  # none loads every model at start
        for call in (engine.load("add"), engine.unload("add")):
            with pytest.raises(Unavailable, match="explicit model load / unload is not allowed"):
                await call
        assert engine.is_ready("add")

    for mode in ("none", "poll"):
        run_with_engine(add_repo, body, model_control_mode=mode)


def test_uploads_need_the_explicit_opt_in(add_repo: Path) -> None:
    async def body(engine: Engine) -> None:
        with pytest.raises(PermissionDenied, match="--allow-model-upload"):
            await engine.load("new", {"backend": "null"}, {"1/x": b"x"})
        assert not (add_repo / "new").exists()

    run_with_engine(add_repo, body, model_control_mode="explicit")


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"model_control_mode": "sometimes"}, "not one of none, poll, explicit"),
        ({"load_models": ("add",)}, "requires --model-control-mode=explicit"),
        ({"model_control_mode": "explicit", "load_models": ("*", "a")}, "only --load-model"),
        ({"allow_model_upload": True}, "only with --model-control-mode=explicit"),
        ({"model_control_mode": "poll", "repository_poll_secs": 0}, "must be positive"),
    ],
)
def test_model_control_config_is_checked(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidArgument, match=words.replace("*", r"\*")):
        ServerConfig(**fields)


def test_strict_readiness(add_repo: Path) -> None:
    write_model(add_repo, "broken", config="max_batch_size: [[[\n", versions=(1,))

    async def strict(engine: Engine) -> None:
        assert engine.is_ready("add")
        assert not engine.ready  # a model it was asked to load is not ready
        await engine.unload("broken")  # unloaded on purpose: no longer waited for
        assert engine.ready

    async def lenient(engine: Engine) -> None:
        assert engine.ready

    run_with_engine(add_repo, strict)
    run_with_engine(add_repo, lenient, strict_readiness=False)


def test_unknown_backend_is_unavailable_with_its_reason(add_repo: Path) -> None:
    config = null_config("torchy").replace('"null"', '"tensorflow"')
    write_model(add_repo, "torchy", config=config, files={"1/model.savedmodel": "weights"})

    async def body(engine: Engine) -> None:
        handle = engine.handle("torchy")
        assert handle.state is ModelState.UNAVAILABLE
        assert "unknown backend 'tensorflow'" in handle.reason

    run_with_engine(add_repo, body)


def test_config_override_json_roundtrip_is_not_persisted_without_files(add_repo: Path) -> None:
    async def body(engine: Engine) -> None:
        await engine.load(
            "add", json.loads('{"platform": "onnxruntime_onnx", "max_batch_size": 2}')
        )
        assert engine.handle("add").config.max_batch_size == 2
        await engine.load("add")
        assert engine.handle("add").config.max_batch_size != 2

    run_with_engine(add_repo, body)
