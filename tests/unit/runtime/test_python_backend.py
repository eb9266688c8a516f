"""The Python backend through the engine: Triton's examples, BLS, decoupled streams, native
classes, and every way a model can fail (each failing only its own model or requests)."""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import python_models as pm
from model_builders import run_with_engine

from forwardpass.datatypes import DataType
from forwardpass.engine import Engine, ModelState
from forwardpass.errors import InternalError, InvalidArgument, Unsupported
from forwardpass.types import InferRequest, RequestedOutput, Tensor


def t(name: str, array: Any, datatype: DataType | None = None) -> Tensor:
    array = np.asarray(array)
    return Tensor(name, datatype or DataType.from_numpy(array.dtype), array)


def add_sub_request(model: str = "add_sub", **kw: Any) -> InferRequest:
    a = np.array([1, 2, 3, 4], np.float32)
    b = np.array([10, 20, 30, 40], np.float32)
    return InferRequest(model_name=model, inputs=[t("INPUT0", a), t("INPUT1", b)], **kw)


def test_add_sub_runs_as_in_triton(tmp_path: Path) -> None:
    root = pm.triton_examples(tmp_path / "models")

    async def body(engine: Engine) -> None:
        response = await engine.infer(add_sub_request())
        out = {o.name: o.data for o in response.outputs}
        np.testing.assert_array_equal(out["OUTPUT0"], [11, 22, 33, 44])
        np.testing.assert_array_equal(out["OUTPUT1"], [-9, -18, -27, -36])
        meta = engine.metadata("add_sub")
        assert meta.platform == "python"
        assert [i.name for i in meta.inputs] == ["INPUT0", "INPUT1"]

    run_with_engine(root, body)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_bls_calls_another_model_through_the_engine(tmp_path: Path, asynchronous: bool) -> None:
    root = pm.triton_examples(tmp_path / "models")

    async def body(engine: Engine) -> None:
        request = add_sub_request("bls_sync", parameters={"async": asynchronous})
        request.inputs.append(t("MODEL_NAME", np.array([b"add_sub"], object), DataType.BYTES))
        response = await engine.infer(request)
        out = {o.name: o.data for o in response.outputs}
        np.testing.assert_array_equal(out["OUTPUT0"], [11, 22, 33, 44])
        # The called model counted the request: it went through add_sub's own batcher.
        assert engine.stats("add_sub")[0].inference_count == 1
        # A BLS call to an unknown model comes back as an error response; the model raises.
        request.inputs[-1] = t("MODEL_NAME", np.array([b"nope"], object), DataType.BYTES)
        with pytest.raises(InternalError, match="Request for unknown model: 'nope'"):
            await engine.infer(request)

    run_with_engine(root, body)


def test_decoupled_repeat_streams_responses_and_plain_infer_is_refused(tmp_path: Path) -> None:
    root = pm.triton_examples(tmp_path / "models")

    async def body(engine: Engine) -> None:
        request = InferRequest(
            model_name="repeat_int32",
            inputs=[
                t("IN", np.array([4, 2, 0, 1], np.int32)),
                t("DELAY", np.array([1, 2, 3, 4], np.uint32)),
                t("WAIT", np.array([5], np.uint32)),
            ],
        )
        got = [r async for r in engine.infer_stream(request)]
        outs = [{o.name: int(o.data[0]) for o in r.outputs} for r in got]
        assert [o["OUT"] for o in outs] == [4, 2, 0, 1]
        assert [o["IDX"] for o in outs] == [0, 1, 2, 3]
        with pytest.raises(Unsupported, match="decoupled"):
            await engine.infer(request)
        # Zero responses: IN of shape [0] ends the stream at once.
        empty = InferRequest(
            model_name="repeat_int32",
            inputs=[
                t("IN", np.zeros(0, np.int32)),
                t("DELAY", np.zeros(0, np.uint32)),
                t("WAIT", np.array([0], np.uint32)),
            ],
        )
        assert [r async for r in engine.infer_stream(empty)] == []

        async def square(n: int) -> list[int]:
            req = InferRequest(model_name="square_int32", inputs=[t("IN", np.array([n], np.int32))])
            return [int(r.outputs[0].data[0]) async for r in engine.infer_stream(req)]

        results = await asyncio.gather(*(square(n) for n in (3, 0, 5)))
        assert results == [[3] * 3, [], [5] * 5]
        # A non-decoupled model streams its one response.
        assert len([r async for r in engine.infer_stream(add_sub_request())]) == 1

    run_with_engine(root, body)


