"""Output decoders: CTC greedy text and YOLO-style boxes through NMS, in chains and decode:."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from model_builders import run_with_engine, write_model
from onnx import TensorProto, helper

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidModelConfig
from forwardpass.model_config import ModelConfig, TensorSpec
from forwardpass.processing.decoding import Decoder
from forwardpass.processing.outputs import OutputChain
from forwardpass.processing.spec import build_processing
from forwardpass.protocol.documents import metadata_document


def one_hot(classes: list[int], width: int, confidence: float = 0.9) -> np.ndarray:
    """[T, C] probabilities: ``confidence`` on each step's class, the rest spread evenly."""
    probs = np.full((len(classes), width), (1 - confidence) / (width - 1), dtype=np.float32)
    probs[np.arange(len(classes)), classes] = confidence
    return probs


def ctc_chain(
    options: dict[str, object], dims: tuple[int, ...] = (-1, 4), **kw: object
) -> OutputChain:
    source = TensorSpec("probs", DataType.FP32, dims)
    return OutputChain("text", source, [{"ctc_greedy": options}], (), {}, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- CTC
def test_ctc_collapses_repeats_and_drops_blanks() -> None:
    chain = ctc_chain({"alphabet": "abc"})
    assert chain.outputs[0].datatype is DataType.BYTES and chain.outputs[0].dims == (1,)
    # a a _ a b b _ _ c  →  "aabc"; all blanks → "".
    rows = np.stack([one_hot([1, 1, 0, 1, 2, 2, 0, 0, 3], 4), one_hot([0] * 9, 4)])
    assert chain({"probs": rows})["text"].tolist() == [[b"aabc"], [b""]]


def test_ctc_dictionary_file_offset_space_and_scores(tmp_path: Path) -> None:
    (tmp_path / "keys.txt").write_text("猫\n犬\n", encoding="utf-8")
    source = TensorSpec("probs", DataType.FP32, (-1, 4))
    decoder = Decoder(
        "text", source, "ctc_greedy", {"dictionary": "keys.txt", "space": True, "scores": "conf"},
        (), tmp_path,
    )  # fmt: skip
    assert [(s.name, s.datatype) for s in decoder.outputs] == [
        ("text", DataType.BYTES),
        ("conf", DataType.FP32),
    ]
    probs = one_hot([1, 0, 3, 3, 2], 4)
    probs[4, 2] = 0.5  # a less certain last character
    out = decoder({"probs": probs[None]})
    assert out["text"][0, 0].decode("utf-8") == "猫 犬"
    assert out["conf"][0, 0] == pytest.approx((0.9 + 0.9 + 0.5) / 3)
    # Blank last, dictionary from class 0 (offset 0).
    last = ctc_chain({"alphabet": "xyz", "blank": 3, "offset": 0})
    assert last({"probs": one_hot([0, 3, 0, 1, 1, 2], 4)[None]})["text"][0, 0] == b"xxyz"


def test_ctc_on_logits_with_softmax() -> None:
    logits = np.log(one_hot([1, 2, 2], 3)) * 3  # not probabilities
    source = TensorSpec("logits", DataType.FP32, (-1, 3))
    decoder = Decoder(
        "t", source, "ctc_greedy", {"alphabet": "ab", "softmax": True, "scores": "s"}, (), None
    )
    out = decoder({"logits": logits[None]})
    assert out["t"][0, 0] == b"ab" and 0.9 < out["s"][0, 0] <= 1.0
    chained = OutputChain("t", source, ["softmax", {"ctc_greedy": {"alphabet": "ab"}}], (), {})
    assert chained({"logits": logits[None]})["t"][0, 0] == b"ab"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "dictionary file or alphabet"),
        ({"alphabet": "ab"}, "4 classes but blank 0 and 2 characters"),
        ({"alphabet": "abc", "blank": 1}, "blank 1 is also a character"),
        ({"dictionary": "missing.txt"}, "missing"),
        ({"alphabet": "abc", "beam": 5}, "unknown ctc_greedy option"),
        ({"alphabet": "abc", "scores": "s"}, "decode: ctc_greedy form"),
    ],
)
def test_ctc_declaration_errors(tmp_path: Path, options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidModelConfig, match=message):
        ctc_chain(options, model_dir=tmp_path)


