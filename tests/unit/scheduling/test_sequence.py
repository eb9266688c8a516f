"""The sequence batcher through the engine: control inputs, implicit state, slots, idleness."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from model_builders import run_with_engine, write_model
from onnx import TensorProto, helper

from forwardpass.datatypes import DataType
from forwardpass.engine import Engine
from forwardpass.errors import InvalidArgument, InvalidModelConfig
from forwardpass.repository.config_io import config_from_dict
from forwardpass.repository.config_json import config_to_dict
from forwardpass.repository.pbtxt import parse_pbtxt
from forwardpass.types import InferRequest, Tensor


def accumulator(corrid: int = TensorProto.UINT64) -> onnx.ModelProto:
    """``y = STATE + x`` (and the next state), echoing each control input back."""
    f, b = TensorProto.FLOAT, ["batch", 1]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["STATE", "x"], ["y"]),
            helper.make_node("Identity", ["y"], ["STATE_OUT"]),
            helper.make_node("Identity", ["START"], ["start"]),
            helper.make_node("Identity", ["END"], ["end"]),
            helper.make_node("Identity", ["READY"], ["ready"]),
            helper.make_node("Identity", ["CORRID"], ["corrid"]),
        ],
        "acc",
        [
            helper.make_tensor_value_info("x", f, b),
            helper.make_tensor_value_info("STATE", f, b),
            helper.make_tensor_value_info("START", f, b),
            helper.make_tensor_value_info("END", TensorProto.INT32, b),
            helper.make_tensor_value_info("READY", TensorProto.BOOL, b),
            helper.make_tensor_value_info("CORRID", corrid, b),
        ],
        [
            helper.make_tensor_value_info("y", f, b),
            helper.make_tensor_value_info("STATE_OUT", f, b),
            helper.make_tensor_value_info("start", f, b),
            helper.make_tensor_value_info("end", TensorProto.INT32, b),
            helper.make_tensor_value_info("ready", TensorProto.BOOL, b),
            helper.make_tensor_value_info("corrid", corrid, b),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def acc_config(
    name: str = "acc",
    *,
    max_batch_size: int = 4,
    strategy: str = "direct { max_queue_delay_microseconds: 20000 }",
    idle_us: int = 5_000_000,
    corrid: str = "TYPE_UINT64",
    initial: str = "",
) -> str:
    return f"""
