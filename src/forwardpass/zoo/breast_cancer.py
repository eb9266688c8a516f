"""``breast-cancer``: a tabular classifier trained at build time, named columns in.

Data: scikit-learn's bundled Wisconsin diagnostic breast cancer set (569 rows, 30 numeric
features, classes malignant / benign; no download). A stratified 75/25 split with a fixed
seed; ``StandardScaler`` + ``LogisticRegression`` fitted on the training rows; the held-out
accuracy is recorded in ``TRAINING.json`` beside the model.

The scaler is baked into the ONNX graph (skl2onnx converts the whole pipeline) rather than
kept in a ``scaler.json`` for tabular processing: the model file alone then gives the right
answer to any client, the importer verifies scaling and classifier together against
scikit-learn in one comparison, and there is one artefact to version instead of two that
must agree. Tabular processing only gathers the 30 named FP32 columns (``mean_radius`` ...,
the dataset's names in snake case) into the model's ``input`` row.

Answers: ``probabilities`` ``[malignant, benign]`` (labels file, so Triton's classification
extension works), ``diagnosis`` (the label) and the model's own ``label`` (class index).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.zoo.registry import Built, Recipe, processing_parameter, provenance

__all__ = ["CLASSES", "RECIPE", "SEED", "columns", "dataset", "processing"]

SEED = 20240607
TEST_FRACTION = 0.25
#: load_breast_cancer's target: 0 is malignant, 1 benign.
CLASSES = ("malignant", "benign")


def columns(feature_names: Any) -> list[str]:
    """The dataset's feature names as input names: ``mean radius`` → ``mean_radius``."""
    return [str(n).strip().replace(" ", "_") for n in feature_names]


def dataset() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features float64 [569, 30], targets int [569], column names)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return np.asarray(data.data), np.asarray(data.target), columns(data.feature_names)


def processing(names: list[str]) -> dict[str, Any]:
    """The processing declaration for these column names."""
    return {
        "inputs": [{"kind": "tabular", "to": "input", "columns": names}],
        "outputs": [
            # Re-declared so it stays visible: a consumed model output is not passed on.
            {"name": "probabilities", "from": "probabilities", "steps": []},
            {"name": "diagnosis", "from": "probabilities", "steps": ["label"]},
        ],
    }


def _fit(x: np.ndarray, y: np.ndarray) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    with warnings.catch_warnings():
        # Keep a future scikit-learn's parameter-default announcements out of the build.
        warnings.simplefilter("ignore", category=FutureWarning)
        return pipeline.fit(x, y)


def build(repository: Path, name: str) -> Built:
    """Train, export with skl2onnx (through the importer), write entry ``name``."""
    from sklearn.model_selection import train_test_split

    from forwardpass.importers.entry import MODEL_FILE, save_entry
    from forwardpass.importers.sklearn import import_sklearn
    from forwardpass.importers.verification import run_onnx

    x, y, names = dataset()
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SEED, stratify=y
    )
    pipeline = _fit(x_train, y_train)
    accuracy = float((pipeline.predict(x_test) == y_test).mean())
    train_accuracy = float((pipeline.predict(x_train) == y_train).mean())
    held_out = x_test.astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="forwardpass-zoo-") as tmp:
        # The importer converts and verifies on the held-out rows; its entry lacks the
        # processing declaration and class names, so the file is re-written here.
        scratch = import_sklearn(pipeline, repository=Path(tmp), name=name, sample=held_out)
        exported = scratch.entry.folder / str(scratch.entry.version) / MODEL_FILE
        onnx_label = run_onnx(exported, {"input": held_out})["label"]
        onnx_accuracy = float((onnx_label.reshape(-1) == y_test).mean())
        training = {
            "model": name,
            "dataset": "sklearn.datasets.load_breast_cancer (569 rows, 30 features, 2 classes)",
            "classes": {str(i): c for i, c in enumerate(CLASSES)},
            "estimator": "StandardScaler + LogisticRegression(C=1.0, lbfgs), scaler in the graph",
            "split": {
                "method": "sklearn.model_selection.train_test_split, stratified",
                "test_fraction": TEST_FRACTION,
                "random_state": SEED,
                "train_size": len(y_train),
                "test_size": len(y_test),
            },
            "train_accuracy": round(train_accuracy, 6),
            "heldout_accuracy": round(accuracy, 6),
            "heldout_accuracy_onnx": round(onnx_accuracy, 6),
            "onnx_vs_sklearn": scratch.verification.summary(),
        }
        save_entry(
            "sklearn",
            repository,
            name,
            exported,
            scratch.verification,
            labels=list(CLASSES),
            labels_for="probabilities",
            parameters=processing_parameter(processing(names)),
            files={
                "TRAINING.json": (json.dumps(training, indent=2) + "\n").encode(),
                "ZOO.json": provenance(RECIPE, verification=scratch.verification.summary()),
            },
        )
    return Built(
        (
            f"held-out accuracy {accuracy:.4f} (ONNX {onnx_accuracy:.4f}) on {len(y_test)} rows",
            f"ONNX vs scikit-learn: {scratch.verification.summary()}",
        )
    )


RECIPE = Recipe(
    name="breast-cancer",
    task="tabular classification, 30 named columns",
    summary="StandardScaler + LogisticRegression trained at build time on load_breast_cancer",
    source="trained from scikit-learn's bundled load_breast_cancer (no download)",
    license="BSD-3-Clause (scikit-learn and its bundled dataset)",
    modules=("sklearn", "skl2onnx"),
    pip="pip install 'scikit-learn>=1.4' 'skl2onnx>=1.16'",
    build=build,
    distributions=("scikit-learn", "skl2onnx"),
)
