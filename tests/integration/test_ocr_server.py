"""The PP-OCRv4 ensemble behind a real server, driven by tritonclient over HTTP."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip(
    "rapidocr_onnxruntime", reason="the PP-OCR models come from rapidocr-onnxruntime"
)
pytest.importorskip("cv2", reason="the OCR functions need opencv-python")
pytest.importorskip("pyclipper", reason="the OCR functions need pyclipper")

import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from forwardpass.zoo import ppocr

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def text_png(lines: tuple[str, ...]) -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(DEJAVU), 40) if DEJAVU.is_file() else ImageFont.load_default(40)
    img = Image.new("RGB", (640, 200), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((30, 30 + 80 * i), line, font=font, fill="black")
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def infer(client: httpclient.InferenceServerClient, blob: bytes) -> Any:
    image = httpclient.InferInput("image", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[blob]], dtype=object), binary_data=True)
    outputs = [
        httpclient.InferRequestedOutput(name, binary_data=True)
        for name in ("texts", "scores", "boxes", "box_scores")
    ]
    return client.infer("ocr", [image], outputs=outputs)


def test_ocr_over_http(start_server: Any, tmp_path: Path) -> None:
    ppocr.add(tmp_path)
    server = start_server(tmp_path, "--log-level", "WARNING")
    client = httpclient.InferenceServerClient(server.address)
    try:
        assert client.is_model_ready("ocr")
        metadata = client.get_model_metadata("ocr")
        assert [i["shape"] for i in metadata["inputs"]] == [[1, 1]]

        result = infer(client, text_png(("forwardpass 2026", "HELLO WORLD")))
        texts = [t.decode() for t in result.as_numpy("texts").reshape(-1)]
        assert texts == ["forwardpass 2026", "HELLO WORLD"]
        assert result.as_numpy("boxes").shape == (2, 4, 2)

        blank = infer(client, text_png(()))
        assert blank.as_numpy("texts").size == 0
        assert blank.as_numpy("boxes").shape == (0, 4, 2)

        with pytest.raises(InferenceServerException) as caught:
            infer(client, b"GIF89a but not really")
        assert caught.value.status() == "400"
        assert "cannot decode image" in caught.value.message()
    finally:
        client.close()
