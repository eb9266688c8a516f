"""The MTCNN face detector behind a real ``forwardpass serve``: tritonclient over HTTP and
gRPC send a photograph and get the same face back; a picture without a face is zero rows,
a file that is no picture a 400 / INVALID_ARGUMENT."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

OUTPUTS = ("boxes", "scores", "landmarks")


def jpeg(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(start_module_server: Any, zoo_build: Callable[[str], Any]) -> Any:
    repository, _ = zoo_build("mtcnn")
    return start_module_server(repository, "--log-level", "WARNING")


def over_http(server: Any, blob: bytes) -> dict[str, np.ndarray]:
    client = httpclient.InferenceServerClient(server.address)
    try:
        image = httpclient.InferInput("image", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[blob]], dtype=object), binary_data=True)
        wanted = [httpclient.InferRequestedOutput(n, binary_data=True) for n in OUTPUTS]
        result = client.infer("mtcnn", [image], outputs=wanted)
        return {n: result.as_numpy(n) for n in OUTPUTS}
    finally:
        client.close()


def over_grpc(server: Any, blob: bytes) -> dict[str, np.ndarray]:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        image = grpcclient.InferInput("image", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[blob]], dtype=object))
        result = client.infer("mtcnn", [image])
        return {n: result.as_numpy(n) for n in OUTPUTS}
    finally:
        client.close()


def test_http_and_grpc_find_the_same_face(server: Any) -> None:
    data = pytest.importorskip("skimage.data", reason="the test photos come from scikit-image")
    blob = jpeg(data.astronaut())
    http, grpc = over_http(server, blob), over_grpc(server, blob)
    assert http["boxes"].shape == (1, 4) and http["landmarks"].shape == (1, 5, 2)
    for name in OUTPUTS:
        np.testing.assert_array_equal(http[name], grpc[name])
    x1, y1, x2, y2 = http["boxes"][0]
    assert 170 < x1 < 190 and 50 < y1 < 75 and 255 < x2 < 280 and 160 < y2 < 185
    assert http["scores"][0] > 0.99


def test_no_face_is_zero_rows_and_no_picture_is_refused(server: Any) -> None:
    grey = jpeg(np.full((96, 128, 3), 128, np.uint8))
    for found in (over_http(server, grey), over_grpc(server, grey)):
        assert found["boxes"].shape == (0, 4)
        assert found["scores"].shape == (0,) and found["landmarks"].shape == (0, 5, 2)
    with pytest.raises(InferenceServerException) as http_error:
        over_http(server, b"GIF89a but not really")
    assert http_error.value.status() == "400"
    assert "cannot decode image" in http_error.value.message()
    with pytest.raises(InferenceServerException) as grpc_error:
        over_grpc(server, b"GIF89a but not really")
    assert grpc_error.value.status() == "StatusCode.INVALID_ARGUMENT"
