"""The engine: the table of loaded models, request validation, and the path into a batcher.

``Engine.infer`` takes an :class:`InferRequest`, finds the model version, checks every input
against the configuration (names, datatypes, shapes, batch size), submits the arrays to that
version's :class:`Batcher`, and builds the :class:`InferResponse` (requested outputs only,
classification top-N when asked). Loading and unloading swap whole model entries, so traffic to
a model keeps flowing to its old versions while new ones load, and other models never notice.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from forwardpass.config import ServerConfig
from forwardpass.datatypes import DataType
from forwardpass.errors import (
    ForwardpassError,
    InternalError,
    InvalidArgument,
    InvalidModelConfig,
    NotFound,
    Unavailable,
)
from forwardpass.model_config import ModelConfig, TensorSpec
from forwardpass.monitor.stats import ModelStats
from forwardpass.optimize.provenance import Provenance, read_provenance
from forwardpass.pipeline import Pipeline
from forwardpass.processing.base import Processing
from forwardpass.processing.outputs import topk_strings
from forwardpass.processing.spec import build_processing
from forwardpass.repository import ModelEntry, ModelRepository, warmup_inputs
from forwardpass.repository.warmup import zeros
from forwardpass.runtime import Backend, backend_class
from forwardpass.scheduling.batcher import Batcher, BatcherPolicy
from forwardpass.scheduling.layout import BatchLayout
from forwardpass.types import InferRequest, InferResponse, Tensor

__all__ = ["Engine", "ModelState"]

log = logging.getLogger("forwardpass.engine")


class ModelState(enum.Enum):
    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class LoadedVersion:
    """One served version: its backend instances, batcher and counters.

    An ensemble version has no backend, batcher or executor of its own: its ``pipeline``
    sends each step to the step's model.
    """

    version: int
    backends: list[Backend]
    batcher: Batcher | None
    executor: ThreadPoolExecutor | None
    stats: ModelStats
    pipeline: Pipeline | None = None
    #: Set when this version was written by ``forwardpass optimize`` from another one.
    provenance: Provenance | None = None

    @property
    def providers(self) -> list[str]:
        return self.backends[0].providers if self.backends else []


@dataclass(slots=True)
class ModelHandle:
    """Everything the engine knows about one model name."""

    name: str
    state: ModelState = ModelState.UNAVAILABLE
    reason: str = ""
    entry: ModelEntry | None = None
    versions: dict[int, LoadedVersion] = field(default_factory=dict)
    # Derived once per load for the hot path.
    #: What clients send and get: the model's own tensors, or those its processing shows.
    input_specs: dict[str, TensorSpec] = field(default_factory=dict)
    output_specs: dict[str, TensorSpec] = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    #: The model's own inputs and outputs (outputs are computed for every batch).
    model_inputs: frozenset[str] = frozenset()
    output_names: tuple[str, ...] = ()
    processing: Processing | None = None
    latest: LoadedVersion | None = None

    @property
    def config(self) -> ModelConfig:
        assert self.entry is not None
        return self.entry.config


def _shape_matches(shape: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    if len(shape) != len(dims):
        return False
    return all(d == -1 or d == s for s, d in zip(shape, dims, strict=True))


def _fmt(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


class Engine:
    """Loads models from a repository and answers inference requests."""

    def __init__(self, repository: ModelRepository, config: ServerConfig | None = None) -> None:
        self.repository = repository
        self.config = config or ServerConfig(model_repository=repository.root)
        self._models: dict[str, ModelHandle] = {}
        self._processing_pool = ThreadPoolExecutor(
            max_workers=max(2, os.cpu_count() or 1), thread_name_prefix="fp-processing"
        )
        self._locks: dict[str, asyncio.Lock] = {}
        self.started = False
        self.stopping = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load the models the configuration asks for; broken ones become UNAVAILABLE."""
        try:
            names = self.repository.list_models()
        except ForwardpassError as exc:
            log.error("cannot read model repository: %s", exc.message)
            names = []
        if not self.config.load_all:
            names = [n for n in names if n in self.config.load_models]
        for name in names:
            try:
                await self.load(name)
            except ForwardpassError as exc:
                log.error("model %s is UNAVAILABLE: %s", name, exc.message)
        self.started = True

    async def stop(self) -> None:
        """Finish in-flight requests (up to the grace period) and release every model."""
        self.stopping = True
        for name in list(self._models):
            await self._retire(self._models[name], "server is shutting down")
        self._processing_pool.shutdown(wait=False)

    @property
    def ready(self) -> bool:
        return self.started and not self.stopping

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    async def load(
        self,
        name: str,
        config_override: Mapping[str, Any] | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> None:
        """Load (or reload) a model; old versions keep serving until the new ones are ready.

        Loading an ensemble also loads the models its steps call that are not loaded yet.
        """
        await self._load(name, config_override, files, ())

    async def _load(
        self,
        name: str,
        config_override: Mapping[str, Any] | None,
        files: Mapping[str, bytes] | None,
        chain: tuple[str, ...],
    ) -> None:
        self.repository.resolve_name(name)  # rejects names that would leave the repository
        if name in chain:
            raise InvalidModelConfig(f"ensembles call each other in a loop: {' -> '.join(chain)}")
        async with self._lock(name):
            old = self._models.get(name)
            created = old is None
            if old is None:
                old = self._models[name] = ModelHandle(name=name, state=ModelState.LOADING)
            elif old.state is not ModelState.READY:
                old.state = ModelState.LOADING
            loop = asyncio.get_running_loop()
            try:
                if files:
                    await loop.run_in_executor(None, self.repository.write_files, name, files)
                entry = await loop.run_in_executor(
                    None, lambda: self.repository.read(name, config_override=config_override)
                )
                pipeline: Pipeline | None = None
                if entry.config.is_ensemble:
                    pipeline = Pipeline(entry.config)
                    await self._load_steps(pipeline, (*chain, name))
                    processing, built = None, {}
                else:
                    processing = await loop.run_in_executor(
                        None, build_processing, entry.config, entry.path, entry.labels
                    )
                    built = await loop.run_in_executor(None, self._build, entry)
            except ForwardpassError as exc:
                if created and isinstance(exc, NotFound):
                    del self._models[name]  # no such model: leave no UNAVAILABLE ghost behind
                    raise
                if not old.versions:
                    old.state = ModelState.UNAVAILABLE
                else:
                    old.state = ModelState.READY
                old.reason = exc.message
                raise
            handle = ModelHandle(
                name=name, state=ModelState.READY, entry=entry, processing=processing
            )
            self._derive(handle)
            for version, (backends, executor) in built.items():
                stats = ModelStats(name, str(version))
                policy = BatcherPolicy.for_model(
                    entry.config, len(backends), self.config.default_max_queue_size
                )
                batcher = Batcher(
                    _runner(backends, handle.output_names),
                    policy,
                    executor,
                    listener=stats.on_batch,
                    name=f"{name}:{version}",
                )
                batcher.start()
                handle.versions[version] = LoadedVersion(
                    version, backends, batcher, executor, stats
                )
            if pipeline is not None:
                for version in entry.versions:
                    handle.versions[version] = LoadedVersion(
                        version, [], None, None, ModelStats(name, str(version)), pipeline
                    )
            for version, loaded in handle.versions.items():
                loaded.provenance = read_provenance(entry.path / str(version))
                if loaded.provenance is not None:
                    log.info("model %s version %d: %s", name, version, loaded.provenance.describe())
            handle.latest = handle.versions[max(handle.versions)] if handle.versions else None
            self._models[name] = handle
            log.info(
                "model %s READY: versions %s, providers %s",
                name,
                sorted(handle.versions),
                handle.latest.providers if handle.latest else [],
            )
            if old is not handle and old.versions:
                await self._retire(old, "model was reloaded", remove=False)

    async def _load_steps(self, pipeline: Pipeline, chain: tuple[str, ...]) -> None:
        """Load the models an ensemble calls, unless they already serve."""
        available = set(self.repository.list_models())
        for model in pipeline.models:
            if model not in available:
                raise InvalidModelConfig(f"ensemble step model {model!r} is not in the repository")
            handle = self._models.get(model)
            if handle is None or handle.state is not ModelState.READY:
                await self._load(model, None, None, chain)

    async def unload(self, name: str) -> None:
        """Stop serving a model: queued requests finish, later ones get 503 (UNAVAILABLE)."""
        self.repository.resolve_name(name)  # rejects names that would leave the repository
        async with self._lock(name):
            handle = self._models.get(name)
            if handle is None:
                raise NotFound(f"model {name!r} is not loaded")
            await self._retire(handle, "unloaded")

    async def _retire(self, handle: ModelHandle, reason: str, remove: bool = True) -> None:
        handle.state = ModelState.UNLOADING
        versions = list(handle.versions.values())
        await asyncio.gather(
            *(v.batcher.close(self.config.shutdown_grace_s) for v in versions if v.batcher)
        )
        for v in versions:
            for backend in v.backends:
                backend.unload()
            if v.executor is not None:
                v.executor.shutdown(wait=False)
        if remove:
            handle.versions = {}
            handle.latest = None
            handle.state = ModelState.UNAVAILABLE
            handle.reason = reason

    def _build(self, entry: ModelEntry) -> dict[int, tuple[list[Backend], ThreadPoolExecutor]]:
        """Worker thread: create, load and warm every instance of every selected version."""
        config = entry.config
        cls = backend_class(config)
        built: dict[int, tuple[list[Backend], ThreadPoolExecutor]] = {}
        try:
            for version in entry.versions:
                backends: list[Backend] = []
                built[version] = (
                    backends,
                    ThreadPoolExecutor(
                        max_workers=config.instance_count,
                        thread_name_prefix=f"fp-{entry.name}-{version}",
                    ),
                )
                for i in range(config.instance_count):
                    backend = cls(config, entry.version_dir(version), instance=i)
                    backend.load()
                    backends.append(backend)
                self._warm(entry, backends)
        except BaseException:
            for backends, executor in built.values():
                for backend in backends:
                    backend.unload()
                executor.shutdown(wait=False)
            raise
        return built

    def _warm(self, entry: ModelEntry, backends: list[Backend]) -> None:
        """Run the configured warm-up samples on every instance before READY.

        A model without ``model_warmup`` still gets one zero sample of batch 1 when every
        input has fixed dims, so the first real request does not pay for ONNX Runtime's
        first-run allocations; that implicit sample failing is logged, not fatal (zeros are
        not valid input for every model), while a configured sample failing fails the load.
        """
        config = entry.config
        outputs = [o.name for o in config.outputs]
        layout = BatchLayout.from_config(config)  # a sample is a batch of one request
        samples = warmup_inputs(config, entry.path)
        if samples:
            for warmup, arrays in samples:
                merged = layout.merge([arrays])
                for backend in backends:
                    for _ in range(max(1, warmup.count)):
                        backend.infer(merged, outputs)
            return
        if not config.inputs or any(d < 0 for s in config.inputs for d in s.dims):
            return
        lead = (1,) if config.batching else ()
        arrays = {
            spec.name: zeros(
                spec.datatype, lead + (spec.reshape if spec.reshape is not None else spec.dims)
            )
            for spec in config.inputs
        }
        arrays = layout.merge([arrays])
        for backend in backends:
            try:
                backend.infer(arrays, outputs)
            except ForwardpassError as exc:
                log.warning("model %s: implicit zero warm-up failed (%s)", entry.name, exc.message)
                return

    def _derive(self, handle: ModelHandle) -> None:
        config = handle.config
        processing = handle.processing
        inputs = processing.client_inputs if processing else config.inputs
        outputs = processing.client_outputs if processing else config.outputs
        handle.input_specs = {spec.name: spec for spec in inputs}
        handle.output_specs = {spec.name: spec for spec in outputs}
        handle.required = frozenset(s.name for s in inputs if not s.optional)
        handle.output_names = tuple(o.name for o in config.outputs)
        handle.model_inputs = frozenset(spec.name for spec in config.inputs)
        if processing is not None and not processing.active:
            handle.processing = None

    # ------------------------------------------------------------------ lookups
    def handle(self, name: str) -> ModelHandle:
        handle = self._models.get(name)
        if handle is None:
            raise NotFound(f"unknown model {name!r}")
        return handle

    def version(self, name: str, version: str = "") -> tuple[ModelHandle, LoadedVersion]:
        """The served version named (or the latest); 404 if unknown, 503 if not ready."""
        handle = self._models.get(name)
        if handle is None:
            raise NotFound(f"unknown model {name!r}")
        if handle.state is not ModelState.READY or handle.latest is None:
            raise Unavailable(
                f"model {name!r} is not ready ({handle.state.value}"
                + (f": {handle.reason})" if handle.reason else ")")
            )
        if not version:
            return handle, handle.latest
        try:
            loaded = handle.versions.get(int(version))
        except ValueError:
            raise InvalidArgument(f"model version must be an integer, got {version!r}") from None
        if loaded is None:
            raise NotFound(
                f"model {name!r} has no version {version} loaded "
                f"(serving {sorted(handle.versions)})"
            )
        return handle, loaded

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.version(name, version)
        except ForwardpassError:
            return False
        return True

    def models(self) -> list[ModelHandle]:
        return [self._models[name] for name in sorted(self._models)]

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Triton's repository index: every model in the repository with its state."""
        try:
            names = set(self.repository.list_models())
        except ForwardpassError:
            names = set()
        names |= set(self._models)
        out: list[dict[str, Any]] = []
        for name in sorted(names):
            handle = self._models.get(name)
            if handle is None:
                if not ready_only:
                    out.append({"name": name})
                continue
            if handle.versions:
                for version in sorted(handle.versions):
                    if ready_only and handle.state is not ModelState.READY:
                        continue
                    item: dict[str, Any] = {
                        "name": name,
                        "version": str(version),
                        "state": handle.state.value,
                        "reason": handle.reason if handle.state is not ModelState.READY else "",
                    }
                    provenance = handle.versions[version].provenance
                    if provenance is not None:
                        # Beyond Triton's four keys; clients that do not know it ignore it.
                        item["optimized_from"] = str(provenance.optimized_from)
                        item["optimization"] = provenance.method
                    out.append(item)
            elif not ready_only:
                out.append(
                    {
                        "name": name,
                        "version": "",
                        "state": handle.state.value,
                        "reason": handle.reason,
                    }
                )
        return out

    def metadata(self, name: str, version: str = "") -> dict[str, Any]:
        handle, _ = self.version(name, version)
        config = handle.config
        batch = (-1,) if config.batching else ()

        def tensor(spec: TensorSpec) -> dict[str, Any]:
            return {
                "name": spec.name,
                "datatype": spec.datatype.value,
                "shape": list(batch + spec.dims),
            }

        return {
            "name": name,
            "versions": [str(v) for v in sorted(handle.versions)],
            "platform": config.platform or config.backend,
            "inputs": [tensor(s) for s in handle.input_specs.values()],
            "outputs": [tensor(s) for s in handle.output_specs.values()],
        }

    # ------------------------------------------------------------------ inference
    async def infer(self, request: InferRequest) -> InferResponse:
        """Validate, queue, run and answer one request."""
        start = time.monotonic_ns()
        handle, loaded = self.version(request.model_name, request.model_version)
        stats = loaded.stats
        try:
            inputs = self._validate(handle, request)
            priority, timeout = _schedule_params(request.parameters)
            processing = handle.processing
            pre_ns = post_ns = 0
            extra: dict[str, np.ndarray] = {}
            if processing is not None and processing.inputs:
                began = time.monotonic_ns()
                inputs = await self._preprocess(processing, inputs)
                # What processing adds beside the model's inputs (image geometry) stays here,
                # for the output steps; the model sees only its own inputs.
                for key in [k for k in inputs if k not in handle.model_inputs]:
                    extra[key] = inputs.pop(key)
                pre_ns = time.monotonic_ns() - began
            if loaded.pipeline is not None:
                specs = handle.input_specs
                tensors = {n: Tensor(n, specs[n].datatype, a) for n, a in inputs.items()}
                produced = await loaded.pipeline.run(self.infer, tensors, request.id)
                outputs = {n: t.data for n, t in produced.items()}
            elif _no_rows(handle.config, inputs):
                outputs = _zero_rows(handle.config)
            else:
                assert loaded.batcher is not None
                inputs = loaded.backends[0].check(inputs)
                outputs, _queue_ns, _compute_ns = await loaded.batcher.submit(
                    inputs, priority=priority, timeout_us=timeout
                )
            if processing is not None and processing.outputs:
                began = time.monotonic_ns()
                outputs = _guarded(processing.postprocess, outputs, {**inputs, **extra})
                post_ns = time.monotonic_ns() - began
            if pre_ns or post_ns:
                stats.on_processing(pre_ns, post_ns)
            response = self._respond(handle, loaded, request, outputs)
        except ForwardpassError as exc:
            stats.on_request(False, time.monotonic_ns() - start, exc.code)
            raise
        stats.on_request(True, time.monotonic_ns() - start)
        return response

    async def _preprocess(
        self, processing: Processing, inputs: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Decode/tokenize off the event loop: image decoding takes milliseconds."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._processing_pool, _guarded, processing.preprocess, inputs
        )

    def _validate(self, handle: ModelHandle, request: InferRequest) -> dict[str, np.ndarray]:
        config = handle.config
        specs = handle.input_specs
        batching = config.max_batch_size > 0
        arrays: dict[str, np.ndarray] = {}
        rows = -1
        for tensor in request.inputs:
            spec = specs.get(tensor.name)
            if spec is None:
                raise InvalidArgument(
                    f"unknown input {tensor.name!r} for model {handle.name!r} "
                    f"(expects {sorted(specs)})"
                )
            if tensor.name in arrays:
                raise InvalidArgument(f"input {tensor.name!r} is given twice")
            if tensor.datatype is not spec.datatype:
                raise InvalidArgument(
                    f"input {tensor.name!r} has datatype {tensor.datatype.value}, "
                    f"model {handle.name!r} expects {spec.datatype.value}"
                )
            data = tensor.data
            shape = data.shape
            if batching:
                if len(shape) == 0:
                    raise InvalidArgument(
                        f"input {tensor.name!r} needs a leading batch dimension: shape "
                        f"[batch]+{_fmt(spec.dims)}, got a scalar"
                    )
                if shape[0] < 1 or shape[0] > config.max_batch_size:
                    raise InvalidArgument(
                        f"input {tensor.name!r}: batch size {shape[0]} is outside 1.."
                        f"{config.max_batch_size} (max_batch_size of model {handle.name!r})"
                    )
                if rows == -1:
                    rows = shape[0]
                elif shape[0] != rows:
                    raise InvalidArgument(
                        f"inputs disagree on the batch size ({rows} vs {shape[0]} for "
                        f"{tensor.name!r})"
                    )
                if not _shape_matches(shape[1:], spec.dims):
                    raise InvalidArgument(
                        f"input {tensor.name!r} has shape {_fmt(shape)}, model {handle.name!r} "
                        f"expects [batch(<= {config.max_batch_size})]+{_fmt(spec.dims)}"
                    )
            elif not _shape_matches(shape, spec.dims):
                raise InvalidArgument(
                    f"input {tensor.name!r} has shape {_fmt(shape)}, model {handle.name!r} "
                    f"expects {_fmt(spec.dims)}"
                )
            if data.dtype != spec.datatype.numpy:
                data = data.astype(spec.datatype.numpy)
            if spec.reshape is not None:
                data = data.reshape((shape[0],) + spec.reshape if batching else spec.reshape)
            arrays[tensor.name] = data
        missing = handle.required - arrays.keys()
        if missing:
            raise InvalidArgument(
                f"model {handle.name!r} needs input(s) {sorted(missing)} that the request lacks"
            )
        if request.outputs is not None:
            for out in request.outputs:
                if out.name not in handle.output_specs:
                    raise InvalidArgument(
                        f"unknown output {out.name!r} for model {handle.name!r} "
                        f"(has {list(handle.output_specs)})"
                    )
        return arrays

    def _respond(
        self,
        handle: ModelHandle,
        loaded: LoadedVersion,
        request: InferRequest,
        outputs: dict[str, np.ndarray],
    ) -> InferResponse:
        config = handle.config
        tensors: list[Tensor] = []
        wanted = request.outputs
        if wanted is None:
            for spec in handle.output_specs.values():
                tensors.append(
                    Tensor(
                        spec.name, spec.datatype, self._shape_out(config, spec, outputs[spec.name])
                    )
                )
        else:
            for out in wanted:
                spec = handle.output_specs[out.name]
                data = self._shape_out(config, spec, outputs[out.name])
                params = out.parameters
                if "classification" in params:
                    tensors.append(
                        Tensor(
                            out.name,
                            DataType.BYTES,
                            self._classify(handle, spec, data, params["classification"]),
                            dict(params),
                        )
                    )
                else:
                    tensors.append(Tensor(out.name, spec.datatype, data, dict(params)))
        return InferResponse(
            model_name=handle.name,
            model_version=str(loaded.version),
            outputs=tensors,
            id=request.id,
        )

    @staticmethod
    def _shape_out(config: ModelConfig, spec: TensorSpec, data: np.ndarray) -> np.ndarray:
        if spec.reshape is not None and all(d > 0 for d in spec.dims):
            return data.reshape(((data.shape[0],) if config.batching else ()) + spec.dims)
        return data

    def _classify(
        self, handle: ModelHandle, spec: TensorSpec, data: np.ndarray, count: Any
    ) -> np.ndarray:
        """Triton's classification extension: top-N as ``"value:index[:label]"`` strings."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InvalidArgument(
                f"classification for output {spec.name!r} must be a positive integer, got {count!r}"
            )
        if spec.datatype is DataType.BYTES:
            raise InvalidArgument(f"output {spec.name!r} is BYTES and cannot be classified")
        assert handle.entry is not None
        labels = handle.entry.labels.get(spec.name, ())
        batched = handle.config.batching
        rows = data.reshape(data.shape[0], -1) if batched else data.reshape(1, -1)
        if rows.dtype == np.uint16 and spec.datatype is DataType.BF16:
            from forwardpass.datatypes import bf16_to_float32

            rows = bf16_to_float32(rows)
        out = topk_strings(rows, count, labels)
        return out if batched else out.reshape(-1)

    def stats(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        """Triton's statistics extension for one model, one version, or every model."""
        if name:
            handle = self.handle(name)
            if version:
                _, loaded = self.version(name, version)
                return [loaded.stats.triton()]
            return [v.stats.triton() for _, v in sorted(handle.versions.items())]
        return [
            v.stats.triton() for handle in self.models() for _, v in sorted(handle.versions.items())
        ]


def _runner(backends: list[Backend], outputs: tuple[str, ...]) -> Any:
    def run(instance: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return backends[instance].infer(inputs, outputs)

    return run


def _no_rows(config: ModelConfig, inputs: Mapping[str, np.ndarray]) -> bool:
    """Whether a model without batching was sent zero rows.

    True when every input and output declares a variable leading axis (rows in, rows out)
    and every input is empty along it: an ensemble step after a detector that found nothing.
    Many networks cannot run an empty tensor (an ONNX ``Reshape`` to ``[0, C, -1]`` fails)
    and there is nothing to compute, so the engine answers zero rows without the backend.
    """
    if config.batching or not inputs:
        return False
    if any(not s.dims or s.dims[0] != -1 for s in (*config.inputs, *config.outputs)):
        return False
    return all(a.ndim > 0 and a.shape[0] == 0 for a in inputs.values())


def _zero_rows(config: ModelConfig) -> dict[str, np.ndarray]:
    """Zero-row outputs. Other unknown dims become 1, so that a later ``x.reshape(-1, T, C)``
    stays defined on the empty array (numpy cannot infer -1 next to a 0)."""
    out: dict[str, np.ndarray] = {}
    for spec in config.outputs:
        shape = (0, *(d if d > 0 else 1 for d in spec.dims[1:]))
        out[spec.name] = zeros(spec.datatype, shape)
    return out


def _guarded(fn: Callable[..., dict[str, np.ndarray]], *args: Any) -> dict[str, np.ndarray]:
    """Run a processing step; a bug in it fails its own request with a 500, nothing else."""
    try:
        return fn(*args)
    except ForwardpassError:
        raise
    except Exception as exc:
        log.exception("processing failed")
        raise InternalError(f"processing failed: {type(exc).__name__}: {exc}") from exc


def _schedule_params(params: Mapping[str, Any]) -> tuple[int, int | None]:
    """Triton's schedule-policy parameters ``priority`` and ``timeout`` (µs)."""
    priority = params.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        raise InvalidArgument(
            f"parameter priority must be a non-negative integer, got {priority!r}"
        )
    timeout = params.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0
    ):
        raise InvalidArgument(
            f"parameter timeout must be a non-negative integer (µs), got {timeout!r}"
        )
    return priority, timeout
