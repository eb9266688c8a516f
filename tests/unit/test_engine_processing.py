"""Declared processing through the engine: raw images in, interpreted answers out."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from model_builders import run_with_engine, write_model
from onnx import TensorProto, helper
from PIL import Image

from forwardpass.datatypes import DataType
from forwardpass.engine import Engine
from forwardpass.errors import InvalidArgument
from forwardpass.protocol.documents import index_document, metadata_document
from forwardpass.types import InferRequest, RequestedOutput, Tensor


def channel_means_model() -> onnx.ModelProto:
    """logits[n, c] = mean over H, W of image[n, c] (a 'classifier' of the dominant colour)."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["logits"], axes=[2, 3], keepdims=0)],
        "means",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


PROCESSING = {
    "inputs": [
        {
            "name": "photo",
            "kind": "image",
            "to": "image",
            "resize": {"shorter": 8},
            "crop": [8, 8],
            "scale": 0.05,
        }
    ],
    "outputs": [
        {"name": "colour", "from": "logits", "steps": ["label"]},
        {"name": "top", "from": "logits", "steps": ["softmax", {"topk": 2}]},
    ],
}


def config() -> str:
    return f"""
name: "colours"
max_batch_size: 8
dynamic_batching {{ }}
output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" }} ]
parameters {{ key: "processing" value: {{ string_value: {json.dumps(json.dumps(PROCESSING))} }} }}
"""


def png(colour: tuple[int, int, int], size: tuple[int, int] = (20, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def photo(*blobs: bytes) -> Tensor:
    array = np.empty((len(blobs), 1), dtype=object)
    for i, blob in enumerate(blobs):
        array[i, 0] = blob
    return Tensor("photo", DataType.BYTES, array)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_model(
        tmp_path,
        "colours",
        config=config(),
        model=channel_means_model(),
        files={"labels.txt": "red\ngreen\nblue\n"},
    )
    return tmp_path


def test_metadata_shows_the_raw_input_and_interpreted_outputs(repo: Path) -> None:
    async def body(engine: Engine) -> None:
        meta = metadata_document(engine.metadata("colours"))
        assert meta["inputs"] == [{"name": "photo", "datatype": "BYTES", "shape": [-1, 1]}]
        assert meta["outputs"] == [
            {"name": "colour", "datatype": "BYTES", "shape": [-1, 1]},
            {"name": "top", "datatype": "BYTES", "shape": [-1, 2]},
        ]

    run_with_engine(repo, body)


def test_images_in_labels_out(repo: Path) -> None:
    async def body(engine: Engine) -> None:
        response = await engine.infer(
            InferRequest(model_name="colours", inputs=[photo(png((250, 10, 10)), png((0, 0, 200)))])
        )
        answers = {t.name: t.data for t in response.outputs}
        assert answers["colour"].tolist() == [[b"red"], [b"blue"]]
        assert answers["top"][0, 0].decode().endswith(":0:red")
        only = await engine.infer(
            InferRequest(
                model_name="colours",
                inputs=[photo(png((0, 255, 0)))],
                outputs=[RequestedOutput("colour")],
            )
        )
        assert [t.name for t in only.outputs] == ["colour"]
        assert only.outputs[0].data.tolist() == [[b"green"]]

    run_with_engine(repo, body)


def test_a_bad_image_fails_alone(repo: Path) -> None:
    async def body(engine: Engine) -> None:
        requests = [
            engine.infer(InferRequest(model_name="colours", inputs=[photo(png((0, 0, 255)))]))
            for _ in range(6)
        ]
        bad = engine.infer(InferRequest(model_name="colours", inputs=[photo(b"\x89PNG broken")]))
        results = await asyncio.gather(*requests, bad, return_exceptions=True)
        assert all(not isinstance(r, BaseException) for r in results[:-1])
        assert isinstance(results[-1], InvalidArgument)
        assert "cannot decode image" in results[-1].message
        with pytest.raises(
            InvalidArgument, match="unexpected inference input 'image' for model 'colours'"
        ):
            await engine.infer(
                InferRequest(
                    model_name="colours",
                    inputs=[Tensor("image", DataType.FP32, np.zeros((1, 3, 8, 8), np.float32))],
                )
            )

    run_with_engine(repo, body)


def test_a_wrong_declaration_makes_the_model_unavailable(tmp_path: Path) -> None:
    bad = config().replace('\\"to\\": \\"image\\"', '\\"to\\": \\"nope\\"')
    write_model(
        tmp_path,
        "colours",
        config=bad,
        model=channel_means_model(),
        files={"labels.txt": "red\ngreen\nblue\n"},
    )

    async def body(engine: Engine) -> None:
        (entry,) = index_document(engine.index())
        assert entry["state"] == "UNAVAILABLE"
        assert "processing" in entry["reason"] and "'to'" in entry["reason"]

    run_with_engine(tmp_path, body)


def test_yaml_config_declares_processing_as_a_mapping(tmp_path: Path) -> None:
    import yaml

    from forwardpass.repository import ModelRepository

    folder = write_model(
        tmp_path, "colours", model=channel_means_model(), files={"labels.txt": "red\ngreen\nblue\n"}
    )
    (folder / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "max_batch_size": 8,
                "output": [
                    {
                        "name": "logits",
                        "data_type": "TYPE_FP32",
                        "dims": [3],
                        "label_filename": "labels.txt",
                    }
                ],
                "processing": PROCESSING,
            }
        )
    )
    entry = ModelRepository(tmp_path).read("colours")
    assert json.loads(entry.config.parameters["processing"]) == PROCESSING

    async def body(engine: Engine) -> None:
        response = await engine.infer(
            InferRequest(
                model_name="colours",
                inputs=[photo(png((0, 250, 0)))],
                outputs=[RequestedOutput("colour")],
            )
        )
        assert response.outputs[0].data.tolist() == [[b"green"]]

    run_with_engine(tmp_path, body)


