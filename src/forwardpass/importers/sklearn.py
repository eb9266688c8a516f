"""Importing scikit-learn estimators and pipelines with skl2onnx (extra ``sklearn``).

The model takes one ``input`` (float32, ``[batch, features]``). A classifier gives
``label`` (its predicted class) and ``probabilities`` (``[batch, classes]``, no ZipMap, with
``labels.txt`` from ``classes_``); a regressor gives ``variable``. Column names the estimator
was fitted with (``feature_names_in_``) are recorded in the config parameter
``feature_names`` as a comma-separated list, for tabular preprocessing to use.

Estimators arrive pickled (``.pkl``, ``.pickle``, ``.joblib``). Unpickling runs code from the
file: import only files you trust.
"""

from __future__ import annotations

import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.errors import InvalidArgument, Unsupported
from forwardpass.importers.entry import ImportResult, save_entry
from forwardpass.importers.verification import SAMPLE_BATCH, compare, run_onnx

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "PICKLE_WARNING",
    "import_sklearn",
    "load_estimator",
    "sample_from_file",
]

#: skl2onnx computes in float32, scikit-learn in float64.
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4
#: ONNX opsets the exported graph targets (ONNX Runtime >= 1.14 runs both).
_OPSETS = {"": 17, "ai.onnx.ml": 3}
PICKLE_WARNING = "loading a pickled estimator runs code from the file: import only files you trust"
_SYNTHESIZED_ROWS = 64


def load_estimator(path: Path) -> Any:
    """Unpickle an estimator from ``path`` (``.joblib`` with joblib). Runs code: trust it."""
    if not path.is_file():
        raise InvalidArgument(f"{path}: no such file")
    try:
        if path.suffix == ".joblib":
            import joblib

            return joblib.load(path)
        with path.open("rb") as handle:
            return pickle.load(handle)  # documented: trusted files only
    except Exception as exc:  # unpickling can raise anything
        raise InvalidArgument(f"cannot load an estimator from {path}: {exc}") from exc


def _final_step(estimator: Any) -> Any:
    while hasattr(estimator, "steps"):
        estimator = estimator.steps[-1][1]
    return estimator


def _features(estimator: Any, features: int | None, sample: np.ndarray | None) -> int:
    if sample is not None:
        if sample.ndim != 2:
            raise InvalidArgument(f"sample data must be 2-D [rows, features], got {sample.shape}")
        return int(sample.shape[1])
    if features is not None:
        return features
    n = getattr(estimator, "n_features_in_", None)
    if n is None:
        raise InvalidArgument("the estimator does not say how many features it takes: --features")
    return int(n)


def _feature_names(estimator: Any, notes: list[str]) -> dict[str, str]:
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        return {}
    names = [str(n) for n in names]
    if any("," in n for n in names):
        notes.append("feature names contain commas and were not recorded")
        return {}
    notes.append(f"recorded {len(names)} feature names in parameter feature_names")
    return {"feature_names": ",".join(names)}


def _convert(estimator: Any, features: int, classifier: bool) -> bytes:
    try:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType
    except ImportError as exc:
        raise Unsupported(
            "importing scikit-learn models needs skl2onnx: pip install 'forwardpass[sklearn]'"
        ) from exc
    try:
        with warnings.catch_warnings():
            # skl2onnx warns about opset choices and deprecated sklearn attributes.
            warnings.simplefilter("ignore", category=UserWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            model = convert_sklearn(
                estimator,
                initial_types=[("input", FloatTensorType([None, features]))],
                # Probabilities as one [batch, classes] tensor rather than a list of maps.
                options={"zipmap": False} if classifier else None,
                target_opset=_OPSETS,
            )
    except Exception as exc:  # skl2onnx raises RuntimeError, NotImplementedError, ...
        raise InvalidArgument(f"skl2onnx cannot convert {type(estimator).__name__}: {exc}") from exc
    return bytes(model.SerializeToString())


def _reference(estimator: Any, x: np.ndarray, classifier: bool) -> dict[str, np.ndarray]:
    with warnings.catch_warnings():
        # A model fitted on a DataFrame warns when given an array without column names.
        warnings.filterwarnings("ignore", message=".*feature names.*", category=UserWarning)
        # scikit-learn in float64 on the float32 values the ONNX model sees.
        x64 = x.astype(np.float64)
        if classifier:
            return {
                "label": np.asarray(estimator.predict(x64)),
                "probabilities": np.asarray(estimator.predict_proba(x64)),
            }
        prediction = np.asarray(estimator.predict(x64), dtype=np.float64)
        return {"variable": prediction.reshape(len(x), -1)}


def import_sklearn(
    estimator: Any,
    *,
    repository: Path,
    name: str,
    features: int | None = None,
    sample: np.ndarray | None = None,
    max_batch_size: int | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    version: int | None = None,
) -> ImportResult:
    """Export a fitted estimator (or a path to a pickled one) and write it as model ``name``.

    ``sample`` (2-D, e.g. the training data) is what verification runs on; without it,
    standard-normal rows are synthesized for ``features`` (default: ``n_features_in_``).
    """
    if isinstance(estimator, str | Path):
        estimator = load_estimator(Path(estimator))
    if not hasattr(estimator, "predict"):
        raise InvalidArgument(f"{type(estimator).__name__} is not a scikit-learn estimator")
    notes: list[str] = []
    n = _features(estimator, features, sample)
    if sample is None:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((_SYNTHESIZED_ROWS, n)).astype(np.float32)
        notes.append(f"verified on {len(x)} synthesized rows; pass sample data for real ones")
    else:
        x = np.asarray(sample, dtype=np.float32)
        if len(x) < SAMPLE_BATCH:
            raise InvalidArgument(f"give at least {SAMPLE_BATCH} sample rows")
    final = _final_step(estimator)
    classifier = hasattr(final, "classes_")
    if classifier and not hasattr(estimator, "predict_proba"):
        raise InvalidArgument(
            f"{type(final).__name__} gives no probabilities (predict_proba); fit it so it does, "
            "for example SVC(probability=True)"
        )
    onnx_bytes = _convert(estimator, n, classifier)
    try:
        reference = _reference(estimator, x, classifier)
    except Exception as exc:  # the user's estimator: anything can go wrong
        raise InvalidArgument(f"the estimator fails on the sample data: {exc}") from exc
    verification = compare(reference, run_onnx(onnx_bytes, {"input": x}), atol=atol, rtol=rtol)
    labels = [str(c) for c in final.classes_] if classifier else None
    with tempfile.TemporaryDirectory(prefix="forwardpass-import-") as tmp:
        model_file = Path(tmp) / "model.onnx"
        model_file.write_bytes(onnx_bytes)
        return save_entry(
            "sklearn",
            repository,
            name,
            model_file,
            verification,
            max_batch_size=max_batch_size,
            labels=labels,
            labels_for="probabilities" if classifier else None,
            parameters=_feature_names(estimator, notes),
            version=version,
            notes=notes,
        )


def _numeric(line: str) -> bool:
    try:
        [float(field) for field in line.split(",")]
    except ValueError:
        return False
    return True


def sample_from_file(path: Path) -> np.ndarray:
    """Sample rows from ``.npy`` or ``.csv`` (numeric, an optional header line)."""
    try:
        if path.suffix == ".csv":
            first = path.read_text(encoding="utf-8").partition("\n")[0]
            skip = 0 if _numeric(first) else 1  # a header line of column names
            return np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2, dtype=np.float32)
        return np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read sample data {path}: {exc}") from exc
