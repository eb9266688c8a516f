"""The PP-OCRv4 ensemble (``forwardpass.zoo.ppocr``) served in-process: text lines read back.

Text is rendered with Pillow in DejaVu Sans (``/usr/share/fonts/truetype/dejavu``) when it is
installed, else in the scalable font Pillow >= 10.1 ships (``ImageFont.load_default(size)``).
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "rapidocr_onnxruntime", reason="the PP-OCR models come from rapidocr-onnxruntime"
)
pytest.importorskip("cv2", reason="the OCR functions need opencv-python")
pytest.importorskip("pyclipper", reason="the OCR functions need pyclipper")

from model_builders import run_with_engine

from forwardpass.datatypes import DataType
from forwardpass.engine import Engine
from forwardpass.errors import InvalidArgument
from forwardpass.repository import ModelRepository
from forwardpass.types import InferRequest, Tensor
from forwardpass.zoo import ppocr

LINES = ("forwardpass 2026", "HELLO WORLD")
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def text_png(lines: tuple[str, ...] = LINES, size: tuple[int, int] = (640, 200)) -> bytes:
    """Black text, one line every 80 pixels, on a white picture, as PNG bytes."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(DEJAVU), 40) if DEJAVU.is_file() else ImageFont.load_default(40)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((30, 30 + 80 * i), line, font=font, fill="black")
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def request(blob: bytes) -> InferRequest:
    return InferRequest("ocr", [Tensor("image", DataType.BYTES, np.array([[blob]], dtype=object))])


@pytest.fixture(scope="module")
def ocr_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ocr")
    written = ppocr.add(root)
    assert [p.name for p in written] == [
        "ocr_det",
        "ocr_crop",
        "ocr_cls",
        "ocr_orient",
        "ocr_rec",
        "ocr",
    ]
    return root


def test_the_recipe_writes_six_models_that_read_back(ocr_repository: Path) -> None:
    repository = ModelRepository(ocr_repository)
    assert sorted(repository.list_models()) == sorted(
        ["ocr", "ocr_cls", "ocr_crop", "ocr_det", "ocr_orient", "ocr_rec"]
    )
    ensemble = repository.read("ocr").config
    assert ensemble.is_ensemble and ensemble.max_batch_size == 0
    assert [s.model_name for s in ensemble.ensemble] == [
        "ocr_det",
        "ocr_crop",
        "ocr_cls",
        "ocr_orient",
        "ocr_rec",
    ]
    keys = (ocr_repository / "ocr_rec" / ppocr.DICTIONARY_FILE).read_text(encoding="utf-8")
    assert len(keys.splitlines()) == 6623
    with pytest.raises(InvalidArgument, match="already exist"):
        ppocr.add(ocr_repository)


def test_the_ensemble_reads_rendered_text_blank_pictures_and_rejects_garbage(
    ocr_repository: Path,
) -> None:
    async def body(engine: Engine) -> None:
        response = await engine.infer(request(text_png()))
        got = {t.name: t.data for t in response.outputs}
        assert [t.decode() for t in got["texts"].reshape(-1)] == list(LINES)
        assert got["scores"].shape == (2, 1) and np.all(got["scores"] > 0.9)
        assert got["boxes"].shape == (2, 4, 2) and got["box_scores"].shape == (2,)
        first, second = got["boxes"]
        assert first[:, 1].max() < second[:, 1].min()  # the first line is above the second
        assert 15 < first[0, 0] < 45 and 20 < first[0, 1] < 50  # drawn at (30, 30)

        blank = await engine.infer(request(text_png(())))
        shapes = {t.name: t.data.shape for t in blank.outputs}
        assert shapes == {"texts": (0, 1), "scores": (0, 1), "boxes": (0, 4, 2), "box_scores": (0,)}

        with pytest.raises(InvalidArgument, match=r"ocr_det.*cannot decode image"):
            await engine.infer(request(b"this is not a picture"))

        began = time.perf_counter()
        for _ in range(3):
            await engine.infer(request(text_png()))
        seconds = (time.perf_counter() - began) / 3
        print(f"\nOCR 640x200 two lines: {seconds * 1e3:.0f} ms per picture")

    run_with_engine(ocr_repository, body)


def test_zoo_add_writes_the_ensemble_and_its_steps(tmp_path: Path) -> None:
    pytest.importorskip("rapidocr_onnxruntime")
    from forwardpass.zoo import add

    added = add("ppocr", tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == ["ppocr", "ppocr_cls", "ppocr_crop", "ppocr_det", "ppocr_orient", "ppocr_rec"]
    assert added.folder == tmp_path / "ppocr"
    with pytest.raises(InvalidArgument, match="already exist"):
        add("ppocr", tmp_path)
