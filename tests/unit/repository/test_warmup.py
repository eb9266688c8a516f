"""Warm-up sample arrays: zeros, random data and data files, with and without batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from forwardpass.datatypes import serialize_bytes_tensor
from forwardpass.errors import InvalidModelConfig
from forwardpass.model_config import ModelConfig
from forwardpass.repository import config_from_dict, parse_pbtxt, warmup_inputs


def _config(text: str) -> ModelConfig:
    return config_from_dict(parse_pbtxt(text), name="m")


BATCHED = """
max_batch_size: 4
input { name: "f" data_type: TYPE_FP32 dims: [ 2, 3 ] }
input { name: "s" data_type: TYPE_STRING dims: [ 2 ] }
input { name: "i" data_type: TYPE_INT64 dims: [ 5 ] }
input { name: "b" data_type: TYPE_BOOL dims: [ 5 ] }
input { name: "h" data_type: TYPE_FP16 dims: [ 5 ] }
input { name: "bf" data_type: TYPE_BF16 dims: [ 5 ] }
input { name: "u" data_type: TYPE_UINT8 dims: [ 5 ] }
output { name: "y" data_type: TYPE_FP32 dims: [ 1 ] }
model_warmup {
  name: "%s" batch_size: 3
  inputs { key: "f" value { data_type: TYPE_FP32 dims: [ 2, 3 ] %s } }
  inputs { key: "s" value { data_type: TYPE_STRING dims: [ 2 ] %s } }
  inputs { key: "i" value { data_type: TYPE_INT64 dims: [ 5 ] %s } }
  inputs { key: "b" value { data_type: TYPE_BOOL dims: [ 5 ] %s } }
  inputs { key: "h" value { data_type: TYPE_FP16 dims: [ 5 ] %s } }
  inputs { key: "bf" value { data_type: TYPE_BF16 dims: [ 5 ] %s } }
  inputs { key: "u" value { data_type: TYPE_UINT8 dims: [ 5 ] %s } }
}
"""


def _batched(source: str) -> ModelConfig:
    return _config(BATCHED % ((source,) + (f"{source}: true",) * 7))


def test_zero_data_gets_the_batch_dimension(tmp_path: Path) -> None:
    ((sample, arrays),) = warmup_inputs(_batched("zero_data"), tmp_path)
    assert sample.name == "zero_data"
    assert arrays["f"].shape == (3, 2, 3) and arrays["f"].dtype == np.float32
    assert not arrays["f"].any()
    assert arrays["s"].dtype == object and arrays["s"].shape == (3, 2)
    assert all(item == b"" for item in arrays["s"].reshape(-1))
    assert arrays["i"].dtype == np.int64
    assert arrays["b"].dtype == np.bool_
    assert arrays["h"].dtype == np.float16
    assert arrays["bf"].dtype == np.uint16
    assert arrays["u"].dtype == np.uint8


def test_random_data_is_bounded_and_repeatable(tmp_path: Path) -> None:
    config = _batched("random_data")
    ((_, arrays),) = warmup_inputs(config, tmp_path)
    assert ((arrays["f"] >= 0) & (arrays["f"] < 1)).all()
    assert ((arrays["i"] >= 0) & (arrays["i"] < 128)).all()
    assert arrays["u"].max() < 128
    assert arrays["b"].dtype == np.bool_
    assert np.isfinite(arrays["h"]).all()
    assert arrays["bf"].dtype == np.uint16
    assert all(isinstance(s, bytes) and 1 <= len(s) <= 8 for s in arrays["s"].reshape(-1))
    ((_, again),) = warmup_inputs(config, tmp_path)
    for name, array in arrays.items():
        assert np.array_equal(array, again[name]), name


def test_unbatched_model_uses_dims_as_they_are(tmp_path: Path) -> None:
    config = _config(
        """
        max_batch_size: 0
        input { name: "x" data_type: TYPE_INT32 dims: [ 2, 2 ] }
        input { name: "scalar" data_type: TYPE_FP32 dims: [ ] }
        model_warmup { name: "w" batch_size: 1 count: 5
          inputs { key: "x" value { data_type: TYPE_INT32 dims: [ 2, 2 ] zero_data: true } }
          inputs { key: "scalar" value { data_type: TYPE_FP32 random_data: true } } }
        """
    )
    ((sample, arrays),) = warmup_inputs(config, tmp_path)
    assert sample.count == 5
    assert arrays["x"].shape == (2, 2)
    assert arrays["scalar"].shape == ()


FILE_CONFIG = """
max_batch_size: %d
input { name: "x" data_type: TYPE_FP32 dims: [ 2 ] }
input { name: "t" data_type: TYPE_STRING dims: [ 2 ] }
model_warmup { name: "w" batch_size: %d
  inputs { key: "x" value { data_type: TYPE_FP32 dims: [ 2 ] input_data_file: "%s" } }
  inputs { key: "t" value { data_type: TYPE_STRING dims: [ 2 ] input_data_file: "text" } } }
