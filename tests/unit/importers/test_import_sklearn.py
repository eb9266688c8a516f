"""scikit-learn estimators and pipelines → repository entries that serve the same probabilities."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("skl2onnx")

from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from forwardpass.errors import InvalidArgument
from forwardpass.importers import import_sklearn
from forwardpass.repository import ModelRepository


# The model's own predict (below) warns that the arrays carry no column names.
@pytest.mark.filterwarnings("ignore:X does not have valid feature names:UserWarning")
def test_logistic_regression_with_feature_names(tmp_path: Path, serve: Any) -> None:
    data = load_breast_cancer()
    # Newton-Cholesky converges in ~10 iterations on these unscaled features; lbfgs needed
    # ~2300 (tens of seconds) for the same fit and accuracy.
    model = LogisticRegression(solver="newton-cholesky").fit(data.data, data.target)
    # Fitted on a DataFrame it would carry these; pandas is not needed to test it.
    model.feature_names_in_ = np.array(data.feature_names, dtype=object)
    result = import_sklearn(model, repository=tmp_path, name="cancer", sample=data.data)

    assert result.verification.ok
    assert result.verification.samples == len(data.data)
    checks = {c.name: c for c in result.verification.outputs}
    assert checks["probabilities"].max_abs_diff < 1e-4
    assert checks["label"].exact and checks["label"].max_abs_diff == 0
    config = result.config
    assert config.max_batch_size == 64
    assert [(i.name, i.dims) for i in config.inputs] == [("input", (30,))]
    assert config.output("probabilities").label_filename == "labels.txt"  # type: ignore[union-attr]
    assert config.parameters["feature_names"].split(",") == list(data.feature_names)
    assert (tmp_path / "cancer" / "labels.txt").read_text() == "0\n1\n"
    assert ModelRepository(tmp_path).read("cancer").labels["probabilities"] == ("0", "1")

    x = data.data[:5].astype(np.float32)
    served = serve(tmp_path, "cancer", {"input": x})
    np.testing.assert_allclose(served["probabilities"], model.predict_proba(x), atol=1e-4)
    np.testing.assert_array_equal(served["label"], model.predict(x))


def test_pipeline_from_a_pickle_file_gets_the_next_version(tmp_path: Path, serve: Any) -> None:
    iris = load_iris()
    pipeline = make_pipeline(StandardScaler(), MLPClassifier(max_iter=1500, random_state=0))
    pipeline.fit(iris.data, iris.target_names[iris.target])  # string classes
    path = tmp_path / "iris.pkl"
    path.write_bytes(pickle.dumps(pipeline))
    repo = tmp_path / "repo"

    first = import_sklearn(path, repository=repo, name="iris", sample=iris.data)
    second = import_sklearn(path, repository=repo, name="iris")  # synthesized rows

    assert (first.entry.version, second.entry.version) == (1, 2)
    assert first.verification.max_abs_diff < 1e-4 and second.verification.ok
    assert any("synthesized" in note for note in second.notes)
    assert (repo / "iris" / "labels.txt").read_text().split() == list(iris.target_names)
    served = serve(repo, "iris", {"input": iris.data[:3].astype(np.float32)})
    np.testing.assert_allclose(
        served["probabilities"], pipeline.predict_proba(iris.data[:3]), atol=1e-4
    )
    labels = [v.decode() if isinstance(v, bytes) else v for v in served["label"].ravel()]
    assert labels == list(pipeline.predict(iris.data[:3]))


def test_regressor(tmp_path: Path) -> None:
    x, y = load_diabetes(return_X_y=True)
    result = import_sklearn(LinearRegression().fit(x, y), repository=tmp_path, name="d", sample=x)
    assert [c.name for c in result.verification.outputs] == ["variable"]
    assert result.verification.ok
    assert not (tmp_path / "d" / "labels.txt").exists()


def test_a_mismatch_beyond_tolerance_writes_nothing(tmp_path: Path) -> None:
    iris = load_iris()
    model = LogisticRegression(max_iter=1000).fit(iris.data, iris.target)
    with pytest.raises(InvalidArgument, match="does not match the original"):
        import_sklearn(model, repository=tmp_path, name="iris", sample=iris.data, atol=0, rtol=0)
    assert list(tmp_path.iterdir()) == []
