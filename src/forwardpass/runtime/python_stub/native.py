"""The native way in: a plain class with ``setup()`` and a batch ``predict``, run as a
Triton Python model by an adapter, so it gets the same process, batching and failure handling.

A native class::

    class Doubler:
        inputs = {"x": ("FP32", [4])}        # name -> (datatype, dims without the batch axis)
        outputs = {"y": ("FP32", [4])}
        max_batch_size = 16                   # optional (default 8; 0: never batch)

        def setup(self):                      # optional; may take a `device` argument
            self.factor = 2

        def predict(self, x):                 # the batch: requests stacked along axis 0
            return x * self.factor            # an array, a tuple/dict of arrays, or lists

Without ``inputs``, the names of ``predict``'s parameters are the inputs and their type hints
the datatypes (``np.ndarray`` → FP32 ``[-1]``, ``float`` → FP64 ``[1]``, ``int`` → INT64
``[1]``, ``str``/``bytes`` → BYTES ``[1]``, ``bool`` → BOOL ``[1]``); without ``outputs``, one
output ``output`` typed from the return hint the same way.

Optional per-request hooks, as in LitServe: ``decode_request(inputs)`` turns one request's
dict of arrays into any value; ``predict`` then receives the list of them (one per request)
and returns one result per request; ``encode_response(result)`` turns one result into the
request's outputs. A failure in ``decode_request`` or ``encode_response`` fails that request
alone; a failure in ``predict`` fails its batch.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

__all__ = ["adapter_for", "declared_io"]

_DEFAULT_MAX_BATCH_SIZE = 8
_HINTS: dict[Any, tuple[str, list[int]]] = {
    np.ndarray: ("FP32", [-1]),
    float: ("FP64", [1]),
    int: ("INT64", [1]),
    str: ("BYTES", [1]),
    bytes: ("BYTES", [1]),
    bool: ("BOOL", [1]),
}


def _load(target: str) -> type:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise pb_utils.TritonModelException(
            f"parameter class must read 'module:Class', got {target!r}"
        )
    module = importlib.import_module(module_name)
    cls = getattr(module, attribute, None)
    if not isinstance(cls, type):
        raise pb_utils.TritonModelException(f"{module_name} has no class {attribute!r}")
    if not callable(getattr(cls, "predict", None)):
        raise pb_utils.TritonModelException(f"{target} defines no predict() method")
    return cls


def _specs(declared: Any, kind: str, cls: type) -> list[dict[str, Any]]:
    if isinstance(declared, dict):
        items = list(declared.items())
    else:
        raise pb_utils.TritonModelException(
            f"{cls.__name__}.{kind} must be a dict name -> (datatype, dims)"
        )
    specs = []
    for name, value in items:
        if isinstance(value, str):
            datatype, dims = value, [-1]
        else:
            try:
                datatype, dims = value
            except (TypeError, ValueError):
                raise pb_utils.TritonModelException(
                    f"{cls.__name__}.{kind}[{name!r}] must be (datatype, dims), got {value!r}"
                ) from None
        datatype = str(datatype).removeprefix("TYPE_")
        if datatype == "BYTES":
            datatype = "STRING"
        specs.append({"name": name, "data_type": f"TYPE_{datatype}", "dims": list(dims)})
    return specs


def _hint(cls: type, annotation: Any, what: str) -> tuple[str, list[int]]:
    found = _HINTS.get(annotation)
    if found is None:
        raise pb_utils.TritonModelException(
            f"{cls.__name__}: cannot tell the datatype of {what} from its type hint "
            f"{annotation!r}; declare the class attribute inputs/outputs"
        )
    return found


def declared_io(cls: type) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The inputs and outputs of a native class, in Triton's config form."""
    hooks = hasattr(cls, "decode_request")
    if getattr(cls, "inputs", None) is not None:
        inputs = _specs(cls.inputs, "inputs", cls)  # type: ignore[attr-defined]
    elif hooks:
        raise pb_utils.TritonModelException(
            f"{cls.__name__} has decode_request: declare its inputs as the class attribute inputs"
        )
    else:
        hints = typing.get_type_hints(cls.predict)  # type: ignore[attr-defined]
        params = [
            p
            for p in inspect.signature(cls.predict).parameters.values()  # type: ignore[attr-defined]
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        if not params:
            raise pb_utils.TritonModelException(f"{cls.__name__}.predict takes no inputs")
        inputs = []
        for p in params:
            datatype, dims = _hint(cls, hints.get(p.name), f"input {p.name!r}")
            inputs.append({"name": p.name, "data_type": f"TYPE_{datatype}", "dims": dims})
    if getattr(cls, "outputs", None) is not None:
        outputs = _specs(cls.outputs, "outputs", cls)  # type: ignore[attr-defined]
    else:
        hints = typing.get_type_hints(cls.predict)  # type: ignore[attr-defined]
        datatype, dims = _hint(cls, hints.get("return"), "predict's result")
        outputs = [{"name": "output", "data_type": f"TYPE_{datatype}", "dims": dims}]
    for spec in (*inputs, *outputs):
        if spec["data_type"] == "TYPE_BYTES":
            spec["data_type"] = "TYPE_STRING"
    return inputs, outputs


def adapter_for(target: str) -> type:
    """A ``TritonPythonModel`` class that serves the native class ``module:Class``."""
    cls = _load(target)

    class NativeModel(_Adapter):
        user_class = cls

    return NativeModel


class _Adapter:
    user_class: type

    @classmethod
    def auto_complete_config(cls, config: Any) -> Any:
        inputs, outputs = declared_io(cls.user_class)
        for spec in inputs:
            config.add_input(spec)
        for spec in outputs:
            config.add_output(spec)
        current = config.as_dict()
        if "max_batch_size" not in current:
            size = int(getattr(cls.user_class, "max_batch_size", _DEFAULT_MAX_BATCH_SIZE))
            config.set_max_batch_size(size)
            if size > 0:
                config.set_dynamic_batching()
        return config

    def initialize(self, args: dict[str, str]) -> None:
        import json

        config = json.loads(args["model_config"])
        self.batching = int(config.get("max_batch_size", 0)) > 0
        self.inputs = [s["name"] for s in config.get("input", [])]
        self.outputs = [
            (s["name"], pb_utils.triton_string_to_numpy(s["data_type"]), s["dims"])
            for s in config.get("output", [])
        ]
        self.model = self.user_class()
        self.decode = getattr(self.model, "decode_request", None)
        self.encode = getattr(self.model, "encode_response", None)
        setup = getattr(self.model, "setup", None)
        if setup is not None:
            params = [p for p in inspect.signature(setup).parameters.values()]
            if params and params[0].default is inspect.Parameter.empty:
                setup(args.get("model_instance_kind", "CPU").lower().replace("kind_", ""))
            else:
                setup()

    # ------------------------------------------------------------------ execute
    def execute(self, requests: list[Any]) -> list[Any]:
        if self.decode is not None:
            return self._execute_hooks(requests)
        if not self.batching:
            return [self._run([r])[0] for r in requests]
        return self._run(requests)

    def _arrays(self, request: Any) -> dict[str, np.ndarray]:
        found = {t.name(): t.as_numpy() for t in request.inputs()}
        return {name: found[name] for name in self.inputs if name in found}

    def _run(self, requests: list[Any]) -> list[Any]:
        """One predict call for the batch; its rows split back to the requests."""
        parts = [self._arrays(r) for r in requests]
        rows = [next(iter(p.values())).shape[0] if p and self.batching else 1 for p in parts]
        if len(parts) == 1:
            merged = parts[0]
        else:
            merged = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        result = self.model.predict(**merged)
        outputs = self._named(result, "predict()")
        responses = []
        if len(requests) == 1:
            return [pb_utils.InferenceResponse([pb_utils.Tensor(n, a) for n, a in outputs.items()])]
        total = sum(rows)
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != total:
                raise pb_utils.TritonModelException(
                    f"predict() returned {array.shape[0] if array.ndim else 'a scalar'} row(s) "
                    f"of output {name!r} for a batch of {total}"
                )
        offset = 0
        for count in rows:
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor(n, a[offset : offset + count]) for n, a in outputs.items()]
                )
            )
            offset += count
        return responses

    def _execute_hooks(self, requests: list[Any]) -> list[Any]:
        decode = self.decode
        assert decode is not None
        decoded: list[Any] = []
        failed: dict[int, str] = {}
        for index, request in enumerate(requests):
            try:
                decoded.append(decode(self._arrays(request)))
            except Exception as exc:
                failed[index] = f"decode_request failed: {type(exc).__name__}: {exc}"
        kept = [i for i in range(len(requests)) if i not in failed]
        results: list[Any] = []
        if decoded:
            produced = self.model.predict(decoded)
            results = list(produced)
            if len(results) != len(decoded):
                raise pb_utils.TritonModelException(
                    f"predict() returned {len(results)} result(s) for {len(decoded)} request(s)"
                )
        responses: list[Any] = [None] * len(requests)
        for index, message in failed.items():
            responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
        for index, result in zip(kept, results, strict=True):
            try:
                value = self.encode(result) if self.encode is not None else result
                outputs = self._named(value, "encode_response()", one_row=self.batching)
                responses[index] = pb_utils.InferenceResponse(
                    [pb_utils.Tensor(n, a) for n, a in outputs.items()]
                )
            except Exception as exc:
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
                )
        return responses

    def _named(self, value: Any, what: str, one_row: bool = False) -> dict[str, np.ndarray]:
        """A result as named arrays in the declared dtypes."""
        names = [n for n, _, _ in self.outputs]
        if isinstance(value, dict):
            unknown = set(value) - set(names)
            if unknown:
                raise pb_utils.TritonModelException(
                    f"{what} returned unknown output(s) {sorted(unknown)} (declared: {names})"
                )
            items = dict(value)
        elif len(names) > 1:
            if not isinstance(value, tuple | list) or len(value) != len(names):
                raise pb_utils.TritonModelException(
                    f"{what} must return {len(names)} outputs {names} as a tuple or dict"
                )
            items = dict(zip(names, value, strict=True))
        else:
            items = {names[0]: value}
        out: dict[str, np.ndarray] = {}
        for name, dtype, dims in self.outputs:
            if name not in items:
                continue
            array = np.asarray(items[name])
            target = np.dtype(dtype)
            if target == np.object_:
                if array.dtype != np.object_:
                    flat = [
                        x.encode() if isinstance(x, str) else x for x in array.reshape(-1).tolist()
                    ]
                    converted = np.empty(len(flat), dtype=np.object_)
                    converted[:] = flat
                    array = converted.reshape(array.shape)
            elif array.dtype != target:
                if array.dtype == np.object_ or not np.can_cast(array.dtype, target, "same_kind"):
                    raise pb_utils.TritonModelException(
                        f"{what}: output {name!r} has dtype {array.dtype}, declared "
                        f"{np.dtype(dtype).name}"
                    )
                array = array.astype(target)
            if one_row and array.ndim == len(dims):
                array = array[np.newaxis]
            out[name] = array
        return out