def test_preprocessing_example_shape(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "models"
    pm.write(root, "preprocess", pm.PREPROCESS_CONFIG, pm.PREPROCESS)
    buffer = io.BytesIO()
    Image.new("RGB", (50, 30), (255, 0, 0)).save(buffer, format="JPEG")
    data = np.frombuffer(buffer.getvalue(), np.uint8)[np.newaxis]

    async def body(engine: Engine) -> None:
        req = InferRequest(model_name="preprocess", inputs=[t("INPUT_0", data)])
        outs = await asyncio.gather(*(engine.infer(req) for _ in range(4)))
        for out in outs:
            assert out.outputs[0].data.shape == (1, 3, 224, 224)
            assert out.outputs[0].data[0, 0].mean() > 2  # red, normalized

    run_with_engine(root, body)


def test_auto_complete_config_fills_the_config(tmp_path: Path) -> None:
    root = tmp_path / "models"
    pm.write(root, "auto", 'backend: "python"', pm.AUTO_COMPLETE)

    async def body(engine: Engine) -> None:
        config = engine.model_config("auto")
        assert config.max_batch_size == 4 and config.dynamic_batching is not None
        req = InferRequest(model_name="auto", inputs=[t("x", np.array([[1, 2]], np.int32))])
        np.testing.assert_array_equal((await engine.infer(req)).outputs[0].data, [[2, 4]])

    run_with_engine(root, body)


# ------------------------------------------------------------------------------ native


def native_repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    code = tmp_path / "code"
    code.mkdir()
    (code / "native_models.py").write_text(pm.NATIVE)
    for name, cls in (("doubler", "Doubler"), ("hinted", "Hinted"), ("words", "Words")):
        pm.write(
            root,
            name,
            f"""
            backend: "python"
            parameters {{ key: "class" value {{ string_value: "native_models:{cls}" }} }}
            parameters {{ key: "module_path" value {{ string_value: "{code}" }} }}
            """,
        )
    return root


def test_native_class_batches_and_serves_metadata(tmp_path: Path) -> None:
    root = native_repo(tmp_path)

    async def body(engine: Engine) -> None:
        meta = engine.metadata("doubler")
        assert [(i.name, i.datatype, i.shape) for i in meta.inputs] == [
            ("x", DataType.FP32, (-1, 3))
        ]
        assert engine.model_config("doubler").max_batch_size == 16
        requests = [
            InferRequest(model_name="doubler", inputs=[t("x", np.full((1, 3), i, np.float32))])
            for i in range(12)
        ]
        outs = await asyncio.gather(*(engine.infer(r) for r in requests))
        for i, out in enumerate(outs):
            np.testing.assert_array_equal(out.outputs[0].data, np.full((1, 3), 2 * i))
            assert out.outputs[0].data.dtype == np.float32
        stats = engine.stats("doubler")[0]
        assert stats.execution_count < 12  # requests shared predict() calls

        hinted = InferRequest(
            model_name="hinted",
            inputs=[t("a", np.ones((2, 3), np.float32)), t("b", np.array([[1.0], [2.0]]))],
        )
        out = await engine.infer(hinted)
        np.testing.assert_array_equal(out.outputs[0].data, [[4.0], [5.0]])

        words = InferRequest(
            model_name="words",
            inputs=[t("text", np.array([[b"hello"]], object), DataType.BYTES)],
        )
        out = await engine.infer(words)
        got = {o.name: o.data for o in out.outputs}
        assert got["length"].tolist() == [[5]] and got["upper"].tolist() == [[b"HELLO"]]
        bad = InferRequest(
            model_name="words", inputs=[t("text", np.array([[b"bad"]], object), DataType.BYTES)]
        )
        results = await asyncio.gather(
            engine.infer(bad), engine.infer(words), return_exceptions=True
        )
        assert isinstance(results[0], InternalError) and "cannot decode 'bad'" in str(results[0])
        assert not isinstance(results[1], Exception)

    run_with_engine(root, body)


# ------------------------------------------------------------------------------ failures


def identity(*values: float) -> InferRequest:
    return InferRequest(model_name="identity", inputs=[t("x", np.array([values], np.float32))])


def test_each_failure_names_the_model_and_the_instance_recovers(tmp_path: Path) -> None:
    root = tmp_path / "models"
    pm.write(root, "identity", pm.IDENTITY_CONFIG, pm.IDENTITY)
    pm.write(root, "add_sub", pm.ADD_SUB_CONFIG, pm.ADD_SUB)

    async def body(engine: Engine) -> None:
        async def ok() -> None:
            out = await engine.infer(identity(1, 2))
            np.testing.assert_array_equal(out.outputs[0].data, [[1, 2]])

        await ok()
        cases = [
            (-4, InternalError, "output 'y' has datatype INT64, the config declares FP32"),
            (-5, InternalError, "output 'y' has shape [1], the config declares [1,-1]"),
            (-6, InvalidArgument, "-6 is not allowed"),
            (-7, InternalError, "ValueError: x holds -7"),
            (-2, InternalError, "sys.exit(3)"),
            (-3, InternalError, "killed by signal SIGKILL"),
            (-1, InternalError, "did not return within 2s"),
        ]
        for value, error, words in cases:
            with pytest.raises(error) as info:
                await engine.infer(identity(value, 1))
            assert "identity" in info.value.message and words in info.value.message, (
                info.value.message
            )
            # Other models never noticed; this one serves again (after its restart).
            await engine.infer(add_sub_request())
            for _ in range(100):
                try:
                    await ok()
                    break
                except InternalError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"identity did not recover after {value}")
        assert engine.handle("identity").state is ModelState.READY

    run_with_engine(root, body)


