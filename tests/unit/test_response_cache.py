"""The response cache: hits and misses, eviction by size, reloads, keys that must not collide."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_builders import ADD_CONFIG, add_model, run_with_engine, write_model

from forwardpass.datatypes import DataType
from forwardpass.engine import Engine
from forwardpass.engine.cache import ResponseCache, check_capacity, parse_cache_config, request_key
from forwardpass.errors import InvalidArgument
from forwardpass.monitor.metrics import metrics_renderer
from forwardpass.types import InferRequest, InferResponse, RequestedOutput, Tensor

CACHED = ADD_CONFIG + "response_cache { enable: true }\n"
BYTES_ECHO = """
name: "words"
backend: "null"
max_batch_size: 4
input [ { name: "a" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "a" data_type: TYPE_STRING dims: [ -1 ] } ]
response_cache { enable: true }
"""


@pytest.fixture
def cache_repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_model(
        root, "add", config=CACHED, model=add_model(), files={"labels.txt": "ant\nbee\ncat\n"}
    )
    write_model(
        root,
        "plain",
        config=ADD_CONFIG.replace('"add"', '"plain"'),
        model=add_model(),
        files={"labels.txt": "ant\nbee\ncat\n"},
    )
    write_model(root, "words", config=BYTES_ECHO)
    return root


def add(values: list[float], model: str = "add", **kw: Any) -> InferRequest:
    x = Tensor("x", DataType.FP32, np.array([values], dtype=np.float32))
    return InferRequest(model_name=model, inputs=[x], **kw)


def run(root: Path, body: Any) -> Any:
    return run_with_engine(root, body, response_cache_bytes=1 << 20)


def counts(engine: Engine, model: str = "add") -> tuple[int, int, int]:
    stats = engine.stats(model)[0]
    s = stats.inference_stats
    return s.cache_hit.count, s.cache_miss.count, stats.execution_count


def test_a_repeated_request_is_answered_from_the_cache(cache_repo: Path) -> None:
    async def body(engine: Engine) -> None:
        first = await engine.infer(add([1, 2, 3], id="a"))
        second = await engine.infer(add([1, 2, 3], id="b"))
        assert second.id == "b" and first.id == "a"
        assert second.outputs[0].data.tolist() == first.outputs[0].data.tolist() == [[2, 4, 6]]
        assert counts(engine) == (1, 1, 1)  # the model ran once
        stats = engine.stats("add")[0].inference_stats
        assert stats.success.count == 2 and stats.cache_hit.ns > 0 and stats.cache_miss.ns > 0
        await engine.infer(add([1, 2, 4]))  # other data: a miss
        assert counts(engine) == (1, 2, 2)
        text = metrics_renderer(engine)().decode()
        assert 'forwardpass_cache_hits_total{model="add",version="1"} 1.0' in text
        assert 'forwardpass_cache_misses_total{model="add",version="1"} 2.0' in text

    run(cache_repo, body)


def test_models_without_response_cache_are_not_cached(cache_repo: Path) -> None:
    async def body(engine: Engine) -> None:
        await engine.infer(add([1, 2, 3], model="plain"))
        await engine.infer(add([1, 2, 3], model="plain"))
        assert counts(engine, "plain") == (0, 0, 2)

    run(cache_repo, body)


def test_requested_outputs_and_classification_are_part_of_the_key(cache_repo: Path) -> None:
    async def body(engine: Engine) -> None:
        plain = await engine.infer(add([1, 2, 3]))
        top = await engine.infer(
            add([1, 2, 3], outputs=[RequestedOutput("y", {"classification": 1})])
        )
        top2 = await engine.infer(
            add([1, 2, 3], outputs=[RequestedOutput("y", {"classification": 2})])
        )
        assert plain.outputs[0].datatype is DataType.FP32
        assert top.outputs[0].data.tolist() == [[b"6.000000:2:cat"]]
        assert top2.outputs[0].data.shape == (1, 2)
        assert counts(engine) == (0, 3, 3)
        # binary_data only picks the wire encoding: the same answer, a hit.
        again = await engine.infer(
            add(
                [1, 2, 3],
                outputs=[RequestedOutput("y", {"classification": 1, "binary_data": True})],
            )
        )
        assert again.outputs[0].data.tolist() == [[b"6.000000:2:cat"]]
        assert counts(engine) == (1, 3, 3)

    run(cache_repo, body)


def test_bytes_inputs_are_keyed_by_their_elements(cache_repo: Path) -> None:
    def words(*items: bytes) -> InferRequest:
        data = np.array([list(items)], dtype=object)
        return InferRequest(model_name="words", inputs=[Tensor("a", DataType.BYTES, data)])

    async def body(engine: Engine) -> None:
        r1 = await engine.infer(words(b"ab", b"c"))
        r2 = await engine.infer(words(b"a", b"bc"))  # the same bytes joined: another key
        assert r1.outputs[0].data.tolist() == [[b"ab", b"c"]]
        assert r2.outputs[0].data.tolist() == [[b"a", b"bc"]]
        r3 = await engine.infer(words(b"ab", b"c"))
        assert r3.outputs[0].data.tolist() == [[b"ab", b"c"]]
        assert counts(engine, "words") == (1, 2, 2)

    run(cache_repo, body)


def test_a_reload_never_serves_an_entry_of_the_old_version(cache_repo: Path) -> None:
    async def body(engine: Engine) -> None:
        await engine.infer(add([1, 2, 3]))
        await engine.load("add")  # same version number, a new load
        await engine.infer(add([1, 2, 3]))
        hit, miss, _ = counts(engine)
        assert (hit, miss) == (0, 1)  # the new version's first request ran the model

    run(cache_repo, body)


def _response(n: int) -> InferResponse:
    data = np.zeros(n, np.uint8)
    return InferResponse("m", "1", [Tensor("y", DataType.UINT8, data)])


def _key(i: int) -> bytes:
    x = Tensor("x", DataType.INT32, np.array([i], np.int32))
    return request_key(InferRequest("m", [x]), 1)


def test_entries_are_evicted_least_recently_used_by_size() -> None:
    cache = ResponseCache(3 * 1000 + 3 * 70)
    owner = object()
    for i in range(3):
        assert cache.insert(_key(i), owner, _response(1000))
    assert cache.lookup(_key(0), owner, "") is not None  # 0 is now the most recent
    cache.insert(_key(3), owner, _response(1000))  # evicts 1, the least recently used
    assert cache.evictions == 1 and len(cache) == 3
    assert cache.lookup(_key(1), owner, "") is None
    assert cache.lookup(_key(0), owner, "") is not None
    assert cache.used <= cache.capacity
    assert not cache.insert(_key(9), owner, _response(10_000))  # larger than the whole cache


def test_a_cached_answer_cannot_be_changed_by_its_reader() -> None:
    cache = ResponseCache(1 << 16)
    owner = object()
    cache.insert(_key(1), owner, _response(4))
    hit = cache.lookup(_key(1), owner, "")
    assert hit is not None
    with pytest.raises(ValueError):
        hit.outputs[0].data[0] = 1


def test_keys_differ_by_shape_datatype_name_and_version() -> None:
    base = np.arange(4, dtype=np.int32)

    def key(name: str, data: np.ndarray, dtype: DataType, version: int = 1) -> bytes:
        return request_key(InferRequest("m", [Tensor(name, dtype, data)]), version)

    keys = {
        key("x", base, DataType.INT32),
        key("x", base.reshape(2, 2), DataType.INT32),
        key("x", base.view(np.float32), DataType.FP32),
        key("z", base, DataType.INT32),
        key("x", base, DataType.INT32, version=2),
    }
    assert len(keys) == 5


@pytest.mark.parametrize(
    ("text", "size"), [("local,size=1048576", 1048576), ("size=10", 10), ("local,size=0", 0)]
)
def test_cache_config_is_read_as_triton_spells_it(text: str, size: int) -> None:
    assert parse_cache_config(text) == size


@pytest.mark.parametrize(
    ("text", "words"),
    [("redis,size=10", "only the 'local' cache"), ("local,size=ten", "number of bytes"),
     ("local,color=1", "unknown setting"), ("local", "give size=BYTES")],
)  # fmt: skip
def test_bad_cache_configs(text: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        parse_cache_config(text)


def test_a_cache_larger_than_memory_is_a_start_up_error() -> None:
    with pytest.raises(InvalidArgument, match="larger than the memory available"):
        check_capacity(1 << 62)
    from click.testing import CliRunner

    from forwardpass.cli.serve import serve

    result = CliRunner().invoke(serve, ["--cache-config", f"local,size={1 << 62}"])
    assert result.exit_code != 0
    assert "larger than the memory available" in result.output


def test_a_traced_cache_hit_still_ends_and_writes_its_trace(
    cache_repo: Path, tmp_path: Path
) -> None:
    import orjson

    path = tmp_path / "trace.json"

    async def body(engine: Engine) -> None:
        await engine.infer(add([1, 2, 3], id="miss"))
        await engine.infer(add([1, 2, 3], id="hit"))
        assert counts(engine) == (1, 1, 1)  # the second was answered from the cache

    run_with_engine(
        cache_repo,
        body,
        response_cache_bytes=1 << 20,
        trace_file=str(path),
        trace_level=("TIMESTAMPS",),
        trace_rate=1,
    )
    records = orjson.loads(path.read_bytes())
    ends = {
        r["id"]: r["timestamps"][0]["name"]
        for r in records
        if "timestamps" in r and r["timestamps"][0]["name"] == "REQUEST_END"
    }
    assert len(ends) == 2  # both requests, the cache hit included, ended their trace
