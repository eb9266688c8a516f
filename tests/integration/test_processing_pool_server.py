"""``forwardpass serve --processing-workers 2`` with the zoo's EfficientNet-Lite0, driven by
``tritonclient``: JPEG bytes decoded in worker processes, labels out; a bad JPEG is a 400 for
its request alone; a worker killed with SIGKILL is replaced while the server keeps answering;
Ctrl-C stops the workers with the server."""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

MODEL = "efficientnet-lite0"
CATS = {"tiger cat", "Egyptian cat", "tabby"}


def jpeg(name: str) -> bytes:
    data = pytest.importorskip("skimage.data", reason="the test photos come from scikit-image")
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(getattr(data, name)()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def image_input(blob: bytes) -> httpclient.InferInput:
    image = httpclient.InferInput("image", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[blob]], dtype=object), binary_data=True)
    return image


def top1(result: Any) -> str:
    return str(result.as_numpy("top5")[0, 0].decode().split(":", 2)[2])


def workers_of(pid: int) -> set[int]:
    """The server's child processes that are processing-pool workers."""
    children: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            children.update(int(c) for c in f.read().split())
    found = set()
    for child in children:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"forwardpass.processing.pool_worker" in f.read():
                    found.add(child)
        except FileNotFoundError:
            continue
    return found


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from forwardpass.zoo import add, get_recipe

    for module in get_recipe(MODEL).modules:
        pytest.importorskip(module, reason=f"zoo model {MODEL} needs {module}")
    root = tmp_path_factory.mktemp("pool") / "models"
    add(MODEL, root)
    return root


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc (Linux)")
def test_jpegs_decoded_in_worker_processes(start_server: Any, repository: Path) -> None:
    server = start_server(
        repository, "--no-grpc", "--processing-workers", "2", "--log-level", "WARNING"
    )
    client = httpclient.InferenceServerClient(server.address, concurrency=8)
    try:
        cat, coffee = jpeg("chelsea"), jpeg("coffee")
        outputs = [httpclient.InferRequestedOutput("top5")]
        pending = [
            client.async_infer(MODEL, [image_input(cat if i % 2 else coffee)], outputs=outputs)
            for i in range(16)
        ]
        bad = client.async_infer(MODEL, [image_input(b"\xff\xd8\xff truncated")], outputs=outputs)
        labels = [top1(p.get_result()) for p in pending]
        assert all(label in CATS for label in labels[1::2])
        assert all(label == "espresso" for label in labels[0::2])
        with pytest.raises(InferenceServerException) as error:
            bad.get_result()
        assert error.value.status() == "400"
        assert "cannot decode image" in str(error.value.message())

        pids = workers_of(server.proc.pid)
        assert len(pids) == 2
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = workers_of(server.proc.pid)
            if victim not in now and len(now) == 2:
                break
            time.sleep(0.05)
        assert victim not in now and len(now) == 2, now
        # Every request after the kill is answered, by the survivor or the replacement.
        again = [client.async_infer(MODEL, [image_input(cat)], outputs=outputs) for _ in range(8)]
        assert all(top1(p.get_result()) in CATS for p in again)
    finally:
        client.close()
    assert server.stop() == 0
    time.sleep(0.2)
    for pid in now:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
