"""Importing PyTorch models (extra ``torch``): TorchScript files or ``module.py:factory``.

The module is exported with the TorchScript-based exporter (``torch.onnx.export(...,
opset_version=17, dynamo=False)``; the dynamo exporter needs onnxscript) with a dynamic
leading (batch) dimension on every input and output, then run in eval mode under
``torch.no_grad`` and through ONNX Runtime on a batch of :data:`SAMPLE_BATCH` rows.

Loading a Python entry point runs that file, and TorchScript files carry code too: import
only what you trust. State dicts are read with ``weights_only=True``.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.errors import InvalidArgument, Unsupported
from forwardpass.importers.entry import ImportResult, save_entry
from forwardpass.importers.onnx_file import match_labels
from forwardpass.importers.verification import SAMPLE_BATCH, compare, run_onnx
from forwardpass.runtime.onnx import describe_onnx

__all__ = [
    "DEFAULT_ATOL",
    "InputShape",
    "import_torch",
    "load_module",
    "parse_input_shape",
    "quiet_export",
]

DEFAULT_ATOL = 1e-4
OPSET = 17
_DTYPES = ("float32", "float16", "float64", "int64", "int32", "bool")


@dataclass(frozen=True, slots=True)
class InputShape:
    """An input of the module: its name, example shape (leading dimension = batch), dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


