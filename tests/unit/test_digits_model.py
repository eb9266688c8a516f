"""The embedded default model: it loads, it is small, and it reads digits it never saw.

onnxruntime directly, no server: these pin the file shipped in the package.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

import forwardpass

DIGITS = Path(forwardpass.__file__).parent / "models" / "digits"
MODEL = DIGITS / "1" / "model.onnx"


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])


def _heldout() -> tuple[np.ndarray, np.ndarray]:
    """The held-out split TRAINING.json records, rebuilt from scikit-learn's bundled data."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    split = json.loads((DIGITS / "TRAINING.json").read_text())["split"]
    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    _, x_test, _, y_test = train_test_split(
        images,
        digits.target,
        test_size=split["test_fraction"],
        random_state=split["random_state"],
        stratify=digits.target,
    )
    return x_test, y_test


def test_files_and_signature(session: ort.InferenceSession) -> None:
    assert MODEL.stat().st_size < 100_000  # tiny by design
    (image,) = session.get_inputs()
    (probabilities,) = session.get_outputs()
    assert (image.name, image.type) == ("image", "tensor(float)")
    assert image.shape[1:] == [1, 8, 8] and not isinstance(image.shape[0], int)
    assert probabilities.name == "probabilities" and probabilities.shape[1:] == [10]
    labels = (DIGITS / "labels.txt").read_text().splitlines()
    assert labels == [str(d) for d in range(10)]
    config = (DIGITS / "config.pbtxt").read_text()
    for line in ('name: "digits"', "max_batch_size: 64", 'label_filename: "labels.txt"'):
        assert line in config


def test_heldout_accuracy(session: ort.InferenceSession) -> None:
    x_test, y_test = _heldout()
    assert len(y_test) == 360
    probs = session.run(["probabilities"], {"image": x_test})[0]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)  # softmax in the graph
    accuracy = float(np.mean(probs.argmax(axis=1) == y_test))
    assert accuracy >= 0.97
    recorded = json.loads((DIGITS / "TRAINING.json").read_text())["heldout_accuracy"]
    assert accuracy == pytest.approx(recorded, abs=1e-6)


def test_batch_of_one_matches_the_batch(session: ort.InferenceSession) -> None:
    x_test, _ = _heldout()
    batch = session.run(None, {"image": x_test[:5]})[0]
    single = np.concatenate([session.run(None, {"image": x_test[i : i + 1]})[0] for i in range(5)])
    np.testing.assert_allclose(batch, single, atol=1e-6)


def test_sample_scans_classify_after_invert_and_downscale(session: ort.InferenceSession) -> None:
    samples = sorted((DIGITS / "samples").glob("digit_*.png"))
    assert len(samples) == 10
    batch, labels = [], []
    for path in samples:
        with Image.open(path) as picture:
            assert picture.size == (64, 64)
            gray = np.asarray(picture.convert("L"), dtype=np.float32) / 255.0
            small = picture.convert("L").resize((8, 8), Image.Resampling.BOX)
        # Black ink on white paper, as a scan looks: the corners are background.
        assert gray[0, 0] > 0.9 and gray.min() < 0.3
        batch.append(1.0 - np.asarray(small, dtype=np.float32)[None] / 255.0)
        labels.append(int(path.stem.split("_")[1]))
    assert sorted(labels) == list(range(10))
    probs = session.run(None, {"image": np.stack(batch)})[0]
    assert list(probs.argmax(axis=1)) == labels
