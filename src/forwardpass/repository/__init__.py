"""The model repository: reading model folders, their configs and versions.

Triton's layout and ``config.pbtxt`` read unchanged; ``config.yaml`` is the native form with
the same keys; a model without a config is described from its ONNX file. The engine owns
loading and unloading and calls :class:`ModelRepository` to learn what to load.
"""

from __future__ import annotations

from forwardpass.repository.completion import complete_config
from forwardpass.repository.config_io import config_from_dict
from forwardpass.repository.config_json import config_to_dict
from forwardpass.repository.pbtxt import parse_pbtxt
from forwardpass.repository.repository import (
    CONFIG_FILES,
    ModelEntry,
    ModelRepository,
    load_config_file,
)
from forwardpass.repository.validation import validate_config
from forwardpass.repository.warmup import warmup_inputs

__all__ = [
    "CONFIG_FILES",
    "ModelEntry",
    "ModelRepository",
    "complete_config",
    "config_from_dict",
    "config_to_dict",
    "load_config_file",
    "parse_pbtxt",
    "validate_config",
    "warmup_inputs",
]