"""


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "m"
    (folder / "warmup").mkdir(parents=True)
    (folder / "warmup" / "one").write_bytes(np.array([1.5, -2.0], dtype="<f4").tobytes())
    (folder / "warmup" / "three").write_bytes(np.arange(6, dtype="<f4").tobytes())
    (folder / "warmup" / "odd").write_bytes(b"\x00" * 7)
    text = np.array([b"hello", b""], dtype=object)
    (folder / "warmup" / "text").write_bytes(serialize_bytes_tensor(text))
    return folder


def test_data_file_with_one_sample_is_repeated_over_the_batch(model_dir: Path) -> None:
    ((_, arrays),) = warmup_inputs(_config(FILE_CONFIG % (4, 3, "one")), model_dir)
    assert arrays["x"].tolist() == [[1.5, -2.0]] * 3
    assert arrays["x"].flags.writeable
    assert arrays["t"].tolist() == [[b"hello", b""]] * 3


def test_data_file_with_the_whole_batch(model_dir: Path) -> None:
    ((_, arrays),) = warmup_inputs(_config(FILE_CONFIG % (4, 3, "three")), model_dir)
    assert arrays["x"].tolist() == [[0, 1], [2, 3], [4, 5]]


def test_data_file_unbatched(model_dir: Path) -> None:
    ((_, arrays),) = warmup_inputs(_config(FILE_CONFIG % (0, 1, "one")), model_dir)
    assert arrays["x"].shape == (2,)


@pytest.mark.parametrize(
    ("file", "message"),
    [
        ("three", r"holds 24 bytes; dims \[2\] of TYPE_FP32 need 8 or 16 bytes"),
        ("odd", "holds 7 bytes"),
        ("absent", "cannot read warmup/absent"),
        ("../../m/secret", "leaves warmup/"),
        ("/etc/passwd", "leaves warmup/"),
    ],
)
def test_data_file_errors(model_dir: Path, file: str, message: str) -> None:
    with pytest.raises(InvalidModelConfig, match=message):
        warmup_inputs(_config(FILE_CONFIG % (4, 2, file)), model_dir)


def test_bytes_data_file_with_wrong_count(model_dir: Path) -> None:
    (model_dir / "warmup" / "text").write_bytes(serialize_bytes_tensor(np.array([b"a"] * 3)))
    with pytest.raises(InvalidModelConfig, match=r"holds 3 element\(s\).*need 2 or 4"):
        warmup_inputs(_config(FILE_CONFIG % (4, 2, "one")), model_dir)
    (model_dir / "warmup" / "text").write_bytes(b"\x05\x00\x00\x00ab")
    with pytest.raises(InvalidModelConfig, match="declares 5 bytes"):
        warmup_inputs(_config(FILE_CONFIG % (4, 2, "one")), model_dir)


def test_no_warmup(tmp_path: Path) -> None:
    assert warmup_inputs(config_from_dict({}, name="m"), tmp_path) == []
