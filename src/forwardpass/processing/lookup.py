"""Ids → rows: a client's ids (a user id, a product code) looked up in a vocabulary file.

Declared as ``{name: user_id, kind: lookup, to: user, vocabulary: users.txt}``: the client
sends BYTES ids (dims ``[1]``), the model input ``to`` (an integer tensor, dims ``[1]``)
receives each id's row, the line number of the id in the vocabulary file (a UTF-8 file in
the model folder, one distinct id per line). An id the vocabulary lacks is a
:class:`~forwardpass.errors.NotFound` (404 / NOT_FOUND) naming it, unless the option
``fallback`` names a vocabulary entry to use instead (a "popular items" row, say).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.datatypes import DataType
from forwardpass.errors import InvalidArgument, InvalidModelConfig, NotFound
from forwardpass.model_config import ModelConfig, TensorSpec
from forwardpass.processing.base import InputProcessor

__all__ = ["LookupInput"]

_INTEGERS = (DataType.INT32, DataType.INT64, DataType.UINT32, DataType.UINT64)


class LookupInput(InputProcessor):
    """BYTES ids [N,1] → their vocabulary rows in model input ``to`` [N,1]."""

    def __init__(
        self, name: str, config: ModelConfig, model_dir: Path, options: Mapping[str, Any]
    ) -> None:
        opts = dict(options)
        where = f"lookup input {name!r}"
        target = config.input(str(opts.pop("to", "")))
        if target is None:
            raise InvalidModelConfig(f"{where}: 'to' must name a model input")
        if target.datatype not in _INTEGERS or target.dims not in ((1,), (-1,)):
            raise InvalidModelConfig(
                f"{where}: model input {target.name!r} must be an integer tensor of dims [1], "
                f"got {target.datatype.value} {list(target.dims)}"
            )
        file = opts.pop("vocabulary", None)
        if not isinstance(file, str) or not file:
            raise InvalidModelConfig(f"{where}: 'vocabulary' must name a file in the model folder")
        path = model_dir / file
        if not path.resolve().is_relative_to(model_dir.resolve()) or not path.is_file():
            raise InvalidModelConfig(f"{where}: vocabulary file {file} is missing")
        try:
            ids = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidModelConfig(f"{where}: cannot read {file}: {exc}") from None
        self.rows = {value: row for row, value in enumerate(ids)}
        if len(self.rows) != len(ids):
            raise InvalidModelConfig(f"{where}: {file} lists an id twice")
        fallback = opts.pop("fallback", None)
        if fallback is not None and str(fallback) not in self.rows:
            raise InvalidModelConfig(f"{where}: fallback {fallback!r} is not in {file}")
        if opts:
            raise InvalidModelConfig(f"{where}: unknown option(s) {sorted(opts)}")
        self.fallback = None if fallback is None else self.rows[str(fallback)]
        self.name = name
        self.target = target
        self.inputs = (TensorSpec(name=name, datatype=DataType.BYTES, dims=(1,)),)
        self.targets = (target.name,)

    def __call__(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        given = arrays[self.name]
        rows = np.empty(given.size, dtype=np.int64)
        for i, raw in enumerate(given.reshape(-1)):
            try:
                key = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            except UnicodeDecodeError:
                raise InvalidArgument(f"input {self.name!r}: an id is not UTF-8 text") from None
            row = self.rows.get(key, self.fallback)
            if row is None:
                raise NotFound(f"input {self.name!r}: unknown id {key!r}")
            rows[i] = row
        shape = given.shape if given.ndim else (1,)
        return {self.target.name: rows.reshape(shape).astype(self.target.datatype.numpy)}
