"""PyTorch backend: TorchScript files (Triton's ``pytorch_libtorch``) and torch.export programs.

Selected by ``platform: "pytorch_libtorch"`` or ``backend: "pytorch"``. The model file is
``default_model_filename`` (``model.pt`` unless the config says otherwise) and is read as:

* TorchScript (``torch.jit.load``), the default;
* a torch.export program (``torch.export.load(...).module()``) when the file name ends in
  ``.pt2`` or the config sets ``parameters { key: "MODEL_FORMAT" value: { string_value:
  "torch_export" } }`` (``"torchscript"`` forces the other way).

Inputs reach ``forward()`` by Triton's naming conventions, decided once at load:

1. ``forward`` takes one ``Dict[str, Tensor]``: the inputs are passed as that dict, keyed by
   their config names;
2. every config input name is an argument name of ``forward``: passed by name;
3. every config input name is ``<anything>__<index>`` (``INPUT__0``) with indices 0..n-1:
   passed by position ``index``;
4. otherwise: passed by position in config order (logged, as Triton does).

Outputs: when every config output name is ``<anything>__<index>``, output ``index`` of the tuple
(or list) ``forward`` returns; otherwise config order. A ``forward`` returning a single tensor
has one output; one returning a dict is read by config output name (Triton's libtorch backend
has no dict outputs; this is ours). Datatypes are checked exactly against the config: no silent
casts. BF16 travels as ``uint16`` bit patterns and is reinterpreted, never rounded.

Triton's parameters, where they mean something in Python:

* ``INFERENCE_MODE`` (default true, as in recent Triton): ``torch.inference_mode``; false
  runs under ``torch.no_grad``.
* ``DISABLE_OPTIMIZED_EXECUTION``: ``torch.jit.optimized_execution(False)`` per call
  (thread-local, so it stays per model).
* ``INTRA_OP_THREAD_COUNT``, ``INTER_OP_THREAD_COUNT``, ``ENABLE_JIT_EXECUTOR``,
  ``ENABLE_JIT_PROFILING``, ``ENABLE_TENSOR_FUSER``, ``DISABLE_CUDNN``: PyTorch keeps these per
  process, not per model or instance. The first model that sets one applies it; a later model
  asking for a different value is logged as a warning and runs with the value in force
  (Triton's documented behaviour for the thread counts). Instances of one model agree by
  construction.
* ``ENABLE_NVFUSER``: NVFuser is no longer part of PyTorch; logged and ignored (and it never
  applied on CPU). ``ENABLE_WEIGHT_SHARING``: logged; each instance loads its own copy.
* ``ENABLE_CACHE_CLEANING``: ``torch.cuda.empty_cache()`` after every batch on a GPU instance;
  no effect on CPU.

Other keys are ignored, as Triton's backends (and our ONNX backend) ignore them.

Devices follow ``instance_group``: ``KIND_CPU`` on CPU; ``KIND_GPU`` on ``cuda:<gpu>`` (the
group's ``gpus`` in turn, 0 when unset), and an error when this torch build sees no CUDA device;
``KIND_AUTO`` on GPU 0 when CUDA is available, else CPU; ``KIND_MODEL`` where the file put it.

torch is an optional extra and is imported here lazily: without it a PyTorch model is
UNAVAILABLE with :data:`INSTALL_HINT` as its reason.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import logging
import re
import threading
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from forwardpass.datatypes import DataType
from forwardpass.errors import (
    ForwardpassError,
    InternalError,
    InvalidArgument,
    InvalidModelConfig,
    Unsupported,
)
from forwardpass.model_config import ModelConfig, TensorSpec
from forwardpass.runtime.base import Backend, BackendIO, NamedArrays
from forwardpass.runtime.parameters import bool_param, int_param

__all__ = [
    "INSTALL_HINT",
    "PyTorchBackend",
    "check_datatypes",
    "check_devices",
    "check_file",
    "describe_export",
    "model_format",
    "require_torch",
]

log = logging.getLogger("forwardpass.runtime.pytorch")

#: The reason a PyTorch model is UNAVAILABLE when torch is not installed (copyable as is).
INSTALL_HINT = (
    "PyTorch is not installed, and this model needs it (backend 'pytorch'). Install the extra: "
    "pip install 'forwardpass[torch]'   (CPU-only wheel: pip install torch==2.13.0 "
    "--index-url https://download.pytorch.org/whl/cpu)"
)

# Protocol datatypes libtorch has a tensor type for, by torch attribute name (so a config can
# be checked without importing torch). UINT16/32/64 have no full tensor support in torch and
# BYTES no tensor at all.
_TORCH_DTYPES: dict[DataType, str] = {
    DataType.BOOL: "bool",
    DataType.UINT8: "uint8",
    DataType.INT8: "int8",
    DataType.INT16: "int16",
    DataType.INT32: "int32",
    DataType.INT64: "int64",
    DataType.FP16: "float16",
    DataType.BF16: "bfloat16",
    DataType.FP32: "float32",
    DataType.FP64: "float64",
}
_NAMED_INDEX = re.compile(r"^(.+)__(\d+)$")
_FORMATS = {"torchscript": "torchscript", "torch_export": "export", "export": "export"}

Format = Literal["torchscript", "export"]


def torch_available() -> bool:
    """Whether torch can be imported, without importing it."""
    return importlib.util.find_spec("torch") is not None


def require_torch() -> None:
    """:class:`Unsupported` with :data:`INSTALL_HINT` when torch is not installed."""
    if not torch_available():
        raise Unsupported(INSTALL_HINT)


def _torch() -> Any:
    require_torch()
    import torch

    return torch


def model_format(config: ModelConfig | Mapping[str, str], filename: str) -> Format:
    """``"export"`` for a torch.export program, ``"torchscript"`` otherwise (see module doc)."""
    params = config.parameters if isinstance(config, ModelConfig) else config
    if "MODEL_FORMAT" in params:
        value = params["MODEL_FORMAT"].strip().lower()
        if value not in _FORMATS:
            raise InvalidModelConfig(
                f"parameter MODEL_FORMAT must be 'torchscript' or 'torch_export', got "
                f"{params['MODEL_FORMAT']!r}"
            )
        return "export" if _FORMATS[value] == "export" else "torchscript"
    return "export" if filename.endswith(".pt2") else "torchscript"


def check_datatypes(specs: Sequence[tuple[str, str, DataType | None]]) -> None:
    """Refuse datatypes libtorch cannot hold; ``specs`` are (kind, name, datatype)."""
    for kind, name, datatype in specs:
        if datatype is None or datatype in _TORCH_DTYPES:
            continue
        if datatype is DataType.BYTES:
            raise InvalidModelConfig(
                f"{kind} {name!r} is TYPE_STRING: libtorch has no string tensors and this "
                "backend does not pass List[str] arguments; encode text as integer tensors "
                "(token ids or UTF-8 bytes as TYPE_UINT8)"
            )
        raise InvalidModelConfig(
            f"{kind} {name!r} is {datatype.config_name}, which PyTorch tensors do not support; "
            f"use one of {', '.join(d.config_name for d in _TORCH_DTYPES)}"
        )


def _datatype_of(torch_dtype: Any, what: str) -> DataType:
    for datatype, attr in _TORCH_DTYPES.items():
        if str(torch_dtype) == f"torch.{attr}":
            return datatype
    raise InvalidModelConfig(f"{what} has dtype {torch_dtype}, which has no protocol datatype")


def _explain_unreadable(path: Path, wanted: Format) -> str:
    """What a file that failed to load actually is, from its zip directory (cheap, no torch)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = {name.split("/", 1)[-1] for name in archive.namelist()}
    except (zipfile.BadZipFile, OSError):
        return "it is not a PyTorch archive (not a zip file)"
    if "archive_format" in names or "models/model.json" in names:
        if wanted == "export":
            return "it is a torch.export archive that this torch cannot read"
        return (
            "it is a torch.export program, not TorchScript: name it model.pt2 "
            '(default_model_filename: "model.pt2") or set parameter MODEL_FORMAT=torch_export'
        )
    if "constants.pkl" in names and "code/__torch__.py" in {n for n in names if "code/" in n}:
        return "it is TorchScript: set parameter MODEL_FORMAT=torchscript"
    if "data.pkl" in names and "constants.pkl" not in names:
        return (
            "it is a torch.save checkpoint (a state dict or pickled module), not TorchScript: "
            "save with torch.jit.save(torch.jit.script(model), ...) or torch.jit.trace"
        )
    return "it is not a TorchScript or torch.export archive"


