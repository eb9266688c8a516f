"""The profiler on an image model: picture statistics, geometry through the reference
reader, and the penultimate-layer embedding from a second ONNX session."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from forwardpass.errors import InvalidModelConfig
from forwardpass.monitor.profile import EmbeddingExtractor, penultimate_tensor
from forwardpass.monitor.reference import build_reference, load_reference, profile_data

W = np.arange(12, dtype=np.float32).reshape(3, 4) / 10


def _image_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["features"]),
            helper.make_node("Gemm", ["features", "W"], ["logits"]),
        ],
        "tiny-image",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(W, "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _write(root: Path, embedding: str | None = None) -> Path:
    folder = root / "tiny"
    (folder / "1").mkdir(parents=True)
    onnx.save(_image_model(), str(folder / "1" / "model.onnx"))
    image = {"name": "image", "kind": "image", "to": "input", "resize": {"size": [8, 8]}}
    drift = {"drift": {"window": 10} | ({"embedding": embedding} if embedding else {})}
    params = ""
    for key, value in (("processing", {"inputs": [image]}), ("monitoring", drift)):
        text = json.dumps(json.dumps(value))
        params += f"parameters {{ key: {json.dumps(key)} value: {{ string_value: {text} }} }}\n"
    (folder / "config.pbtxt").write_text(
        'name: "tiny"\nbackend: "onnxruntime"\nmax_batch_size: 4\n'
        'input { name: "input" data_type: TYPE_FP32 dims: [ 3, 8, 8 ] }\n'
        'output { name: "logits" data_type: TYPE_FP32 dims: [ 4 ] }\n' + params
    )
    return folder


def _photos(folder: Path, sizes: list[tuple[int, int]], level: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(level)
    for i, (w, h) in enumerate(sizes):
        pixels = np.clip(rng.normal(level, 20, size=(h, w, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        (folder / f"{i:03d}.png").write_bytes(buffer.getvalue())
    return folder


def test_penultimate_tensor_and_extractor(tmp_path: Path) -> None:
    model = _image_model()
    assert penultimate_tensor(model) == "features"
    onnx.save(model, str(tmp_path / "m.onnx"))
    extractor = EmbeddingExtractor(tmp_path / "m.onnx", ["input"])
    x = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)
    assert np.allclose(extractor({"input": x}), x.mean(axis=(2, 3)), atol=1e-6)
    # A model whose output is not a dense layer's: no penultimate layer to find.
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    with pytest.raises(InvalidModelConfig, match="does not come from a Gemm/MatMul"):
        penultimate_tensor(helper.make_model(graph))


def test_image_reference_has_picture_statistics_and_embedding(tmp_path: Path) -> None:
    root = tmp_path / "models"
    folder = _write(root)
    sizes = [(20, 10), (16, 16), (30, 12), (9, 9)]
    meta = build_reference(root, "tiny", _photos(tmp_path / "ref", sizes, level=100))
    assert meta["embedding"] == {"source": "penultimate:features", "width": 3}
    assert set(meta["features"]) == {
        "image.brightness", "image.contrast", "image.width", "image.height",
        "logits.class", "logits.score",
    }  # fmt: skip
    reference = load_reference(folder, _config(root))
    assert reference.features["image.width"].tolist() == [20, 16, 30, 9]
    assert reference.features["image.height"].tolist() == [10, 16, 12, 9]
    assert reference.embedding is not None and reference.embedding.shape == (4, 3)
    # Brightness is the processed tensor's mean: pixels / 255 around 100 / 255.
    assert np.allclose(reference.features["image.brightness"], 100 / 255, atol=0.03)
    dark, *_ = asyncio.run(profile_data(root, "tiny", _photos(tmp_path / "dark", sizes, level=30)))
    assert np.all(dark.features["image.brightness"] < 0.2)
    assert dark.embedding is not None and np.all(dark.embedding < reference.embedding)


def test_named_embedding_output_must_exist(tmp_path: Path) -> None:
    from forwardpass.monitor.reference import profiler_for

    root = tmp_path / "models"
    folder = _write(root, embedding="pooled_out")
    with pytest.raises(InvalidModelConfig, match="names output 'pooled_out'"):
        profiler_for(_config(root), folder, {}, 1, "pooled_out")
    profiler = profiler_for(_config(root), folder, {}, 1, "logits")
    assert profiler.embedding_output == "logits"
    assert "logits.class" not in profiler.kinds  # the embedding is tested by MMD, not per class


def _config(root: Path):  # type: ignore[no-untyped-def]
    from forwardpass.repository import ModelRepository

    return ModelRepository(root).read("tiny").config


def test_text_reference_has_token_statistics(tmp_path: Path) -> None:
    from model_builders import TEXT_WORDS, write_text_model

    root = tmp_path / "models"
    write_text_model(root)
    sentences = tmp_path / "sentences.txt"
    words = list(TEXT_WORDS)
    sentences.write_text(
        "\n".join(
            " ".join(words[(i + j) % len(words)] for j in range(2 + i % 4)) for i in range(12)
        )
    )
    meta = build_reference(root, "words", sentences)
    # The model ends in a ReduceMean, not a dense layer: "auto" finds no embedding.
    assert meta["embedding"] is None
    assert set(meta["features"]) == {"text.tokens", "text.distinct", "text.unknown", "score"}
    with np.load(root / "words" / "monitor" / "reference.npz") as stored:
        assert stored["feature/text.tokens"].tolist() == [2 + i % 4 for i in range(12)]
        assert np.all(stored["feature/text.unknown"] == 0)
    odd = tmp_path / "odd.txt"
    odd.write_text(f"{words[0]} zzz qqq\n{words[1]} {words[1]}\n")
    profile, *_ = asyncio.run(profile_data(root, "words", odd))
    assert profile.features["text.unknown"].tolist() == pytest.approx([2 / 3, 0.0])
    # Both unknown words are one token id ([UNK]): 2 distinct of 3.
    assert profile.features["text.distinct"].tolist() == pytest.approx([2 / 3, 0.5])