# --------------------------------------------------------------------------- NMS
def yolo(*boxes: tuple[float, float, float, float, int, float], classes: int = 3) -> np.ndarray:
    """[boxes, 4 + classes] rows of (cx, cy, w, h, class scores) with one class scored."""
    out = np.zeros((len(boxes), 4 + classes), dtype=np.float32)
    for i, (cx, cy, w, h, cls, score) in enumerate(boxes):
        out[i, :4] = (cx, cy, w, h)
        out[i, 4 + cls] = score
    return out


def nms_chain(options: dict[str, object], dims: tuple[int, ...] = (-1, 7)) -> OutputChain:
    source = TensorSpec("output0", DataType.FP32, dims)
    return OutputChain("detections", source, [{"nms": options}], ("cat", "dog", "eel"), {})


BOXES = yolo(
    (50, 50, 20, 20, 0, 0.9),  # kept
    (52, 50, 20, 20, 0, 0.8),  # same class, IoU 0.82 with the first: suppressed
    (52, 50, 20, 20, 1, 0.7),  # other class, same place: kept
    (150, 150, 10, 10, 0, 0.6),  # far away: kept
    (10, 10, 5, 5, 2, 0.1),  # under the score threshold
)


def test_nms_suppresses_overlaps_of_one_class_and_pads() -> None:
    chain = nms_chain({"max_detections": 5})
    assert chain.outputs[0].dims == (5, 6) and chain.outputs[0].datatype is DataType.FP32
    quiet = BOXES.copy()
    quiet[:, 4:] = np.minimum(quiet[:, 4:], 0.2)  # nothing passes the score threshold
    out = chain({"output0": np.stack([BOXES, quiet])})["detections"]
    assert out.shape == (2, 5, 6)
    assert out[0, :3].tolist() == [
        [40, 40, 60, 60, pytest.approx(0.9), 0],
        [42, 40, 62, 60, pytest.approx(0.7), 1],
        [145, 145, 155, 155, pytest.approx(0.6), 0],
    ]
    assert np.all(out[0, 3:] == -1) and np.all(out[1] == -1)


def test_nms_options() -> None:
    agnostic = nms_chain({"classes": False})({"output0": BOXES[None]})["detections"][0]
    assert agnostic[:, 4][agnostic[:, 4] > 0].tolist() == pytest.approx([0.9, 0.6])
    limited = nms_chain({"max_detections": 1})({"output0": BOXES[None]})["detections"]
    assert limited.shape == (1, 1, 6) and limited[0, 0, 4] == pytest.approx(0.9)
    # YOLOv8 layout [4 + classes, boxes], corners already given.
    corners = BOXES.copy()
    corners[:, 2:4] += corners[:, :2]
    transposed = nms_chain({"transpose": True, "format": "xyxy"}, dims=(7, -1))
    out = transposed({"output0": corners.T[None]})["detections"][0]
    assert out[0, :4].tolist() == [50, 50, 70, 70]
    # YOLOv5 objectness column multiplies the class scores.
    with_obj = np.insert(BOXES, 4, [1.0, 1.0, 0.1, 1.0, 1.0], axis=1)
    v5 = nms_chain({"objectness": True}, dims=(-1, 8))({"output0": with_obj[None]})
    assert v5["detections"][0, :, 4][:3].tolist() == pytest.approx([0.9, 0.6, -1])


def test_nms_labels_as_a_second_output() -> None:
    source = TensorSpec("output0", DataType.FP32, (-1, 7))
    decoder = Decoder(
        "detections", source, "nms", {"max_detections": 4, "labels": "names"}, ("cat", "dog"), None
    )
    assert [(s.name, s.dims) for s in decoder.outputs] == [("detections", (4, 6)), ("names", (4,))]
    out = decoder({"output0": BOXES[None]})
    assert out["names"].tolist() == [[b"cat", b"dog", b"cat", b""]]
    with pytest.raises(InvalidModelConfig, match="labels file"):
        Decoder("d", source, "nms", {"labels": "names"}, (), None)


def test_nms_declaration_errors() -> None:
    with pytest.raises(InvalidModelConfig, match="transpose: true"):
        nms_chain({}, dims=(84, 4))
    with pytest.raises(InvalidModelConfig, match="format must be"):
        nms_chain({"format": "cxcywh"})
    with pytest.raises(InvalidModelConfig, match="must be the last step"):
        OutputChain("d", TensorSpec("o", DataType.FP32, (-1, 7)), [{"nms": {}}, "softmax"], (), {})


