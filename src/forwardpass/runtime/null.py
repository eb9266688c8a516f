"""A backend that computes nothing: it lets the whole stack run without a model file.

Output ``i`` echoes input ``i`` (cast to the output's datatype); outputs without a matching
input are zeros shaped from the config. Parameters make it useful in tests:
``delay_ms`` sleeps per batch (simulates compute, releases the GIL like a real engine) and
``fail_value`` fails the whole batch when any numeric input contains that value.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np

from forwardpass.errors import InternalError, InvalidModelConfig
from forwardpass.runtime.base import Backend, NamedArrays

__all__ = ["NullBackend"]


class NullBackend(Backend):
    """Echo inputs to outputs; see the module docstring."""

    name = "null"
    inline_safe = True

    def _load(self) -> None:
        params = self.config.parameters
        try:
            self.delay = float(params.get("delay_ms", "0")) / 1000.0
            fail = params.get("fail_value")
            self.fail_value = float(fail) if fail is not None else None
        except ValueError as exc:
            raise InvalidModelConfig(f"null backend parameter: {exc}") from exc
        self.providers = ["null"]

    def _infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> NamedArrays:
        if self.delay:
            time.sleep(self.delay)
        arrays = list(inputs.values())
        if self.fail_value is not None:
            for array in arrays:
                if array.dtype.kind in "biuf" and np.any(array == self.fail_value):
                    raise InternalError(
                        f"null backend: input contains fail_value {self.fail_value}"
                    )
        batch = arrays[0].shape[0] if arrays and self.config.batching else None
        result: NamedArrays = {}
        names = [o.name for o in self.config.outputs]
        for name in outputs:
            spec = self.config.output(name)
            assert spec is not None
            index = names.index(name)
            dtype = spec.datatype.numpy
            if index < len(arrays):
                result[name] = arrays[index].astype(dtype, copy=True)
            else:
                dims = tuple(max(d, 1) for d in spec.dims)
                shape = ((batch,) if batch is not None else ()) + dims
                result[name] = np.zeros(shape, dtype=dtype)
        return result
