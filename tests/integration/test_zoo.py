"""Zoo models behind a real ``forwardpass serve``, driven by ``tritonclient``: JPEG bytes in,
ImageNet labels out; and the zoo's models served side by side from one repository."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

CATS = {"tiger cat", "Egyptian cat", "tabby"}


def jpeg(name: str) -> bytes:
    data = pytest.importorskip("skimage.data", reason="the test photos come from scikit-image")
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(getattr(data, name)()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def zoo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from forwardpass.zoo import add, get_recipe

    repository = tmp_path_factory.mktemp("zoo") / "models"
    for name in ("efficientnet-lite0", "breast-cancer"):
        for module in get_recipe(name).modules:
            pytest.importorskip(module, reason=f"zoo model {name} needs {module}")
        add(name, repository)
    return repository


@pytest.fixture(scope="module")
def zoo_client(
    start_module_server: Any, zoo_repository: Path
) -> Iterator[httpclient.InferenceServerClient]:
    server = start_module_server(zoo_repository, "--log-level", "WARNING")
    client = httpclient.InferenceServerClient(server.address, concurrency=4)
    try:
        yield client
    finally:
        client.close()


def test_jpeg_bytes_in_labels_out(zoo_client: httpclient.InferenceServerClient) -> None:
    assert zoo_client.is_model_ready("efficientnet-lite0")
    blobs = np.array([[jpeg("chelsea")], [jpeg("coffee")]], dtype=object)
    image = httpclient.InferInput("image", list(blobs.shape), "BYTES")
    image.set_data_from_numpy(blobs, binary_data=True)
    outputs = [httpclient.InferRequestedOutput("top5", binary_data=True)]
    result = zoo_client.infer("efficientnet-lite0", [image], outputs=outputs)
    top5 = result.as_numpy("top5")
    assert top5.shape == (2, 5)
    cat = [e.decode().split(":", 2) for e in top5[0]]
    coffee = [e.decode().split(":", 2) for e in top5[1]]
    assert cat[0][2] in CATS, cat
    assert coffee[0][2] == "espresso" and float(coffee[0][0]) > 0.8, coffee
    assert result.get_output("probabilities") is None  # only what was asked for


def test_concurrent_clients_all_see_the_cat(zoo_client: httpclient.InferenceServerClient) -> None:
    blob = np.array([[jpeg("chelsea")]], dtype=object)
    image = httpclient.InferInput("image", [1, 1], "BYTES")
    image.set_data_from_numpy(blob, binary_data=True)
    pending = [zoo_client.async_infer("efficientnet-lite0", [image]) for _ in range(8)]
    for handle in pending:
        result = handle.get_result()
        assert result.as_numpy("probabilities").shape == (1, 1000)
        assert result.as_numpy("top5")[0, 0].decode().split(":", 2)[2] in CATS


def test_named_columns_through_tritonclient(zoo_client: httpclient.InferenceServerClient) -> None:
    from forwardpass.zoo.breast_cancer import CLASSES, dataset

    x, y, names = dataset()
    inputs = []
    for j, name in enumerate(names):
        column = httpclient.InferInput(name, [2, 1], "FP32")
        column.set_data_from_numpy(x[[0, 19], j : j + 1].astype(np.float32))
        inputs.append(column)
    result = zoo_client.infer("breast-cancer", inputs)
    diagnosis = [d.decode() for d in result.as_numpy("diagnosis").reshape(-1)]
    assert diagnosis == [CLASSES[int(y[0])], CLASSES[int(y[19])]]