def test_decode_entries_in_the_declaration(tmp_path: Path) -> None:
    (tmp_path / "keys.txt").write_text("a\nb\n")
    declaration = {
        "outputs": [
            {"name": "text", "from": "probs", "decode": "ctc_greedy", "dictionary": "keys.txt",
             "scores": "confidence"},
        ]
    }  # fmt: skip
    config = ModelConfig(
        name="ocr",
        max_batch_size=2,
        inputs=(TensorSpec("x", DataType.FP32, (-1, 3)),),
        outputs=(TensorSpec("probs", DataType.FP32, (-1, 3)),),
        parameters={"processing": json.dumps(declaration)},
    )
    processing = build_processing(config, tmp_path, {})
    assert [s.name for s in processing.client_outputs] == ["text", "confidence"]
    answer = processing.postprocess({"probs": one_hot([1, 2], 3)[None]})
    assert answer["text"].tolist() == [[b"ab"]] and answer["confidence"].shape == (1, 1)
    both = {"outputs": [{"name": "t", "from": "probs", "decode": "nms", "steps": []}]}
    with pytest.raises(InvalidModelConfig, match="either steps or decode"):
        build_processing(
            ModelConfig(
                name="m",
                outputs=config.outputs,
                parameters={"processing": json.dumps(both)},
            ),
            tmp_path,
            {},
        )
    unknown = {"outputs": [{"name": "t", "from": "probs", "decode": "beam"}]}
    with pytest.raises(InvalidModelConfig, match="decode must be ctc_greedy or nms"):
        build_processing(
            ModelConfig(
                name="m", outputs=config.outputs, parameters={"processing": json.dumps(unknown)}
            ),
            tmp_path,
            {},
        )


# --------------------------------------------------------------------------- engine
def identity_model(name: str, dims: list[str | int]) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *dims])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", *dims])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def config_text(name: str, dims: str, processing: Mapping[str, Any], labels: str = "") -> str:
    label = f' label_filename: "{labels}"' if labels else ""
    return f"""
name: "{name}"
max_batch_size: 4
dynamic_batching {{ }}
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {dims} ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {dims} ]{label} }} ]
parameters {{ key: "processing" value: {{ string_value: {json.dumps(json.dumps(processing))} }} }}
"""


def test_ctc_and_nms_through_the_engine(tmp_path: Path) -> None:
    from forwardpass.engine import Engine
    from forwardpass.types import InferRequest, Tensor

    ocr = {
        "outputs": [
            {"name": "text", "from": "y", "decode": "ctc_greedy", "dictionary": "keys.txt",
             "scores": "score"},
        ]
    }  # fmt: skip
    write_model(
        tmp_path,
        "ocr",
        config=config_text("ocr", "-1, 4", ocr),
        model=identity_model("ocr", ["t", 4]),
        files={"keys.txt": "h\ni\n!\n"},
    )
    detector = {
        "outputs": [{"name": "boxes", "from": "y", "steps": [{"nms": {"max_detections": 3}}]}]
    }
    write_model(
        tmp_path,
        "det",
        config=config_text("det", "-1, 7", detector),
        model=identity_model("det", ["b", 7]),
    )

    async def body(engine: Engine) -> None:
        assert metadata_document(engine.metadata("ocr"))["outputs"] == [
            {"name": "text", "datatype": "BYTES", "shape": [-1, 1]},
            {"name": "score", "datatype": "FP32", "shape": [-1, 1]},
        ]
        probs = np.stack([one_hot([1, 1, 0, 2, 3], 4), one_hot([2, 0, 0, 0, 0], 4)])
        response = await engine.infer(
            InferRequest(model_name="ocr", inputs=[Tensor("x", DataType.FP32, probs)])
        )
        answers = {t.name: t.data for t in response.outputs}
        assert answers["text"].tolist() == [[b"hi!"], [b"i"]]
        assert answers["score"][:, 0].tolist() == pytest.approx([0.9, 0.9])
        response = await engine.infer(
            InferRequest(model_name="det", inputs=[Tensor("x", DataType.FP32, BOXES[None])])
        )
        (boxes,) = response.outputs
        assert boxes.name == "boxes" and boxes.data.shape == (1, 3, 6)
        assert boxes.data[0, :, 5].tolist() == [0, 1, 0]

    run_with_engine(tmp_path, body)
