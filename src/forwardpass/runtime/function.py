"""A backend whose "model" is a built-in Python function: the glue steps of a pipeline.

Some pipelines need work between two networks that is neither a network nor per-request
processing: turning a text-detection map into cropped text lines, for example. Such a step is
a model in the repository with ``backend: "function"`` and the parameter ``function`` naming a
registered function (which also gets parameter ``model_dir``, its version folder); it is
served, described and scheduled like any other model, so an ensemble can call it. Functions
take the batch's named arrays and the model's string parameters and return named arrays. One
that changes the number of rows (one image in, one row per text line out) must be served with
``max_batch_size: 0``, so requests are never merged.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from forwardpass.errors import InvalidModelConfig
from forwardpass.runtime.base import Backend, NamedArrays

__all__ = ["FUNCTIONS", "Function", "FunctionBackend"]

Function = Callable[[Mapping[str, np.ndarray], Mapping[str, str]], NamedArrays]

#: Registered functions: name → "module:attribute", imported when a model first uses one.
FUNCTIONS: dict[str, str] = {
    "ocr_detect_crop": "forwardpass.processing.ocr:detect_and_crop",
    "ocr_orient": "forwardpass.processing.ocr:orient_crops",
    "image_pyramid": "forwardpass.processing.pyramid:image_pyramid",
    "mtcnn_propose": "forwardpass.processing.faces:propose",
    "mtcnn_refine": "forwardpass.processing.faces:refine",
    "mtcnn_faces": "forwardpass.processing.faces:faces",
    "speech_segment": "forwardpass.processing.utterances:speech_segment",
}


def resolve(name: str) -> Function:
    target = FUNCTIONS.get(name)
    if target is None:
        raise InvalidModelConfig(
            f"unknown function {name!r} (registered: {', '.join(sorted(FUNCTIONS))})"
        )
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidModelConfig(f"function {name!r} cannot be imported: {exc}") from exc
    function: Function = getattr(module, attribute)
    return function


class FunctionBackend(Backend):
    """Calls the registered function named by the ``function`` parameter."""

    name = "function"

    def _load(self) -> None:
        name = self.config.parameters.get("function", "")
        if not name:
            raise InvalidModelConfig(
                f"model {self.config.name!r}: backend 'function' needs parameter 'function'"
            )
        self.function = resolve(name)
        # A function may read files of its own version folder (a VAD graph, say).
        self.parameters = {**self.config.parameters, "model_dir": str(self.version_dir)}
        self.providers = [f"function:{name}"]

    def _infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> NamedArrays:
        result = self.function(inputs, self.parameters)
        return {name: result[name] for name in outputs if name in result}