def _load_export(path: Path) -> Any:
    torch = _torch()
    try:
        return torch.export.load(str(path))
    except Exception as exc:
        why = _explain_unreadable(path, "export")
        raise InvalidModelConfig(
            f"{path.name} cannot be read by torch.export.load: {why} ({_first_line(exc)})"
        ) from exc


def describe_export(path: Path) -> BackendIO:
    """Inputs and outputs a torch.export program declares: its example inputs' dtypes and
    shapes (``-1`` for a dimension exported as dynamic). Inputs are named after ``forward``'s
    arguments, outputs ``OUTPUT__<index>``."""
    program = _load_export(path)
    signature = program.graph_signature
    nodes = {node.name: node for node in program.graph.nodes}

    def spec(node_name: str, name: str, what: str) -> TensorSpec:
        value = nodes[node_name].meta.get("val") if node_name in nodes else None
        if value is None or not hasattr(value, "shape"):
            raise InvalidModelConfig(f"{path.name}: {what} {name!r} is not a tensor")
        dims = tuple(d if isinstance(d, int) else -1 for d in value.shape)
        return TensorSpec(
            name=name, datatype=_datatype_of(value.dtype, f"{what} {name!r}"), dims=dims
        )

    arguments = list(_export_signature(program).arguments)
    if len(arguments) != len(signature.user_inputs):
        raise InvalidModelConfig(
            f"{path.name}: forward() takes {arguments} but the program has "
            f"{len(signature.user_inputs)} tensor inputs; write a config that declares them"
        )
    inputs = tuple(
        spec(node, arg, "input") for node, arg in zip(signature.user_inputs, arguments, strict=True)
    )
    outputs = tuple(
        spec(node, f"OUTPUT__{i}", "output") for i, node in enumerate(signature.user_outputs)
    )
    return BackendIO(inputs=inputs, outputs=outputs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------- process-wide settings
_settings_lock = threading.Lock()
#: setting → (value, model that set it). PyTorch holds these per process.
_process_settings: dict[str, tuple[object, str]] = {}


def _apply_process_setting(key: str, value: object, model: str, apply: Callable[[], None]) -> None:
    """Apply a process-wide torch setting once; a model asking for another value is warned."""
    with _settings_lock:
        current = _process_settings.get(key)
        if current is None:
            try:
                apply()
            except RuntimeError as exc:  # set_num_interop_threads after parallel work started
                log.warning(
                    "model %s: cannot apply %s=%s (%s); PyTorch keeps its current value",
                    model,
                    key,
                    value,
                    _first_line(exc),
                )
                return
            _process_settings[key] = (value, model)
            log.info("model %s: %s=%s applied for the whole process", model, key, value)
        elif current[0] != value:
            log.warning(
                "model %s asks for %s=%s, but PyTorch holds that setting per process and model "
                "%s already set it to %s; %s runs with %s",
                model,
                key,
                value,
                current[1],
                current[0],
                model,
                current[0],
            )


@dataclass(frozen=True, slots=True)
class _Plan:
    """How config tensors meet ``forward``: decided once at load."""

    #: ``dict``: one Dict[str, Tensor] argument; ``keyword``: by argument name; ``position``.
    inputs: Literal["dict", "keyword", "position"]
    #: Config input names in the order they are passed (``position``) or any order otherwise.
    input_order: tuple[str, ...]
    #: Config output name → index into the returned tuple/list.
    output_index: Mapping[str, int]
    convention: str
    #: Outputs named ``<name>__<index>`` (any subset); otherwise config order (all of them).
    outputs_by_index: bool


class PyTorchBackend(Backend):
    """One loaded TorchScript module or torch.export program, on one device."""

    name = "pytorch"

    def __init__(self, config: ModelConfig, version_dir: Path, instance: int = 0) -> None:
        super().__init__(config, version_dir, instance)
        self.module: Any = None
        self.device: str | None = "cpu"
        self.format: Format = "torchscript"
        self._plan: _Plan | None = None
        self._inference_mode = True
        self._optimized = True
        self._clean_cache = False
        self._bf16: frozenset[str] = frozenset()
        self._out_dtypes: dict[str, Any] = {}

    @property
    def model_path(self) -> Path:
        return self.version_dir / (self.config.default_model_filename or "model.pt")

    # ------------------------------------------------------------------ load
    def _load(self) -> None:
        torch = _torch()
        config = self.config
        path = self.model_path
        if not path.is_file():
            raise InvalidModelConfig(f"model file {path} does not exist")
        check_datatypes(
            [("input", s.name, s.datatype) for s in config.inputs]
            + [("output", s.name, s.datatype) for s in config.outputs]
        )
        if not config.inputs or not config.outputs:
            raise InvalidModelConfig(
                "a PyTorch model's config must declare its inputs and outputs (TorchScript "
                "files carry no tensor metadata)"
            )
        self.format = model_format(config, path.name)
        self._read_parameters(torch)
        self.device = self._select_device(torch)
        if self.format == "export":
            program = _load_export(path)
            module = program.module()
            if self.device is not None:
                module = module.to(self.device)
            signature = _export_signature(program)
        else:
            try:
                with warnings.catch_warnings():
                    # torch 2.13 marks TorchScript deprecated; it is still Triton's format and
                    # the one this platform names, so the warning says nothing to act on here.
                    warnings.filterwarnings(
                        "ignore", r".*torch\.jit\.load.* is deprecated", DeprecationWarning
                    )
                    module = torch.jit.load(str(path), map_location=self.device)
            except Exception as exc:
                raise InvalidModelConfig(
                    f"{path.name} is not a TorchScript file torch.jit.load can read: "
                    f"{_explain_unreadable(path, 'torchscript')} ({_first_line(exc)})"
                ) from exc
            module.eval()
            signature = _script_signature(module, path.name)
        self._plan = _plan(config, signature, path.name)
        self.module = module
        self._bf16 = frozenset(
            s.name for s in config.inputs + config.outputs if s.datatype is DataType.BF16
        )
        self._out_dtypes = {
            s.name: getattr(torch, _TORCH_DTYPES[s.datatype]) for s in config.outputs
        }
        self.providers = [f"torch-{self.format}:{self.device or 'model'}"]
        log.info(
            "model %s instance %d: %s on %s, inputs by %s",
            config.name,
            self.instance,
            path.name,
            self.device or "the model's own devices",
            self._plan.convention,
        )

    def _read_parameters(self, torch: Any) -> None:
        params = self.config.parameters
        model = self.config.name
        mode = bool_param(params, "INFERENCE_MODE")
        self._inference_mode = True if mode is None else mode
        disable = bool_param(params, "DISABLE_OPTIMIZED_EXECUTION")
        self._optimized = not disable if disable is not None else True
        self._clean_cache = bool(bool_param(params, "ENABLE_CACHE_CLEANING"))
        if (n := int_param(params, "INTRA_OP_THREAD_COUNT", minimum=1)) is not None:
            _apply_process_setting(
                "INTRA_OP_THREAD_COUNT", n, model, functools.partial(torch.set_num_threads, n)
            )
        if (n := int_param(params, "INTER_OP_THREAD_COUNT", minimum=1)) is not None:
            _apply_process_setting(
                "INTER_OP_THREAD_COUNT",
                n,
                model,
                functools.partial(torch.set_num_interop_threads, n),
            )
        switches: dict[str, Callable[[bool], Any]] = {
            "ENABLE_JIT_EXECUTOR": torch._C._jit_set_profiling_executor,
            "ENABLE_JIT_PROFILING": torch._C._jit_set_profiling_mode,
            "ENABLE_TENSOR_FUSER": torch._C._jit_set_texpr_fuser_enabled,
        }
        for key, setter in switches.items():
            if (b := bool_param(params, key)) is not None:
                _apply_process_setting(key, b, model, functools.partial(setter, b))
        if (b := bool_param(params, "DISABLE_CUDNN")) is not None:

            def set_cudnn(b: bool = b) -> None:
                torch.backends.cudnn.enabled = not b

            _apply_process_setting("DISABLE_CUDNN", b, model, set_cudnn)
        if bool_param(params, "ENABLE_NVFUSER"):
            log.info(
                "model %s: ENABLE_NVFUSER ignored: NVFuser is no longer part of PyTorch %s "
                "(and never applied to CPU instances)",
                model,
                torch.__version__,
            )
        if bool_param(params, "ENABLE_WEIGHT_SHARING"):
            log.info(
                "model %s: ENABLE_WEIGHT_SHARING ignored: each instance loads its own copy", model
            )

    def _group(self) -> tuple[str, tuple[int, ...], int]:
        """The instance group this instance belongs to: kind, gpus, index within the group."""
        index = self.instance
        for group in self.config.instance_group:
            if index < group.count:
                return group.kind, group.gpus, index
            index -= group.count
        return "KIND_AUTO", (), 0

    def _select_device(self, torch: Any) -> str | None:
        kind, gpus, index = self._group()
        if kind == "KIND_CPU":
            return "cpu"
        if kind == "KIND_MODEL":
            return None
        cuda = bool(torch.cuda.is_available())
        if kind == "KIND_GPU":
            if not cuda:
                raise Unsupported(_no_cuda(torch))
            gpu = gpus[index % len(gpus)] if gpus else 0
            count = int(torch.cuda.device_count())
            if gpu >= count:
                raise InvalidModelConfig(
                    f"instance_group asks for GPU {gpu}, but torch sees {count} CUDA device(s)"
                )
            return f"cuda:{gpu}"
        return "cuda:0" if cuda else "cpu"

    # ------------------------------------------------------------------ infer
    def _infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> NamedArrays:
        module, plan = self.module, self._plan
        if module is None or plan is None:
            raise InternalError("pytorch model is not loaded")
        import torch

        tensors = {name: self._tensor(torch, name, array) for name, array in inputs.items()}
        grad = torch.inference_mode() if self._inference_mode else torch.no_grad()
        optimized = (
            torch.jit.optimized_execution(False)
            if not self._optimized and self.format == "torchscript"
            else contextlib.nullcontext()
        )
        try:
            with grad, optimized:
                if plan.inputs == "dict":
                    result = module(tensors)
                elif plan.inputs == "keyword":
                    result = module(**tensors)
                else:
                    result = module(*(tensors[name] for name in plan.input_order))
        except Exception as exc:
            raise InternalError(
                f"{self.model_path.name}: forward() failed: {_message(exc)}"
            ) from exc
        named = self._outputs(torch, result, outputs)
        if self._clean_cache and self.device is not None and self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        return named

    def _tensor(self, torch: Any, name: str, array: np.ndarray) -> Any:
        if not array.flags.writeable:
            # torch.from_numpy shares memory and a model may write to its input: never into a
            # request's (read-only) buffer.
            array = array.copy()
        elif not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        tensor = torch.from_numpy(array)
        if name in self._bf16:
            if array.dtype != np.uint16:
                raise InvalidArgument(f"input {name!r}: BF16 data must arrive as uint16 bits")
            tensor = tensor.view(torch.bfloat16)
        if self.device is not None and self.device != "cpu":
            tensor = tensor.to(self.device)
        return tensor

    def _outputs(self, torch: Any, result: Any, wanted: Sequence[str]) -> NamedArrays:
        plan = self._plan
        assert plan is not None
        path = self.model_path.name
        if isinstance(result, Mapping):
            missing = [n for n in wanted if n not in result]
            if missing:
                raise InternalError(
                    f"{path}: forward() returned a dict with keys {sorted(map(str, result))}, "
                    f"without the config's output(s) {missing}"
                )
            picked = {n: result[n] for n in wanted}
        else:
            values = list(result) if isinstance(result, tuple | list) else [result]
            need = max(plan.output_index.values()) + 1
            if len(values) < need or (
                not plan.outputs_by_index and len(values) != len(plan.output_index)
            ):
                raise InternalError(
                    f"{path}: forward() returned {len(values)} output(s), but the config "
                    f"declares {len(plan.output_index)} ({', '.join(plan.output_index)})"
                )
            picked = {n: values[plan.output_index[n]] for n in wanted}
        return {name: self._array(torch, name, value) for name, value in picked.items()}

    def _array(self, torch: Any, name: str, value: Any) -> np.ndarray:
        if not isinstance(value, torch.Tensor):
            raise InternalError(
                f"{self.model_path.name}: output {name!r} is a {type(value).__name__}, not a tensor"
            )
        expected = self._out_dtypes[name]
        if value.dtype != expected:
            spec = self.config.output(name)
            assert spec is not None
            raise InternalError(
                f"{self.model_path.name}: output {name!r} is {value.dtype}, but the config "
                f"declares {spec.datatype.config_name}"
            )
        tensor = value.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        tensor = tensor.contiguous()
        if name in self._bf16:
            return tensor.view(torch.int16).numpy().view(np.uint16)
        return tensor.numpy()

    def translate_error(self, exc: Exception) -> ForwardpassError:
        return InternalError(f"pytorch: {_message(exc)}")

    def unload(self) -> None:
        self.module = None


def _message(exc: BaseException) -> str:
    """An exception's message; a TorchScript interpreter traceback shrinks to its last line
    (``builtins.ValueError: ...``), which names the error the model raised."""
    text = str(exc).strip()
    if "Traceback of TorchScript" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1].strip()
    return text or type(exc).__name__