name: "{name}"
max_batch_size: {max_batch_size}
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }} ]
sequence_batching {{
  {strategy}
  max_sequence_idle_microseconds: {idle_us}
  control_input [
    {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "END" control [ {{ kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "READY"
       control [ {{ kind: CONTROL_SEQUENCE_READY bool_false_true: [ false, true ] }} ] }},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: {corrid} }} ] }}
  ]
  state [ {{ input_name: "STATE" output_name: "STATE_OUT" data_type: TYPE_FP32 dims: [ 1 ]
            {initial} }} ]
}}
"""


def step(
    value: float, sid: int | str, start: bool = False, end: bool = False, model: str = "acc"
) -> InferRequest:
    params: dict[str, Any] = {"sequence_id": sid}
    if start:
        params["sequence_start"] = True
    if end:
        params["sequence_end"] = True
    x = Tensor("x", DataType.FP32, np.array([[value]], dtype=np.float32))
    return InferRequest(model_name=model, inputs=[x], parameters=params)


def out(response: Any, name: str = "y") -> Any:
    return next(t.data for t in response.outputs if t.name == name)


@pytest.fixture
def acc_repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_model(root, "acc", config=acc_config(), model=accumulator())
    return root


def run(root: Path, body: Any) -> Any:
    return run_with_engine(root, body)


def test_state_is_carried_between_requests_and_controls_reach_the_model(acc_repo: Path) -> None:
    async def body(engine: Engine) -> None:
        first = await engine.infer(step(1, 7, start=True))
        assert out(first).tolist() == [[1.0]]
        assert out(first, "start").tolist() == [[1.0]]
        assert out(first, "end").tolist() == [[0]]
        assert out(first, "ready").tolist() == [[True]]
        assert out(first, "corrid").dtype == np.uint64 and out(first, "corrid").tolist() == [[7]]
        second = await engine.infer(step(2, 7))
        assert out(second).tolist() == [[3.0]]
        assert out(second, "start").tolist() == [[0.0]]
        last = await engine.infer(step(3, 7, end=True))
        assert out(last).tolist() == [[6.0]] and out(last, "end").tolist() == [[1]]
        # The sequence ended: its id is free, and a new START begins from the initial state.
        again = await engine.infer(step(5, 7, start=True))
        assert out(again).tolist() == [[5.0]]

    run(acc_repo, body)


def test_interleaved_sequences_share_a_batch_but_not_their_state(acc_repo: Path) -> None:
    async def body(engine: Engine) -> None:
        async def sequence(sid: int, unit: float) -> list[float]:
            sums = []
            for i in range(5):
                r = await engine.infer(step(unit, sid, start=i == 0, end=i == 4))
                sums.append(float(out(r)[0, 0]))
                assert int(out(r, "corrid")[0, 0]) == sid
            return sums

        a, b, c = await asyncio.gather(sequence(1, 1.0), sequence(2, 10.0), sequence(3, 100.0))
        assert a == [1, 2, 3, 4, 5]
        assert b == [10, 20, 30, 40, 50]
        assert c == [100, 200, 300, 400, 500]
        stats = engine.stats("acc")[0]
        assert stats.inference_stats.success.count == 15
        # Three sequences sent together within the queue delay: batches of several rows.
        assert any(b.batch_size > 1 for b in stats.batch_stats)

    run(acc_repo, body)


def test_string_correlation_ids(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(
        root, "acc", config=acc_config(corrid="TYPE_STRING"), model=accumulator(TensorProto.STRING)
    )

    async def body(engine: Engine) -> None:
        r = await engine.infer(step(4, "user-a", start=True))
        corrid = out(r, "corrid")[0, 0]
        assert (corrid.decode() if isinstance(corrid, bytes) else corrid) == "user-a"
        await engine.infer(step(1, "user-b", start=True))
        r = await engine.infer(step(4, "user-a", end=True))
        assert out(r).tolist() == [[8.0]]

    run(root, body)


def test_a_string_id_for_a_numeric_corrid_is_rejected(acc_repo: Path) -> None:
    async def body(engine: Engine) -> None:
        with pytest.raises(InvalidArgument, match="numeric correlation ID"):
            await engine.infer(step(1, "abc", start=True))

    run(acc_repo, body)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({}, "must specify a non-zero or non-empty correlation ID"),
        ({"sequence_id": 0, "sequence_start": True}, "non-zero or non-empty correlation ID"),
        ({"sequence_id": "", "sequence_start": True}, "non-zero or non-empty correlation ID"),
        ({"sequence_id": 5}, "sequence 5 to model 'acc' must specify the START flag"),
        ({"sequence_id": -1}, "must fit in uint64"),
        ({"sequence_id": 1.5}, "unsigned integer or a string"),
        ({"sequence_id": 3, "sequence_start": "yes"}, "sequence_start must be a boolean"),
    ],
)
def test_bad_sequence_parameters(acc_repo: Path, params: dict[str, Any], words: str) -> None:
    async def body(engine: Engine) -> None:
        request = step(1, 1)
        request.parameters = params
        with pytest.raises(InvalidArgument) as info:
            await engine.infer(request)
        assert words in info.value.message

    run(acc_repo, body)


def test_a_sequence_request_must_have_batch_size_one(acc_repo: Path) -> None:
    async def body(engine: Engine) -> None:
        request = step(1, 1, start=True)
        request.inputs = [Tensor("x", DataType.FP32, np.ones((2, 1), np.float32))]
        with pytest.raises(InvalidArgument, match="must specify batch-size 1"):
            await engine.infer(request)

    run(acc_repo, body)


def test_an_idle_sequence_is_released_and_its_next_request_rejected(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(root, "acc", config=acc_config(idle_us=50_000), model=accumulator())

    async def body(engine: Engine) -> None:
        await engine.infer(step(1, 9, start=True))
        await engine.infer(step(1, 9))  # within the idle time: still alive
        await asyncio.sleep(0.3)
        with pytest.raises(InvalidArgument) as info:
            await engine.infer(step(1, 9))
        message = info.value.message
        assert "must specify the START flag" in message
        assert "released after it was idle for more than 50000 µs" in message
        # Starting it again works, from the initial state.
        r = await engine.infer(step(2, 9, start=True))
        assert out(r).tolist() == [[2.0]]

    run(root, body)


def test_more_sequences_than_slots_wait_for_a_free_slot(tmp_path: Path) -> None:
    root = tmp_path / "models"
    # One instance with max_batch_size 2: two slots.
    write_model(
        root,
        "acc",
        config=acc_config(max_batch_size=2, strategy="direct { }"),
        model=accumulator(),
    )

    async def body(engine: Engine) -> None:
        await engine.infer(step(1, 1, start=True))
        await engine.infer(step(1, 2, start=True))
        third = asyncio.ensure_future(engine.infer(step(5, 3, start=True)))
        await asyncio.sleep(0.2)
        assert not third.done()  # in the backlog, as in Triton: waiting, not rejected
        # Its later requests queue behind it in the backlog, in order.
        fourth = asyncio.ensure_future(engine.infer(step(5, 3)))
        r = await engine.infer(step(1, 1, end=True))  # sequence 1 ends, freeing its slot
        assert out(r).tolist() == [[2.0]]
        assert out(await third).tolist() == [[5.0]]
        assert out(await fourth).tolist() == [[10.0]]
        r = await engine.infer(step(1, 2, end=True))
        assert out(r).tolist() == [[2.0]]

    run(root, body)


def test_sequence_parameters_to_a_model_without_sequence_batching_are_ignored(
    repo: Path,
) -> None:
    # Triton's dynamic batcher and default scheduler never read the correlation id.
    async def body(engine: Engine) -> None:
        x = Tensor("x", DataType.FP32, np.zeros((1, 3), np.float32))
        r = await engine.infer(
            InferRequest(
                model_name="add",
                inputs=[x],
                parameters={"sequence_id": 4, "sequence_start": True, "sequence_end": True},
            )
        )
        assert out(r).tolist() == [[1.0, 2.0, 3.0]]

    run(repo, body)


def test_initial_state_from_a_data_file(tmp_path: Path) -> None:
    root = tmp_path / "models"
    initial = 'initial_state { data_type: TYPE_FP32 dims: [ 1 ] data_file: "hundred" name: "init" }'
    folder = write_model(root, "acc", config=acc_config(initial=initial), model=accumulator())
    (folder / "initial_state").mkdir()
    (folder / "initial_state" / "hundred").write_bytes(np.array([100], np.float32).tobytes())

    async def body(engine: Engine) -> None:
        r = await engine.infer(step(1, 1, start=True))
        assert out(r).tolist() == [[101.0]]

    run(root, body)


def test_a_wrong_sized_initial_state_file_fails_the_load(tmp_path: Path) -> None:
    root = tmp_path / "models"
    initial = 'initial_state { data_type: TYPE_FP32 dims: [ 1 ] data_file: "short" }'
    folder = write_model(root, "acc", config=acc_config(initial=initial), model=accumulator())
    (folder / "initial_state").mkdir()
    (folder / "initial_state" / "short").write_bytes(b"\0\0")

    async def body(engine: Engine) -> None:
        assert not engine.is_ready("acc")
        assert "holds 2 bytes" in engine.handle("acc").reason

    run(root, body)


def test_oldest_strategy_batches_the_oldest_requests(tmp_path: Path) -> None:
    root = tmp_path / "models"
    strategy = (
        "oldest { max_candidate_sequences: 4 preferred_batch_size: [ 2 ] "
        "max_queue_delay_microseconds: 50000 }"
    )
    write_model(root, "acc", config=acc_config(strategy=strategy), model=accumulator())

    async def body(engine: Engine) -> None:
        async def sequence(sid: int) -> float:
            total = 0.0
            for i in range(3):
                r = await engine.infer(step(sid, sid, start=i == 0, end=i == 2))
                total = float(out(r)[0, 0])
            return total

        totals = await asyncio.gather(*(sequence(s) for s in (1, 2, 3, 4)))
        assert totals == [3.0, 6.0, 9.0, 12.0]
        sizes = {b.batch_size for b in engine.stats("acc")[0].batch_stats}
        assert 2 in sizes

    run(root, body)


def test_config_round_trips_through_triton_json() -> None:
    config = config_from_dict(
        {
            **parse_pbtxt(acc_config()),
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}],
            "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1]}],
        },
        name="acc",
    )
    again = config_from_dict(config_to_dict(config), name="acc")
    assert again.sequence_batching == config.sequence_batching
    assert config.sequence_batching is not None
    assert config.sequence_batching.max_sequence_idle_microseconds == 5_000_000


@pytest.mark.parametrize(
    ("section", "words"),
    [
        (
            "control_input [ { name: 'S' control [ { kind: CONTROL_SEQUENCE_START "
            "int32_false_true: [0, 1] fp32_false_true: [0, 1] } ] } ]",
            "exactly one of int32_false_true",
        ),
        (
            "control_input [ { name: 'S' control [ { kind: CONTROL_SEQUENCE_START "
            "int32_false_true: [1] } ] } ]",
            "expected two values",
        ),
        (
            "control_input [ { name: 'C' control [ { kind: CONTROL_SEQUENCE_CORRID "
            "data_type: TYPE_FP32 } ] } ]",
            "a CORRID control is TYPE_UINT64",
        ),
        ("direct { } oldest { }", "only one strategy"),
        ("state [ { input_name: 'a' data_type: TYPE_FP32 dims: [1] } ]", "needs an output_name"),
        ("direct { minimum_slot_utilization: 2 }", "in 0..1"),
    ],
)
def test_bad_sequence_configs(section: str, words: str) -> None:
    text = f'name: "m"\nmax_batch_size: 2\nsequence_batching {{ {section} }}'
    with pytest.raises(InvalidModelConfig) as info:
        config_from_dict(parse_pbtxt(text.replace("'", '"')), name="m")
    assert words in info.value.message


def test_sequence_and_dynamic_batching_together_are_rejected() -> None:
    text = 'name: "m"\nmax_batch_size: 2\nsequence_batching { }\ndynamic_batching { }'
    with pytest.raises(InvalidModelConfig, match="only one scheduler"):
        config_from_dict(parse_pbtxt(text), name="m")


def test_a_control_input_the_model_lacks_fails_the_load(tmp_path: Path) -> None:
    root = tmp_path / "models"
    config = acc_config().replace('name: "CORRID"', 'name: "CORR_ID"')
    write_model(root, "acc", config=config, model=accumulator())

    async def body(engine: Engine) -> None:
        assert not engine.is_ready("acc")
        assert "sequence_batching fills input(s) ['CORR_ID']" in engine.handle("acc").reason

    run(root, body)
