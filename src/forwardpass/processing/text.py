"""Strings → token tensors with a Hugging Face ``tokenizers`` tokenizer.json.

One request's strings are encoded together (``encode_batch``) and padded to the longest of
them, rounded up to ``pad_to_multiple_of`` so that requests of similar length share a shape and
the batcher can merge them. Options: ``tokenizer`` (file in the model folder, default
``tokenizer.json``), ``max_length`` (default 256), ``truncation`` (default true; false makes an
over-long text a 400), ``max_bytes`` per text (default 65536), ``pad_to_multiple_of`` (default
16), and ``targets`` mapping roles ``input_ids``, ``attention_mask``, ``token_type_ids`` to
model input names (default: the roles' own names, where the model has them).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidArgument, InvalidModelConfig
from forwardpass.model_config import ModelConfig, TensorSpec
from forwardpass.processing.base import InputProcessor

__all__ = ["TextInput"]

_ROLES = ("input_ids", "attention_mask", "token_type_ids")


class TextInput(InputProcessor):
    """BYTES strings (one per row) → input_ids / attention_mask / token_type_ids."""

    def __init__(
        self, name: str, config: ModelConfig, model_dir: Path, options: Mapping[str, Any]
    ) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise InvalidModelConfig(
                f"text input {name!r} needs the tokenizers package: pip install tokenizers"
            ) from None
        opts = dict(options)
        file = model_dir / str(opts.pop("tokenizer", "tokenizer.json"))
        if not file.resolve().is_relative_to(model_dir.resolve()) or not file.is_file():
            raise InvalidModelConfig(f"text input {name!r}: tokenizer file {file.name} is missing")
        try:
            self.tokenizer = Tokenizer.from_file(str(file))
        except Exception as exc:
            raise InvalidModelConfig(
                f"text input {name!r}: cannot read {file.name}: {exc}"
            ) from exc
        self.max_length = int(opts.pop("max_length", 256))
        self.truncation = bool(opts.pop("truncation", True))
        self.max_bytes = int(opts.pop("max_bytes", 65536))
        self.multiple = max(1, int(opts.pop("pad_to_multiple_of", 16)))
        targets = dict(opts.pop("targets", {}))
        if opts:
            raise InvalidModelConfig(f"text input {name!r}: unknown option(s) {sorted(opts)}")
        self.roles: dict[str, TensorSpec] = {}
        for role in _ROLES:
            explicit = role in targets
            target = str(targets.pop(role, role))
            spec = config.input(target)
            if spec is not None:
                self.roles[role] = spec
            elif explicit:
                raise InvalidModelConfig(f"text input {name!r}: model has no input {target!r}")
        if targets:
            raise InvalidModelConfig(
                f"text input {name!r}: unknown target role(s) {sorted(targets)}"
            )
        if "input_ids" not in self.roles:
            raise InvalidModelConfig(f"text input {name!r}: the model has no input_ids input")
        if self.truncation:
            self.tokenizer.enable_truncation(self.max_length)
        else:
            self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.batching = config.batching
        self.inputs = (
            TensorSpec(name=name, datatype=DataType.BYTES, dims=(1,) if config.batching else (-1,)),
        )
        self.targets = tuple(spec.name for spec in self.roles.values())

    def __call__(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        (spec,) = self.inputs
        texts: list[str] = []
        for i, item in enumerate(arrays[spec.name].reshape(-1)):
            raw = item if isinstance(item, bytes | bytearray) else str(item).encode()
            if len(raw) > self.max_bytes:
                raise InvalidArgument(
                    f"input {spec.name!r}[{i}]: text is {len(raw)} bytes, over the "
                    f"{self.max_bytes}-byte limit"
                )
            try:
                text = bytes(raw).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidArgument(
                    f"input {spec.name!r}[{i}]: text is not UTF-8: {exc}"
                ) from None
            if not text.strip():
                raise InvalidArgument(f"input {spec.name!r}[{i}]: text is empty")
            texts.append(text)
        encodings = self.tokenizer.encode_batch(texts)
        longest = max(len(e.ids) for e in encodings)
        if not self.truncation and longest > self.max_length:
            raise InvalidArgument(
                f"input {spec.name!r}: a text has {longest} tokens, over max_length "
                f"{self.max_length}"
            )
        width = min(-(-longest // self.multiple) * self.multiple, max(self.max_length, longest))
        out: dict[str, np.ndarray] = {}
        rows = len(encodings)
        for role, target in self.roles.items():
            array = np.zeros((rows, width), dtype=target.datatype.numpy)
            for r, enc in enumerate(encodings):
                values = (
                    enc.ids
                    if role == "input_ids"
                    else (enc.attention_mask if role == "attention_mask" else enc.type_ids)
                )
                array[r, : len(values)] = values
            out[target.name] = array
        return out