@dataclass(frozen=True, slots=True)
class _Signature:
    """What ``forward`` takes and returns, as far as the file says."""

    arguments: tuple[str, ...]
    required: int
    dict_input: bool
    #: How many outputs it returns; ``None`` when its type does not say (a list or a dict).
    returns: int | None


def _script_signature(module: Any, filename: str) -> _Signature:
    try:
        schema = module.forward.schema
    except Exception as exc:  # a module without forward()
        raise InvalidModelConfig(f"{filename}: the TorchScript module has no forward()") from exc
    arguments = schema.arguments[1:]  # self
    returned = schema.returns[0].type if schema.returns else None
    kind = returned.kind() if returned is not None else ""
    count: int | None = None
    if kind == "TupleType" and returned is not None:
        count = len(returned.elements())
    elif kind == "TensorType":
        count = 1
    return _Signature(
        arguments=tuple(a.name for a in arguments),
        required=sum(1 for a in arguments if not a.has_default_value()),
        dict_input=len(arguments) == 1 and arguments[0].type.kind() == "DictType",
        returns=count,
    )


def _export_signature(program: Any) -> _Signature:
    parameters = inspect.signature(program.module().forward).parameters.values()
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return _Signature(
        arguments=tuple(p.name for p in positional),
        required=sum(1 for p in positional if p.default is inspect.Parameter.empty),
        dict_input=False,
        returns=len(program.graph_signature.user_outputs),
    )


