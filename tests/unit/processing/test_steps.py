"""Processing steps on their own: images, text, tabular columns and output chains."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidArgument, InvalidModelConfig
from forwardpass.model_config import ModelConfig, TensorSpec
from forwardpass.processing.image import ImageInput
from forwardpass.processing.outputs import OutputChain
from forwardpass.processing.spec import build_processing
from forwardpass.processing.tabular import TabularInput


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def blobs(*items: bytes) -> np.ndarray:
    array = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        array[i, 0] = item
    return array


IMG_TARGET = TensorSpec("input", DataType.FP32, (3, 4, 6))


def test_image_resize_crop_normalise_chw() -> None:
    # A 20x10 (w x h) picture, left half red, right half blue.
    pixels = np.zeros((10, 20, 3), dtype=np.uint8)
    pixels[:, :10, 0] = 255
    pixels[:, 10:, 2] = 255
    proc = ImageInput(
        "image",
        IMG_TARGET,
        True,
        {"resize": {"size": [4, 6]}, "resample": "nearest", "scale": 1, "mean": 127, "std": 128},
    )
    out = proc(
        {"image": blobs(encode(Image.fromarray(pixels)), encode(Image.fromarray(pixels), "JPEG"))}
    )
    x = out["input"]
    assert x.shape == (2, 3, 4, 6) and x.dtype == np.float32
    assert x[0, 0, 0, 0] == pytest.approx((255 - 127) / 128)  # red channel, left
    assert x[0, 2, 0, 5] == pytest.approx((255 - 127) / 128)  # blue channel, right
    assert x[0, 2, 0, 0] == pytest.approx(-127 / 128)
    assert np.allclose(x[0], x[1], atol=0.1)  # the JPEG decodes to nearly the same


def test_image_shorter_side_then_centre_crop() -> None:
    target = TensorSpec("input", DataType.FP32, (8, 8, 3))
    proc = ImageInput("img", target, True, {"resize": {"shorter": 8}, "crop": [8, 8]})
    out = proc({"img": blobs(encode(Image.new("RGB", (32, 16), (255, 255, 255))))})
    assert out["input"].shape == (1, 8, 8, 3)
    assert np.allclose(out["input"], 1.0)


def test_image_letterbox_pads_with_fill() -> None:
    target = TensorSpec("input", DataType.FP32, (3, 8, 8))
    proc = ImageInput("img", target, True, {"resize": {"letterbox": [8, 8], "fill": 0}, "scale": 1})
    out = proc({"img": blobs(encode(Image.new("RGB", (16, 8), (200, 200, 200))))})["input"][0]
    assert out[0, 0, 0] == 0 and out[0, 4, 4] == 200


def test_image_errors_are_precise() -> None:
    proc = ImageInput("image", IMG_TARGET, True, {"resize": {"size": [4, 6]}})
    with pytest.raises(InvalidArgument, match=r"'image'\[1\]: cannot decode image"):
        proc({"image": blobs(encode(Image.new("RGB", (6, 4))), b"not an image")})
    with pytest.raises(InvalidArgument, match="empty image"):
        proc({"image": blobs(b"")})
    with pytest.raises(InvalidArgument, match="ends at"):
        ImageInput("image", IMG_TARGET, True, {"crop": [5, 5]})
    with pytest.raises(InvalidArgument, match="unknown option"):
        ImageInput("image", IMG_TARGET, True, {"rotate": 90})


def word_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "hello": 2, "world": 3, "cats": 4, "purr": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    file = path / "tokenizer.json"
    tok.save(str(file))
    return file


def text_config() -> ModelConfig:
    return ModelConfig(
        name="t",
        max_batch_size=8,
        inputs=(
            TensorSpec("input_ids", DataType.INT64, (-1,)),
            TensorSpec("attention_mask", DataType.INT64, (-1,)),
        ),
        outputs=(TensorSpec("out", DataType.FP32, (4,)),),
    )


def test_text_tokenises_pads_and_masks(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    from forwardpass.processing.text import TextInput

    word_tokenizer(tmp_path)
    proc = TextInput("text", text_config(), tmp_path, {"pad_to_multiple_of": 4})
    assert proc.targets == ("input_ids", "attention_mask")
    out = proc({"text": blobs(b"hello world", b"cats purr hello zebra world")})
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (2, 8)
    assert ids[0].tolist()[:3] == [2, 3, 0] and ids[1].tolist()[:5] == [4, 5, 2, 1, 3]
    assert mask.sum(axis=1).tolist() == [2, 5]


def test_text_bad_input(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    from forwardpass.processing.text import TextInput

    word_tokenizer(tmp_path)
    proc = TextInput("text", text_config(), tmp_path, {"max_length": 3, "truncation": False})
    with pytest.raises(InvalidArgument, match="empty"):
        proc({"text": blobs(b"   ")})
    with pytest.raises(InvalidArgument, match="not UTF-8"):
        proc({"text": blobs(b"\xff\xfe")})
    with pytest.raises(InvalidArgument, match="over max_length 3"):
        proc({"text": blobs(b"hello world cats purr")})
    small = TextInput("text", text_config(), tmp_path, {"max_bytes": 4})
    with pytest.raises(InvalidArgument, match="over the 4-byte limit"):
        small({"text": blobs(b"hello")})
    with pytest.raises(InvalidModelConfig, match="tokenizer file"):
        TextInput("text", text_config(), tmp_path / "nowhere", {})


def test_tabular_columns_scale_and_reject_nan(tmp_path: Path) -> None:
    config = ModelConfig(
        name="tab",
        max_batch_size=4,
        inputs=(TensorSpec("features", DataType.FP32, (2,)),),
        outputs=(TensorSpec("p", DataType.FP32, (1,)),),
    )
    (tmp_path / "scaler.json").write_text(json.dumps({"mean": [1, 2], "scale": [2, 4]}))
    proc = TabularInput(
        config, tmp_path, {"to": "features", "columns": ["a", "b"], "scaler": "scaler.json"}
    )
    assert [s.name for s in proc.inputs] == ["a", "b"]
    out = proc(
        {"a": np.array([[3.0], [1.0]], np.float32), "b": np.array([[6.0], [2.0]], np.float32)}
    )
    assert out["features"].tolist() == [[1.0, 1.0], [0.0, 0.0]]
    with pytest.raises(InvalidArgument, match=r"\['b'\]"):
        proc({"a": np.array([[1.0]], np.float32), "b": np.array([[np.nan]], np.float32)})
    with pytest.raises(InvalidModelConfig, match="3 columns"):
        TabularInput(config, tmp_path, {"to": "features", "columns": ["a", "b", "c"]})


def chain(
    steps: list[object],
    dims: tuple[int, ...] = (3,),
    labels: tuple[str, ...] = ("cat", "dog", "eel"),
) -> OutputChain:
    return OutputChain(
        "answer",
        TensorSpec("logits", DataType.FP32, dims),
        steps,
        labels,
        {"mask": TensorSpec("mask", DataType.INT64, (-1,))},
    )


def test_output_chains() -> None:
    logits = np.array([[1.0, 3.0, 2.0], [5.0, 0.0, 0.0]], np.float32)
    probs = chain(["softmax"])({"logits": logits})["answer"]
    assert np.allclose(probs.sum(axis=1), 1) and probs[0].argmax() == 1
    top = chain(["softmax", {"topk": 2}])
    assert top.outputs[0].datatype is DataType.BYTES and top.outputs[0].dims == (2,)
    ranked = top({"logits": logits})["answer"]
    assert ranked.shape == (2, 2) and ranked[0, 0].decode().endswith(":1:dog")
    assert chain(["argmax"])({"logits": logits})["answer"].tolist() == [[1], [0]]
    assert chain(["label"])({"logits": logits})["answer"].tolist() == [[b"dog"], [b"cat"]]
    assert chain(["sigmoid", {"threshold": 0.9}])({"logits": logits})["answer"].tolist() == [
        [False, True, False],
        [True, False, False],
    ]
    unit = chain(["l2_normalize"])({"logits": logits})["answer"]
    assert np.allclose(np.linalg.norm(unit, axis=1), 1)


def test_mean_pool_uses_the_mask() -> None:
    tokens = np.array([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]], np.float32)
    mask = np.array([[1, 1, 0]])
    pooled = chain([{"mean_pool": "mask"}, "l2_normalize"], dims=(-1, 2))
    assert pooled.sources == ("logits", "mask")
    out = pooled({"logits": tokens, "mask": mask})["answer"]
    assert np.allclose(out, [[2**-0.5, 2**-0.5]])


def test_output_chain_config_errors() -> None:
    with pytest.raises(InvalidModelConfig, match="unknown step"):
        chain(["softermax"])
    with pytest.raises(InvalidModelConfig, match="cannot follow"):
        chain(["label", "softmax"])
    with pytest.raises(InvalidModelConfig, match="labels file"):
        chain(["label"], labels=())


def test_build_processing_from_parameters(tmp_path: Path) -> None:
    declaration = {
        "inputs": [{"name": "image", "kind": "image", "to": "input", "resize": {"size": [4, 6]}}],
        "outputs": [{"name": "top", "from": "logits", "steps": ["softmax", {"topk": 2}]}],
    }
    config = ModelConfig(
        name="m",
        max_batch_size=4,
        inputs=(IMG_TARGET,),
        outputs=(TensorSpec("logits", DataType.FP32, (3,)),),
        parameters={"processing": json.dumps(declaration)},
    )
    processing = build_processing(config, tmp_path, {"logits": ("a", "b", "c")})
    assert [s.name for s in processing.client_inputs] == ["image"]
    assert [(s.name, s.datatype) for s in processing.client_outputs] == [("top", DataType.BYTES)]
    model_in = processing.preprocess({"image": blobs(encode(Image.new("RGB", (6, 4))))})
    assert model_in["input"].shape == (1, 3, 4, 6)
    answer = processing.postprocess({"logits": np.array([[0.0, 2.0, 1.0]], np.float32)})
    assert list(answer) == ["top"] and answer["top"][0, 0].decode().endswith(":1:b")
    bad = ModelConfig(
        name="m",
        inputs=(IMG_TARGET,),
        parameters={"processing": "inputs: [{name: v, kind: video}]"},
    )
    with pytest.raises(InvalidModelConfig, match="kind must be"):
        build_processing(bad, tmp_path, {})
    none = ModelConfig(name="m", inputs=(IMG_TARGET,))
    assert not build_processing(none, tmp_path, {}).active


def test_opencv_decoder_gives_nearly_the_same_pixels_as_pillow() -> None:
    pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    # A smooth picture (a gradient plus mild noise), as photographs are.
    y, x = np.mgrid[0:90, 0:120]
    pixels = np.stack([x * 2, y * 2, (x + y)], axis=-1) + rng.integers(0, 8, (90, 120, 3))
    blob = encode(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), "JPEG")
    target = TensorSpec("input", DataType.FP32, (3, 32, 32))
    options = {"resize": {"shorter": 40}, "crop": [32, 32], "resample": "bicubic"}
    pil = ImageInput("image", target, True, options)({"image": blobs(blob)})["input"]
    cv = ImageInput("image", target, True, {**options, "decoder": "opencv"})
    out = cv({"image": blobs(blob)})["input"]
    assert out.shape == pil.shape == (1, 3, 32, 32)
    assert np.abs(out - pil).mean() * 255 < 2.0  # under two grey levels on average
    with pytest.raises(InvalidArgument, match=r"'image'\[0\]: cannot decode image"):
        cv({"image": blobs(b"\xff\xd8 not really a jpeg")})


def test_opencv_decoder_without_opencv_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(InvalidModelConfig, match="pip install opencv-python-headless"):
        ImageInput("image", IMG_TARGET, True, {"decoder": "opencv"})


def test_reduced_scale_jpeg_decoding_keeps_the_picture() -> None:
    # A large smooth picture: JPEG takes the reduced-scale decode, PNG the full one.
    y, x = np.mgrid[0:768, 0:1024]
    pixels = np.stack([x / 4, y / 3, (x + y) / 7], axis=-1).astype(np.uint8)
    target = TensorSpec("input", DataType.FP32, (3, 64, 64))
    proc = ImageInput("image", target, True, {"resize": {"shorter": 72}, "crop": [64, 64]})
    assert proc._decode_ratio(1024, 768) == pytest.approx(72 / 768)
    from_jpeg = proc({"image": blobs(encode(Image.fromarray(pixels), "JPEG"))})["input"]
    from_png = proc({"image": blobs(encode(Image.fromarray(pixels), "PNG"))})["input"]
    assert np.abs(from_jpeg - from_png).mean() * 255 < 2.0


@pytest.mark.parametrize("decoder", ["pil", "opencv"])
@pytest.mark.parametrize(
    ("size", "options"),
    [
        ((400, 300), {"resize": {"shorter": 40}, "crop": [32, 32]}),
        ((300, 400), {"resize": {"letterbox": [32, 32], "fill": 0}}),
        ((640, 480), {"resize": {"size": [24, 32]}, "crop": [24, 32]}),
        ((90, 70), {"crop": [32, 32]}),
    ],
)
def test_geometry_maps_picture_pixels_into_the_model_input(
    decoder: str, size: tuple[int, int], options: dict[str, object]
) -> None:
    if decoder == "opencv":
        pytest.importorskip("cv2")
    from forwardpass.processing.image import geometry_key

    w, h = size
    pixels = np.zeros((h, w), dtype=np.uint8)
    spot = (int(w * 0.55), int(h * 0.45))  # a bright 9x9 square near the centre
    pixels[spot[1] - 4 : spot[1] + 5, spot[0] - 4 : spot[0] + 5] = 255
    target = TensorSpec("input", DataType.FP32, (1, 32, 32))
    out_h = 24 if "size" in options.get("resize", {}) else 32  # type: ignore[operator]
    if out_h == 24:
        target = TensorSpec("input", DataType.FP32, (1, 24, 32))
    proc = ImageInput(
        "image", target, True, {**options, "decoder": decoder, "resample": "bilinear"}
    )
    result = proc({"image": blobs(encode(Image.fromarray(pixels), "JPEG"))})
    sx, sy, ox, oy, width, height = result[geometry_key("image")][0]
    assert (width, height) == (w, h)
    plane = result["input"][0, 0]
    weights = np.where(plane > plane.max() / 2, plane, 0)  # the square, as the model sees it
    ys, xs = np.mgrid[0 : plane.shape[0], 0 : plane.shape[1]]
    x, y = (xs * weights).sum() / weights.sum(), (ys * weights).sum() / weights.sum()
    assert abs(spot[0] * sx + ox - x) <= 1.0 and abs(spot[1] * sy + oy - y) <= 1.0
