"""The MTCNN face detector (``forwardpass.zoo.mtcnn``) served in-process, held against
facenet-pytorch's own MTCNN on scikit-image's photographs."""

from __future__ import annotations

import importlib.util
import io
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from model_builders import run_with_engine
from zoo_helpers import Built

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidArgument, Unsupported
from forwardpass.repository import ModelRepository
from forwardpass.types import InferRequest, Tensor
from forwardpass.zoo import mtcnn

pytest.importorskip("torch", reason="the MTCNN build exports torch modules")
if importlib.util.find_spec("facenet_pytorch") is None:  # found, not imported (see below)
    pytest.skip("the MTCNN weights come from facenet-pytorch", allow_module_level=True)
data = pytest.importorskip("skimage.data", reason="the test photos come from scikit-image")

REFERENCE = Path(__file__).resolve().parents[3] / "bench" / "facenet_reference.py"


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def request(blob: bytes) -> InferRequest:
    return InferRequest(
        "mtcnn", [Tensor("image", DataType.BYTES, np.array([[blob]], dtype=object))]
    )


def resized(pixels: np.ndarray, factor: float) -> np.ndarray:
    from PIL import Image

    h, w = pixels.shape[:2]
    size = (round(w * factor), round(h * factor))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.BILINEAR))


def photos() -> dict[str, np.ndarray]:
    """scikit-image's photographs, and a crop, a mirror image, a rescale and a quarter turn
    of the astronaut (MTCNN finds no face lying on its side)."""
    astronaut = data.astronaut()
    camera = np.repeat(data.camera()[:, :, None], 3, axis=2)  # a man with a camera, grey
    return {
        "astronaut": astronaut,
        "coffee": data.coffee(),
        "chelsea": data.chelsea(),
        "camera": camera,
        "astronaut_mirrored": astronaut[:, ::-1].copy(),
        "astronaut_head": astronaut[20:320, 100:400].copy(),
        "astronaut_half": resized(astronaut, 0.5),
        "astronaut_rotated": np.rot90(astronaut).copy(),
    }