def _named_indices(names: Sequence[str]) -> dict[str, int] | None:
    """``<anything>__<index>`` for every name, or ``None``."""
    found = {}
    for name in names:
        match = _NAMED_INDEX.match(name)
        if match is None:
            return None
        found[name] = int(match.group(2))
    return found


def _plan(config: ModelConfig, signature: _Signature, filename: str) -> _Plan:
    """Triton's naming conventions (module docstring) applied to this config and file."""
    names = tuple(s.name for s in config.inputs)
    arguments = signature.arguments
    described = f"forward({', '.join(arguments)})"
    if signature.dict_input:
        inputs: Literal["dict", "keyword", "position"] = "dict"
        order, convention = names, "name (one Dict[str, Tensor] argument)"
    elif set(names) <= set(arguments):
        missing = [a for a in arguments[: signature.required] if a not in names]
        if missing:
            raise InvalidModelConfig(
                f"{filename}: {described} needs argument(s) {missing}, which the config does "
                f"not declare as inputs (it declares {list(names)})"
            )
        convention = "forward() argument name"
        if set(names) == set(arguments[: len(names)]):
            # A prefix of the arguments: positional, which every module kind accepts (an
            # exported program's forward takes no keywords).
            inputs, order = "position", arguments[: len(names)]
        else:
            inputs, order = "keyword", names
    else:
        indices = _named_indices(names)
        if indices is not None and sorted(indices.values()) == list(range(len(names))):
            order = tuple(sorted(names, key=lambda n: indices[n]))
            convention = "<name>__<index>"
        else:
            order, convention = names, "config order"
            log.info(
                "model %s: input names %s are neither forward() argument names nor "
                "<name>__<index>; passing them in config order",
                config.name,
                list(names),
            )
        inputs = "position"
        if not signature.required <= len(names) <= len(arguments):
            takes = (
                str(signature.required)
                if signature.required == len(arguments)
                else f"{signature.required} to {len(arguments)}"
            )
            raise InvalidModelConfig(
                f"{filename}: {described} takes {takes} input(s), but the config declares "
                f"{len(names)} ({', '.join(names)})"
            )

    out_names = [s.name for s in config.outputs]
    out_indices = _named_indices(out_names)
    if out_indices is not None and len(set(out_indices.values())) == len(out_names):
        output_index: dict[str, int] = out_indices
        by_index = True
    else:
        output_index = {name: i for i, name in enumerate(out_names)}
        by_index = False
    returns = signature.returns
    if returns is not None:
        too_few = max(output_index.values()) >= returns
        if too_few or (not by_index and returns != len(out_names)):
            raise InvalidModelConfig(
                f"{filename}: forward() returns {returns} output(s), but the config declares "
                f"{len(out_names)} ({', '.join(out_names)})"
                + (
                    f"; output index {max(output_index.values())} does not exist"
                    if by_index
                    else ""
                )
            )
    return _Plan(
        inputs=inputs,
        input_order=order,
        output_index=output_index,
        convention=convention,
        outputs_by_index=by_index,
    )


