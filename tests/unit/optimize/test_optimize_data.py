"""Reading calibration and validation data in each accepted form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from forwardpass.errors import InvalidArgument
from forwardpass.optimize.data import load_labels, load_samples, synthesize
from forwardpass.repository import ModelRepository


@pytest.fixture
def entry(digits_repo: Path):
    return ModelRepository(digits_repo).read("digits")


def test_npz_with_labels(entry, digits_npz: Path) -> None:
    samples = load_samples(digits_npz, entry.config, limit=50)
    assert samples.arrays["image"].shape == (50, 1, 8, 8) and samples.real
    assert samples.labels is not None and len(samples.labels) == 50


def test_folder_of_npy_files_adds_the_sample_axis(entry, tmp_path: Path, digits_xy) -> None:
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "a.npy", digits_xy[0][0][None])  # one sample, no batch axis, float32
    np.save(folder / "b.npy", digits_xy[0][1:4, None].astype(np.float64))  # a batch, float64
    samples = load_samples(folder, entry.config)
    assert samples.arrays["image"].shape == (4, 1, 8, 8)
    assert samples.arrays["image"].dtype == np.float32


def test_image_folder_is_decoded_like_predict(entry, digits_repo: Path) -> None:
    samples = load_samples(digits_repo / "digits" / "samples", entry.config, model_dir=entry.path)
    assert samples.arrays["image"].shape == (10, 1, 8, 8)
    assert 0.0 <= samples.arrays["image"].min() and samples.arrays["image"].max() <= 1.0


def test_bad_data_is_explained(entry, tmp_path: Path) -> None:
    np.savez(tmp_path / "wrong.npz", pixels=np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(InvalidArgument, match=r"no array for input\(s\) \['image'\]"):
        load_samples(tmp_path / "wrong.npz", entry.config)
    np.save(tmp_path / "shape.npy", np.zeros((2, 1, 9, 9), np.float32))
    with pytest.raises(InvalidArgument, match=r"takes \[1, 8, 8\] per sample"):
        load_samples(tmp_path / "shape.npy", entry.config)


def test_labels_must_match_the_samples(entry, digits_npz: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "labels.npy", np.arange(3))
    samples = load_samples(digits_npz, entry.config, limit=5)
    with pytest.raises(InvalidArgument, match="3 labels for 5 validation samples"):
        samples.with_labels(load_labels(tmp_path / "labels.npy"))


def test_synthesized_inputs_are_marked(entry) -> None:
    samples = synthesize(entry.config, 4)
    assert not samples.real and "random inputs" in samples.source
    assert samples.arrays["image"].shape == (4, 1, 8, 8)


def test_synthesized_text_inputs_stay_in_range() -> None:
    from forwardpass.datatypes import DataType
    from forwardpass.model_config import ModelConfig, TensorSpec

    roles = ("input_ids", "attention_mask", "token_type_ids")
    config = ModelConfig(
        name="bert",
        max_batch_size=8,
        inputs=tuple(TensorSpec(name=n, datatype=DataType.INT64, dims=(-1,)) for n in roles),
        outputs=(TensorSpec(name="y", datatype=DataType.FP32, dims=(4,)),),
    )
    arrays = synthesize(config, 4).arrays
    # A BERT token-type table has two rows; ids and a full mask are what a sentence gives.
    assert np.all(arrays["token_type_ids"] == 0)
    assert np.all(arrays["attention_mask"] == 1)
    assert arrays["input_ids"].min() >= 0
