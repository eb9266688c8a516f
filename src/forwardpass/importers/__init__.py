"""Importers: a model trained elsewhere becomes a ready model-repository entry.

Each importer exports the model to ONNX, runs the original and the export on sample inputs,
refuses an export that differs beyond tolerance, and writes ``<repository>/<name>/`` with
``config.pbtxt``, ``<version>/model.onnx`` and, when known, ``labels.txt`` and
``tokenizer.json``. Frameworks: ONNX files (:func:`import_onnx`), scikit-learn
(:func:`import_sklearn`, extra ``sklearn``), PyTorch (``forwardpass.importers.torch``, extra
``torch``) and Hugging Face transformers (``forwardpass.importers.huggingface``). The torch
and Hugging Face modules import their frameworks lazily, inside their functions.
"""

from __future__ import annotations

from forwardpass.importers.entry import ImportResult, WrittenEntry, write_entry
from forwardpass.importers.onnx_file import import_onnx
from forwardpass.importers.sklearn import import_sklearn
from forwardpass.importers.verification import OutputCheck, Verification

__all__ = [
    "ImportResult",
    "OutputCheck",
    "Verification",
    "WrittenEntry",
    "import_onnx",
    "import_sklearn",
    "write_entry",
]