def parse_input_shape(text: str) -> InputShape:
    """``name:1,3,224,224`` or ``name:1,16:int64`` (the first dimension is the batch)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise InvalidArgument(f"input shape {text!r}: write NAME:D0,D1,...[:DTYPE]")
    try:
        shape = tuple(int(d) for d in parts[1].split(","))
    except ValueError:
        raise InvalidArgument(f"input shape {text!r}: dimensions must be integers") from None
    if not shape or any(d < 1 for d in shape):
        raise InvalidArgument(f"input shape {text!r}: dimensions must be positive")
    dtype = parts[2] if len(parts) == 3 else "float32"
    if dtype not in _DTYPES:
        raise InvalidArgument(f"input shape {text!r}: dtype must be one of {', '.join(_DTYPES)}")
    return InputShape(parts[0], shape, dtype)


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise Unsupported(
            "importing PyTorch models needs torch: pip install 'forwardpass[torch]'"
        ) from exc
    return torch


def _entry_point(spec: str) -> Any:
    path_text, _, attribute = spec.rpartition(":")
    path = Path(path_text)
    if not path.is_file():
        raise InvalidArgument(f"{path}: no such file")
    module_name = f"_forwardpass_import_{uuid.uuid4().hex}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise InvalidArgument(f"{path} is not a Python module")
    module = importlib.util.module_from_spec(module_spec)
    # The file may import its neighbours.
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise InvalidArgument(f"running {path} failed: {exc}") from exc
    finally:
        sys.path.remove(str(path.parent.resolve()))
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise InvalidArgument(f"{path} has no callable {attribute!r}")
    try:
        return factory()
    except Exception as exc:
        raise InvalidArgument(f"{spec}() failed: {exc}") from exc


def load_module(source: str | Path, state_dict: Path | None = None) -> Any:
    """A module from a TorchScript file or ``path/module.py:factory`` (+ a state dict)."""
    torch = _torch()
    text = str(source)
    if ":" in text and text.rpartition(":")[0].endswith(".py"):
        module = _entry_point(text)
        if not isinstance(module, torch.nn.Module):
            raise InvalidArgument(f"{text} returned {type(module).__name__}, not an nn.Module")
        if state_dict is not None:
            try:
                weights = torch.load(state_dict, map_location="cpu", weights_only=True)
                if isinstance(weights, dict) and "state_dict" in weights:
                    weights = weights["state_dict"]
                module.load_state_dict(weights)
            except Exception as exc:  # missing keys, wrong shapes, unreadable files
                raise InvalidArgument(f"cannot load state dict {state_dict}: {exc}") from exc
        return module
    if state_dict is not None:
        raise InvalidArgument("--state-dict goes with a Python entry point (module.py:factory)")
    path = Path(text)
    if not path.is_file():
        raise InvalidArgument(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)  # jit is deprecated
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise InvalidArgument(
            f"{path} is not a TorchScript file ({exc}); for a plain module give "
            "module.py:factory and --state-dict"
        ) from exc


def quiet_export(torch: Any, module: Any, args: tuple[Any, ...], target: Path, **kw: Any) -> None:
    """``torch.onnx.export`` with the legacy exporter, silencing its own warnings only."""
    try:
        with warnings.catch_warnings():
            # The exporter announces its deprecation, and the tracer warns about Python
            # control flow it freezes; verification on other inputs is the real check.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=UserWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(module, args, str(target), opset_version=OPSET, dynamo=False, **kw)
    except Exception as exc:  # unsupported operators, tracing failures
        raise InvalidArgument(f"torch.onnx.export failed: {exc}") from exc


def _outputs(result: Any) -> list[Any]:
    if isinstance(result, tuple | list):
        return list(result)
    if isinstance(result, Mapping):
        return list(result.values())
    return [result]


def _samples(shapes: Sequence[InputShape], samples: Mapping[str, np.ndarray] | None) -> dict:
    if samples:
        missing = sorted({s.name for s in shapes} - set(samples))
        if missing:
            raise InvalidArgument(f"no sample for input(s) {missing}")
        return {s.name: np.asarray(samples[s.name], dtype=s.dtype) for s in shapes}
    rng = np.random.default_rng(0)
    out = {}
    for s in shapes:
        shape = (SAMPLE_BATCH, *s.shape[1:])
        if s.dtype.startswith("float"):
            out[s.name] = rng.standard_normal(shape).astype(s.dtype)
        elif s.dtype == "bool":
            out[s.name] = rng.random(shape) < 0.5
        else:
            out[s.name] = rng.integers(0, 10, size=shape).astype(s.dtype)
    return out


def import_torch(
    source: str | Path | Any,
    input_shapes: Sequence[InputShape | str],
    *,
    repository: Path,
    name: str,
    state_dict: Path | None = None,
    output_names: Sequence[str] = (),
    samples: Mapping[str, np.ndarray] | None = None,
    labels: Sequence[str] | None = None,
    labels_output: str | None = None,
    max_batch_size: int | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = 0.0,
    version: int | None = None,
) -> ImportResult:
    """Export a module (an ``nn.Module``, a TorchScript path or ``file.py:factory``)."""
    torch = _torch()
    module = source if isinstance(source, torch.nn.Module) else load_module(source, state_dict)
    shapes = [s if isinstance(s, InputShape) else parse_input_shape(s) for s in input_shapes]
    if not shapes:
        raise InvalidArgument("name the module's inputs: --input-shape NAME:1,3,224,224")
    inputs = _samples(shapes, samples)
    module.eval()
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(inputs[s.name])) for s in shapes)
    try:
        with torch.no_grad():
            results = _outputs(module(*tensors))
    except Exception as exc:
        raise InvalidArgument(f"the module fails on the sample inputs: {exc}") from exc
    if not all(isinstance(r, torch.Tensor) for r in results):
        raise InvalidArgument("the module must return a tensor, or a tuple/list/dict of tensors")
    names = list(output_names) or (
        ["output"] if len(results) == 1 else [f"output_{i}" for i in range(len(results))]
    )
    if len(names) != len(results):
        raise InvalidArgument(f"the module returns {len(results)} outputs, {len(names)} named")
    reference = {n: r.detach().numpy() for n, r in zip(names, results, strict=True)}
    with tempfile.TemporaryDirectory(prefix="forwardpass-import-") as tmp:
        model_file = Path(tmp) / "model.onnx"
        quiet_export(
            torch,
            module,
            tensors,
            model_file,
            input_names=[s.name for s in shapes],
            output_names=names,
            dynamic_axes={n: {0: "batch"} for n in [*(s.name for s in shapes), *names]},
        )
        verification = compare(reference, run_onnx(model_file, inputs), atol=atol, rtol=rtol)
        io = describe_onnx(model_file)
        labels_for = match_labels(io, labels, labels_output) if labels else None
        return save_entry(
            "torch",
            repository,
            name,
            model_file,
            verification,
            max_batch_size=max_batch_size,
            labels=labels,
            labels_for=labels_for,
            version=version,
        )
