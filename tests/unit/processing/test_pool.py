"""The processing pool: declared input processing in worker processes (processing/pool.py)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from model_builders import run_with_engine, write_model
from onnx import TensorProto, helper
from PIL import Image

from forwardpass.cli.serve import serve
from forwardpass.config import ServerConfig
from forwardpass.datatypes import DataType
from forwardpass.engine import Engine
from forwardpass.errors import InternalError, InvalidArgument, InvalidModelConfig, Unavailable
from forwardpass.processing.pool import ProcessingPool
from forwardpass.processing.spec import build_processing
from forwardpass.repository import ModelRepository
from forwardpass.types import InferRequest, Tensor


def means_model() -> onnx.ModelProto:
    """logits[n, c] = mean over H, W of image[n, c]."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["logits"], axes=[2, 3], keepdims=0)],
        "means",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def declaration(scale: float = 1.0, pool: str | None = None) -> dict[str, Any]:
    image = {
        "name": "photo",
        "kind": "image",
        "to": "image",
        "resize": {"shorter": 40},
        "resample": "bicubic",
        "crop": [32, 32],
        "scale": scale,
        "mean": 127,
        "std": 128,
    }
    out: dict[str, Any] = {
        "inputs": [image],
        "outputs": [{"name": "top", "from": "logits", "steps": ["softmax", {"topk": 2}]}],
    }
    if pool is not None:
        out["pool"] = pool
    return out


def config(processing: dict[str, Any]) -> str:
    return f"""
name: "colours"
max_batch_size: 8
dynamic_batching {{ }}
output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" }} ]
parameters {{ key: "processing" value: {{ string_value: {json.dumps(json.dumps(processing))} }} }}
"""


def write(root: Path, processing: dict[str, Any]) -> None:
    write_model(
        root,
        "colours",
        config=config(processing),
        model=means_model(),
        files={"labels.txt": "red\ngreen\nblue\n"},
    )


def jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A noisy photo-like JPEG: decoding and resampling it exercise every pixel path."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def photo(*blobs: bytes) -> Tensor:
    array = np.empty((len(blobs), 1), dtype=object)
    for i, blob in enumerate(blobs):
        array[i, 0] = blob
    return Tensor("photo", DataType.BYTES, array)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write(tmp_path, declaration())
    return tmp_path


@pytest.fixture
def pool() -> Any:
    pool = ProcessingPool(2)
    yield pool
    pool.close()


def _entry(repo: Path) -> Any:
    entry = ModelRepository(repo).read("colours")
    return entry, build_processing(entry.config, entry.path, entry.labels)


BYTES = {"photo": DataType.BYTES}


def _inputs(*blobs: bytes) -> dict[str, np.ndarray]:
    return {"photo": photo(*blobs).data}


# --------------------------------------------------------------------------- the pool alone


def test_the_pool_answers_what_the_thread_path_answers_bit_for_bit(repo: Path, pool: Any) -> None:
    entry, processing = _entry(repo)
    batches = [_inputs(jpeg(i), jpeg(100 + i)) for i in range(6)]

    async def main() -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(
            *(pool.preprocess(entry, processing, b, BYTES) for b in batches)
        )

    answers = asyncio.run(main())
    for inputs, got in zip(batches, answers, strict=True):
        expected = processing.preprocess(dict(inputs))
        assert sorted(got) == sorted(expected)  # the model input and the image geometry
        for name, array in expected.items():
            assert got[name].dtype == array.dtype and got[name].shape == array.shape
            assert got[name].tobytes() == array.tobytes(), name
    assert len(set(pool.pids)) == 2