def check_file(path: Path, fmt: Format) -> None:
    """Refuse, without torch, a file that is plainly not the archive ``fmt`` needs."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = {name.split("/", 1)[-1] for name in archive.namelist()}
    except (zipfile.BadZipFile, OSError):
        names = set()
    if fmt == "export":
        ok = "archive_format" in names or "models/model.json" in names
        how = "torch.export.load"
    else:
        ok = "constants.pkl" in names and any(n.startswith("code/") for n in names)
        how = "torch.jit.load"
    if not ok:
        raise InvalidModelConfig(
            f"{path.name} is not a file {how} can read: {_explain_unreadable(path, fmt)}"
        )


def check_devices(groups: Sequence[Any]) -> None:
    """``KIND_GPU`` needs a CUDA device this torch can use (imports torch only then)."""
    if any(getattr(g, "kind", "") == "KIND_GPU" for g in groups):
        torch = _torch()
        if not torch.cuda.is_available():
            raise Unsupported(_no_cuda(torch))


def _no_cuda(torch: Any) -> str:
    return (
        f"instance_group kind KIND_GPU needs a CUDA device, but torch {torch.__version__} sees "
        "none (a CPU-only build, or no GPU visible); use kind: KIND_CPU, or install a CUDA "
        "build of torch on a machine with a GPU"
    )