def test_a_bad_request_in_a_batch_fails_alone(tmp_path: Path) -> None:
    root = tmp_path / "models"
    pm.write(root, "identity", pm.IDENTITY_CONFIG, pm.IDENTITY)

    async def body(engine: Engine) -> None:
        results = await asyncio.gather(
            *(engine.infer(identity(v, 0)) for v in (1, -6, 2, -4, 3)), return_exceptions=True
        )
        assert isinstance(results[1], InvalidArgument)
        assert isinstance(results[3], InternalError)
        for i in (0, 2, 4):
            assert results[i].outputs[0].data[0, 0] == i // 2 + 1  # type: ignore[union-attr]

    run_with_engine(root, body)


@pytest.mark.parametrize(
    ("model", "words"),
    [
        (pm.IMPORT_FAILS, "No module named 'a_module_that_does_not_exist'"),
        (pm.INITIALIZE_FAILS, "RuntimeError: no weights found for broken"),
    ],
)
def test_a_model_that_cannot_load_is_unavailable_with_the_reason(
    tmp_path: Path, model: str, words: str
) -> None:
    root = tmp_path / "models"
    pm.write(root, "broken", pm.ADD_SUB_CONFIG.replace('"add_sub"', '"broken"'), model)
    pm.write(root, "add_sub", pm.ADD_SUB_CONFIG, pm.ADD_SUB)

    async def body(engine: Engine) -> None:
        handle = engine.handle("broken")
        assert handle.state is ModelState.UNAVAILABLE
        assert words in handle.reason, handle.reason
        await engine.infer(add_sub_request())

    run_with_engine(root, body)


def test_wrong_number_of_responses(tmp_path: Path) -> None:
    root = tmp_path / "models"
    pm.write(root, "count", pm.ADD_SUB_CONFIG.replace('"add_sub"', '"count"'), pm.WRONG_COUNT)

    async def body(engine: Engine) -> None:
        with pytest.raises(InternalError, match=r"model 'count': execute\(\) returned 0 "):
            await engine.infer(add_sub_request("count"))

    run_with_engine(root, body)


def test_outputs_requested_by_name(tmp_path: Path) -> None:
    root = pm.triton_examples(tmp_path / "models")

    async def body(engine: Engine) -> None:
        response = await engine.infer(add_sub_request(outputs=[RequestedOutput("OUTPUT1")]))
        assert [o.name for o in response.outputs] == ["OUTPUT1"]

    run_with_engine(root, body)