def test_a_bad_image_fails_alone_with_the_thread_paths_error(repo: Path, pool: Any) -> None:
    entry, processing = _entry(repo)
    broken = b"\xff\xd8\xff not really a JPEG"
    with pytest.raises(InvalidArgument) as in_thread:
        processing.preprocess(_inputs(broken))
    futures = [pool.submit(entry, processing, _inputs(jpeg(i)), BYTES) for i in range(4)]
    futures.insert(2, pool.submit(entry, processing, _inputs(broken), BYTES))
    futures += [pool.submit(entry, processing, _inputs(jpeg(9)), BYTES)]
    bad = futures.pop(2)
    with pytest.raises(InvalidArgument) as in_pool:
        bad.result(30)
    assert in_pool.value.message == in_thread.value.message
    assert all(f.result(30)["image"].shape == (1, 3, 32, 32) for f in futures)


def test_a_killed_worker_fails_only_its_requests_and_is_replaced(repo: Path, pool: Any) -> None:
    entry, processing = _entry(repo)
    pool.submit(entry, processing, _inputs(jpeg(0)), BYTES).result(30)  # both started
    victim, other = pool.pids
    # Stopped, the victim holds the next request in flight; the other worker takes the one
    # after it (the least busy worker gets each request).
    os.kill(victim, signal.SIGSTOP)
    lost = pool.submit(entry, processing, _inputs(jpeg(1)), BYTES)
    kept = pool.submit(entry, processing, _inputs(jpeg(2)), BYTES)
    assert kept.result(30)["image"].shape == (1, 3, 32, 32)
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(InternalError, match=rf"processing worker {victim} was killed by signal "):
        lost.result(30)
    assert "SIGKILL while processing this request" in str(lost.exception())
    deadline = time.monotonic() + 30
    while victim in pool.pids and time.monotonic() < deadline:
        time.sleep(0.05)
    assert victim not in pool.pids and other in pool.pids
    # The replacement builds the model's processing again and answers like the others.
    later = [pool.submit(entry, processing, _inputs(jpeg(i)), BYTES) for i in range(3, 9)]
    for i, future in zip(range(3, 9), later, strict=True):
        expected = processing.preprocess(_inputs(jpeg(i)))["image"]
        assert future.result(30)["image"].tobytes() == expected.tobytes()


def test_a_request_given_up_while_in_flight_does_not_disturb_its_worker(repo: Path) -> None:
    entry, processing = _entry(repo)
    pool = ProcessingPool(1)
    try:
        pool.submit(entry, processing, _inputs(jpeg(0)), BYTES).result(30)
        (pid,) = pool.pids
        os.kill(pid, signal.SIGSTOP)
        given_up = pool.submit(entry, processing, _inputs(jpeg(1)), BYTES)  # in flight
        queued = pool.submit(entry, processing, _inputs(jpeg(2)), BYTES)  # in flight too
        waiting = pool.submit(entry, processing, _inputs(jpeg(3)), BYTES)  # in the queue
        assert given_up.cancel() and waiting.cancel()  # their clients went away
        os.kill(pid, signal.SIGCONT)
        assert queued.result(30)["image"].shape == (1, 3, 32, 32)
        after = pool.submit(entry, processing, _inputs(jpeg(4)), BYTES)
        assert after.result(30)["image"].shape == (1, 3, 32, 32)
        assert pool.pids == [pid]  # the same worker: its reader survived the cancelled answer
    finally:
        pool.close()


def test_close_stops_the_workers_and_refuses_new_requests(repo: Path) -> None:
    entry, processing = _entry(repo)
    pool = ProcessingPool(1)
    assert pool.pids == []  # nothing starts before it is used
    pool.submit(entry, processing, _inputs(jpeg(0)), BYTES).result(30)
    (pid,) = pool.pids
    pool.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # exited and reaped
    with pytest.raises(Unavailable, match="shutting down"):
        pool.submit(entry, processing, _inputs(jpeg(0)), BYTES)
    pool.close()  # idempotent


# --------------------------------------------------------------------------- through the engine


