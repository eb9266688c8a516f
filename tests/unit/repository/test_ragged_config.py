"""Reading ragged inputs, batch inputs and batch outputs from a config, checked at load."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_builders import RAGGED_CONFIG, ragged_sum_model, write_model

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidModelConfig
from forwardpass.model_config import BatchInput, BatchOutput
from forwardpass.repository import ModelRepository
from forwardpass.repository.config_io import config_from_dict
from forwardpass.repository.config_json import config_to_dict
from forwardpass.repository.pbtxt import parse_pbtxt


def test_the_ragged_config_reads_and_round_trips(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(root, "ragged", config=RAGGED_CONFIG, model=ragged_sum_model())
    config = ModelRepository(root).read("ragged").config
    # The batch input is the model's, not the client's: it is no config input.
    assert [s.name for s in config.inputs] == ["x"]
    assert config.inputs[0].allow_ragged_batch and config.inputs[0].dims == (-1,)
    assert config.batch_input == (
        BatchInput("BATCH_ACCUMULATED_ELEMENT_COUNT", ("end",), DataType.INT64, ("x",)),
    )
    assert config.batch_output == (
        BatchOutput(("twice",), "BATCH_SCATTER_WITH_INPUT_SHAPE", ("x",)),
    )
    as_json = config_to_dict(config)
    assert as_json["input"][0]["allow_ragged_batch"] is True
    assert as_json["batch_input"] == [
        {
            "kind": "BATCH_ACCUMULATED_ELEMENT_COUNT",
            "target_name": ["end"],
            "data_type": "TYPE_INT64",
            "source_input": ["x"],
        }
    ]
    assert config_from_dict(as_json, name="ragged") == config


def test_a_batch_input_the_model_lacks_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(
        root,
        "ragged",
        config=RAGGED_CONFIG.replace('target_name: "end"', 'target_name: "stop"'),
        model=ragged_sum_model(),
    )
    with pytest.raises(InvalidModelConfig, match="batch_input target 'stop' is not an input"):
        ModelRepository(root).read("ragged")


def test_a_ragged_input_must_be_flat_in_the_model(tmp_path: Path) -> None:
    from model_builders import ADD_CONFIG, add_model

    root = tmp_path / "models"
    config = ADD_CONFIG.replace("dims: [ 3 ] }", "dims: [ 3 ] allow_ragged_batch: true }", 1)
    write_model(root, "add", config=config, model=add_model())
    with pytest.raises(InvalidModelConfig, match="model's input must be 1-D"):
        ModelRepository(root).read("add")


def test_parse_of_every_batch_input_kind() -> None:
    kinds = [
        "BATCH_ELEMENT_COUNT",
        "BATCH_ACCUMULATED_ELEMENT_COUNT",
        "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO",
        "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE",
        "BATCH_ITEM_SHAPE",
        "BATCH_ITEM_SHAPE_FLATTEN",
    ]
    entries = ", ".join(
        f"{{ kind: {k} target_name: 't{i}' data_type: TYPE_INT32 source_input: 'x' }}"
        for i, k in enumerate(kinds)
    )
    text = (
        "max_batch_size: 4 input { name: 'x' data_type: TYPE_FP32 dims: -1 "
        "allow_ragged_batch: true } output { name: 'y' data_type: TYPE_FP32 dims: 1 } "
        f"batch_input [ {entries} ]"
    )
    config = config_from_dict(parse_pbtxt(text), name="m")
    assert [b.kind for b in config.batch_input] == kinds
    # Enum numbers (protobuf JSON may write them) read the same.
    numeric = config_from_dict(
        {
            **parse_pbtxt(text),
            "batch_input": [
                {**e, "kind": i} for i, e in enumerate(config_to_dict(config)["batch_input"])
            ],
        },
        name="m",
    )
    assert numeric == config