def test_processing_time_is_measured_separately(repo: Path) -> None:
    from forwardpass.monitor.metrics import metrics_renderer

    async def body(engine: Engine) -> None:
        await engine.infer(InferRequest(model_name="colours", inputs=[photo(png((9, 9, 9)))]))
        stats = engine.handle("colours").versions[1].stats
        assert stats.preprocess_latency.count == 1 and stats.postprocess_latency.count == 1
        text = metrics_renderer(engine)().decode()
        assert (
            'forwardpass_preprocess_duration_seconds_count{model="colours",version="1"} 1.0' in text
        )
        assert (
            'forwardpass_postprocess_duration_seconds_count{model="colours",version="1"} 1.0'
            in text
        )

    run_with_engine(repo, body)


def constant_detector() -> onnx.ModelProto:
    """image [n,3,32,32] → one YOLO-style row per picture: box (16,16,8,8) xywh, classes .9/.1."""
    from onnx import numpy_helper

    row = np.array([[[16.0, 16.0, 8.0, 8.0, 0.9, 0.1]]], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2, 3], keepdims=1),
            helper.make_node("Reshape", ["m", "shape"], ["m3"]),
            helper.make_node("Mul", ["m3", "zero"], ["z"]),
            helper.make_node("Add", ["z", "row"], ["output0"]),
        ],
        "detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 32, 32])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["n", 1, 6])],
        initializer=[
            numpy_helper.from_array(np.array([-1, 1, 1], dtype=np.int64), "shape"),
            numpy_helper.from_array(np.zeros((1,), dtype=np.float32), "zero"),
            numpy_helper.from_array(row, "row"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_detections_come_back_in_the_pictures_own_pixels(tmp_path: Path) -> None:
    declaration = {
        "inputs": [{"name": "photo", "kind": "image", "to": "image",
                    "resize": {"letterbox": [32, 32], "fill": 0}}],
        "outputs": [{"name": "boxes", "from": "output0", "decode": "nms", "max_detections": 2,
                     "image": "photo", "labels": "names"}],
    }  # fmt: skip
    config = f"""
max_batch_size: 4
dynamic_batching {{ }}
output [ {{ name: "output0" data_type: TYPE_FP32 dims: [ 1, 6 ] label_filename: "labels.txt" }} ]
parameters {{ key: "processing" value: {{ string_value: {json.dumps(json.dumps(declaration))} }} }}
"""
    write_model(tmp_path, "det", config=config, model=constant_detector(),
                files={"labels.txt": "kite\nbird\n"})  # fmt: skip

    async def body(engine: Engine) -> None:
        # A 64x32 picture letterboxed into 32x32: scale 1/2, 8 rows of padding above.
        response = await engine.infer(
            InferRequest(model_name="det", inputs=[photo(png((0, 0, 0), size=(64, 32)))])
        )
        got = {t.name: t.data for t in response.outputs}
        box = got["boxes"][0, 0]
        assert np.allclose(box[:4], [24.0, 8.0, 40.0, 24.0]) and box[5] == 0
        assert got["boxes"][0, 1].tolist() == [-1.0] * 6
        assert got["names"][0].tolist() == [b"kite", b""]

    run_with_engine(tmp_path, body)


def test_an_output_step_reading_a_missing_image_is_a_config_error(tmp_path: Path) -> None:
    declaration = {"outputs": [{"name": "b", "from": "output0", "decode": "nms", "image": "x"}]}
    config = f"""
max_batch_size: 4
parameters {{ key: "processing" value: {{ string_value: {json.dumps(json.dumps(declaration))} }} }}
"""
    write_model(tmp_path, "det", config=config, model=constant_detector())

    async def body(engine: Engine) -> None:
        (entry,) = index_document(engine.index())
        assert entry["state"] == "UNAVAILABLE" and "x@geometry" in entry["reason"]

    run_with_engine(tmp_path, body)


def test_undecodable_images_are_explained_without_python_reprs(repo: Path) -> None:
    import base64

    async def body(engine: Engine) -> None:
        async def message(blob: bytes) -> str:
            request = InferRequest(model_name="colours", inputs=[photo(blob)])
            with pytest.raises(InvalidArgument) as caught:
                await engine.infer(request)
            assert "object at 0x" not in caught.value.message and "<_io" not in caught.value.message
            return caught.value.message

        # A JSON BYTES string holding base64 arrives as the base64 text's bytes.
        hint = await message(base64.b64encode(png((250, 10, 10))))
        assert "base64 text of a PNG image" in hint and "binary tensor" in hint
        url = await message(b"data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xff\xe0junk"))
        assert "data: URL (base64 text) of a JPEG image" in url
        garbage = await message(b"hello, world")
        assert "12 bytes that are not an image" in garbage and "68 65 6c 6c" in garbage
        truncated = await message(png((0, 0, 255))[:40])
        assert "a PNG image of 40 bytes that cannot be decoded" in truncated

    run_with_engine(repo, body)