def _answers(repo: Path, blobs: list[bytes], **server: Any) -> tuple[list[Any], list[int]]:
    async def body(engine: Engine) -> tuple[list[Any], list[int]]:
        responses = await asyncio.gather(
            *(engine.infer(InferRequest(model_name="colours", inputs=[photo(b)])) for b in blobs)
        )
        return [r.outputs[0].data.tolist() for r in responses], engine.processing_pool.pids

    result: tuple[list[Any], list[int]] = run_with_engine(repo, body, **server)
    return result


def test_served_answers_equal_with_and_without_the_pool(repo: Path) -> None:
    blobs = [jpeg(i) for i in range(10)]
    threads, no_pids = _answers(repo, blobs)
    pooled, pids = _answers(repo, blobs, processing_workers=2)
    assert pooled == threads
    assert no_pids == [] and len(pids) == 2


def test_a_bad_image_is_a_400_for_its_request_only_through_the_engine(repo: Path) -> None:
    async def body(engine: Engine) -> list[Any]:
        good = [
            engine.infer(InferRequest(model_name="colours", inputs=[photo(jpeg(i))]))
            for i in range(6)
        ]
        bad = engine.infer(InferRequest(model_name="colours", inputs=[photo(b"GIF8 broken")]))
        return await asyncio.gather(*good[:3], bad, *good[3:], return_exceptions=True)

    results = run_with_engine(repo, body, processing_workers=2)
    error = results.pop(3)
    assert isinstance(error, InvalidArgument) and "cannot decode image" in error.message
    assert not any(isinstance(r, BaseException) for r in results)


def test_a_reload_rebuilds_the_processing_in_the_workers(repo: Path) -> None:
    blob = jpeg(7)

    async def body(engine: Engine) -> tuple[Any, Any]:
        request = InferRequest(model_name="colours", inputs=[photo(blob)])
        before = (await engine.infer(request)).outputs[0].data.tolist()
        write(repo, declaration(scale=0.5))
        await engine.load("colours")
        after = (await engine.infer(request)).outputs[0].data.tolist()
        return before, after

    before, after = run_with_engine(repo, body, processing_workers=1)
    assert before != after
    # What the workers answer after the reload is what the new declaration gives in a thread.
    assert _answers(repo, [blob])[0] == [after]


def test_the_declaration_chooses_the_pool_per_model(tmp_path: Path) -> None:
    write(tmp_path, declaration(pool="process"))
    answers, pids = _answers(tmp_path, [jpeg(1)])  # no --processing-workers: auto
    assert len(pids) >= 1
    write(tmp_path, declaration(pool="thread"))
    answers_in_thread, no_pids = _answers(tmp_path, [jpeg(1)], processing_workers=2)
    assert no_pids == [] and answers_in_thread == answers


def test_a_wrong_pool_in_the_declaration_is_a_config_error(tmp_path: Path) -> None:
    write(tmp_path, declaration(pool="gpu"))
    entry = ModelRepository(tmp_path).read("colours")
    with pytest.raises(InvalidModelConfig, match="processing pool must be one of process, thread"):
        build_processing(entry.config, entry.path, entry.labels)


# --------------------------------------------------------------------------- settings


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(InvalidArgument, match="--processing-workers must be 0 or more"):
        ServerConfig(processing_workers=-1)
    with pytest.raises(InvalidArgument, match="'x' is not a core number"):
        ServerConfig(processing_cpus="x")
    with pytest.raises(InvalidArgument, match="is not among this machine's cores"):
        ServerConfig(processing_cpus=str(os.cpu_count() or 1))
    assert ServerConfig(processing_cpus="0,0-0").processing_cpu_list == (0,)
    runner = CliRunner()
    for flags, message in [
        (["--processing-workers", "many"], "expected a number of processes or auto"),
        (["--processing-workers", "-2"], "--processing-workers must be 0 or more"),
        (["--processing-cpus", "9999"], "is not among this machine's cores"),
    ]:
        result = runner.invoke(serve, ["--no-grpc", *flags])
        assert result.exit_code in (1, 2), result.output  # a usage error, never a traceback
        assert message in result.output