@pytest.fixture(scope="module")
def reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("facenet_reference", REFERENCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def repository(zoo_build: Callable[[str], Built]) -> Path:
    return zoo_build("mtcnn")[0]


Detection = tuple[np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def theirs(reference: ModuleType) -> dict[str, Detection]:
    """facenet-pytorch's (boxes, scores, landmarks) on every photo, computed once."""
    detector = reference.load_mtcnn()
    return {name: reference.detect(detector, pixels) for name, pixels in photos().items()}


@pytest.fixture(scope="module")
def ours(repository: Path) -> dict[str, dict[str, np.ndarray]]:
    """The served ensemble's outputs on every photo, one engine for all of them."""
    return detect_all(repository, {name: png(p) for name, p in photos().items()})


def detect_all(repository: Path, pictures: dict[str, bytes]) -> dict[str, dict[str, np.ndarray]]:
    async def body(engine: Any) -> dict[str, dict[str, np.ndarray]]:
        found = {}
        for name, blob in pictures.items():
            response = await engine.infer(request(blob))
            found[name] = {t.name: t.data for t in response.outputs}
        return found

    result: dict[str, dict[str, np.ndarray]] = run_with_engine(repository, body)
    return result


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` with every box in ``b``."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    result: np.ndarray = inter / (area_a[:, None] + area_b[None, :] - inter)
    return result


def test_the_recipe_writes_eight_models_that_read_back(repository: Path) -> None:
    models = ModelRepository(repository)
    steps = mtcnn.step_names("mtcnn")
    assert sorted(models.list_models()) == sorted([*steps.values(), "mtcnn"])
    ensemble = models.read("mtcnn").config
    assert ensemble.is_ensemble
    assert [s.model_name for s in ensemble.ensemble] == list(steps.values())
    assert models.read("mtcnn_propose").config.parameters["threshold"] == "0.6"
    assert models.read("mtcnn_faces").config.parameters["threshold"] == "0.7"


def test_p_net_on_the_canvas_is_p_net_on_each_level(repository: Path) -> None:
    """The mosaic trick: the canvas cells of each level are that level's own P-Net output."""
    import onnxruntime as ort

    from forwardpass.processing.faces import level_cells
    from forwardpass.processing.pyramid import image_pyramid

    net = ort.InferenceSession(
        str(repository / "mtcnn_pnet" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    picture = np.array([[png(data.astronaut())]], dtype=object)
    out = image_pyramid({"image": picture}, {"mask": "true"})
    canvas, levels = out["canvas"], out["levels"]
    reg, prob = net.run(None, {"x": canvas})
    for (x, y, w, h, _), (row, col, rows, cols) in zip(
        levels.tolist(), level_cells(levels, 2, 12), strict=True
    ):
        alone = canvas[:, :, int(y) : int(y + h), int(x) : int(x + w)]
        want_reg, want_prob = net.run(None, {"x": alone})
        assert want_prob.shape[2:] == (rows, cols)
        # Every cell, the edges included: there a ceil-mode pooling window of the level
        # alone is partial, and the mask keeps the canvas's from reaching into the gap.
        got = prob[:, :, row : row + rows, col : col + cols]
        np.testing.assert_allclose(got, want_prob, atol=1e-5)
        np.testing.assert_allclose(
            reg[:, :, row : row + rows, col : col + cols], want_reg, atol=1e-5
        )
    odd = [(int(w) % 2, int(h) % 2) for _, _, w, h, _ in levels.tolist()]
    assert (1, 1) in odd or (1, 0) in odd or (0, 1) in odd  # some level has partial windows


def test_finds_the_astronauts_face_where_facenet_pytorch_does(
    ours: dict[str, dict[str, np.ndarray]], theirs: dict[str, Detection]
) -> None:
    found = ours["astronaut"]
    want_boxes, want_scores, want_points = theirs["astronaut"]
    assert found["boxes"].shape == (1, 4) == want_boxes.shape
    np.testing.assert_allclose(found["boxes"], want_boxes, atol=2)
    np.testing.assert_allclose(found["scores"], want_scores, atol=1e-3)
    np.testing.assert_allclose(found["landmarks"], want_points, atol=2)
    x1, y1, x2, y2 = found["boxes"][0]
    assert 170 < x1 < 190 and 50 < y1 < 75 and 255 < x2 < 280 and 160 < y2 < 185
    eyes = found["landmarks"][0, :2]
    assert np.all((eyes[:, 0] > x1) & (eyes[:, 0] < x2) & (eyes[:, 1] > y1) & (eyes[:, 1] < y2))


def test_agrees_with_facenet_pytorch_on_more_photos(
    ours: dict[str, dict[str, np.ndarray]], theirs: dict[str, Detection]
) -> None:
    found = ours
    report = []
    for name in photos():
        want, _, _ = theirs[name]
        got = found[name]["boxes"]
        best = iou(got, want).max(axis=1) if len(got) and len(want) else np.zeros(len(got))
        report.append(f"{name}: {len(got)} vs {len(want)} faces, IoU {np.round(best, 3).tolist()}")
        assert len(got) == len(want), report[-1]
        assert np.all(best >= 0.9), report[-1]
    print("\n" + "\n".join(report))
    assert len(found["astronaut"]["boxes"]) == 1
    assert found["coffee"]["boxes"].shape == (0, 4)


def test_no_face_bad_pictures_and_tiny_pictures(repository: Path) -> None:
    async def body(engine: Any) -> None:
        coffee = await engine.infer(request(png(data.coffee())))
        shapes = {t.name: t.data.shape for t in coffee.outputs}
        assert shapes == {"boxes": (0, 4), "scores": (0,), "landmarks": (0, 5, 2)}
        tiny = await engine.infer(request(png(np.zeros((10, 30, 3), np.uint8))))
        assert {t.name: t.data.shape for t in tiny.outputs}["boxes"] == (0, 4)
        with pytest.raises(InvalidArgument, match=r"mtcnn_pyramid.*cannot decode image"):
            await engine.infer(request(b"this is not a picture"))

    run_with_engine(repository, body)


def test_min_face_size_and_thresholds_are_options(tmp_path: Path) -> None:
    written = mtcnn.add(tmp_path, "big", min_size=200)
    assert [p.name for p in written][-1] == "big"
    assert ModelRepository(tmp_path).read("big_pyramid").config.parameters["min_size"] == "200"
    half = png(resized(data.astronaut(), 0.5))  # a face about 45 pixels tall

    async def body(engine: Any) -> None:
        response = await engine.infer(
            InferRequest("big", [Tensor("image", DataType.BYTES, np.array([[half]], dtype=object))])
        )
        assert {t.name: t.data.shape for t in response.outputs}["boxes"] == (0, 4)

    run_with_engine(tmp_path, body)
    with pytest.raises(InvalidArgument, match="already exist"):
        mtcnn.add(tmp_path, "big")
    with pytest.raises(InvalidArgument, match="thresholds must be three numbers"):
        mtcnn.build(tmp_path / "x", thresholds=(0.6, 0.7))
    with pytest.raises(InvalidArgument, match="min_size must be at least 12"):
        mtcnn.build(tmp_path / "x", min_size=5)


def test_missing_weights_name_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        Unsupported, match=re.escape("pip install --no-deps facenet-pytorch==2.6.0")
    ):
        mtcnn.weights_folder()
