"""The table of loaded models and their lifecycle: load, reload, unload, warm-up, lookups.

Loading and unloading swap whole :class:`ModelHandle` entries, so traffic to a model keeps flowing
to its old versions while new ones load, and other models never notice. Each model name has its
own lock; a name that is not in the table holds no lock and no memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from forwardpass.config import ServerConfig
from forwardpass.errors import (
    ForwardpassError,
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
from forwardpass.processing.spec import build_processing
from forwardpass.repository import ModelEntry, ModelRepository, warmup_inputs
from forwardpass.repository.warmup import zeros
from forwardpass.results import ModelState
from forwardpass.runtime import Backend, backend_class
from forwardpass.scheduling.batcher import Batcher, BatcherPolicy
from forwardpass.scheduling.layout import BatchLayout
from forwardpass.scheduling.sequence import SequenceBatcher, initial_states

__all__ = ["LoadedVersion", "ModelHandle", "ModelTable"]

log = logging.getLogger("forwardpass.engine")


@dataclass(slots=True)
class LoadedVersion:
    """One served version: its backend instances, batcher and counters.

    An ensemble version has no backend, batcher or executor of its own: its ``pipeline``
    sends each step to the step's model.
    """

    version: int
    backends: list[Backend]
    #: A :class:`SequenceBatcher` when the config has ``sequence_batching``.
    batcher: Batcher | SequenceBatcher | None
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


class ModelTable:
    """The models a server holds, by name, with their lifecycle."""

    def __init__(self, repository: ModelRepository, config: ServerConfig) -> None:
        self.repository = repository
        self.config = config
        self._models: dict[str, ModelHandle] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------ lookups
    def __iter__(self) -> Any:
        return iter([self._models[name] for name in sorted(self._models)])

    def get(self, name: str) -> ModelHandle | None:
        return self._models.get(name)

    def names(self) -> set[str]:
        return set(self._models)

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

    # ------------------------------------------------------------------ lifecycle
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
        chain: tuple[str, ...] = (),
    ) -> None:
        """Load (or reload) a model; old versions keep serving until the new ones are ready.

        Loading an ensemble also loads the models its steps call that are not loaded yet.
        """
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
            try:
                handle = await self._open(name, config_override, files, (*chain, name))
            except ForwardpassError as exc:
                if created and isinstance(exc, NotFound):
                    del self._models[name]  # no such model: leave no UNAVAILABLE ghost behind
                    self._locks.pop(name, None)
                    raise
                old.state = ModelState.READY if old.versions else ModelState.UNAVAILABLE
                old.reason = exc.message
                raise
            self._models[name] = handle
            log.info(
                "model %s READY: versions %s, providers %s",
                name,
                sorted(handle.versions),
                handle.latest.providers if handle.latest else [],
            )
            if old is not handle and old.versions:
                await self._retire(old, "model was reloaded", remove=False)

    async def _open(
        self,
        name: str,
        config_override: Mapping[str, Any] | None,
        files: Mapping[str, bytes] | None,
        chain: tuple[str, ...],
    ) -> ModelHandle:
        """Read, build and warm every version of ``name``: a READY handle, not yet in the table."""
        loop = asyncio.get_running_loop()
        if files:
            await loop.run_in_executor(None, self.repository.write_files, name, files)
        entry = await loop.run_in_executor(
            None, lambda: self.repository.read(name, config_override=config_override)
        )
        pipeline: Pipeline | None = None
        processing: Processing | None = None
        built: dict[int, tuple[list[Backend], ThreadPoolExecutor]] = {}
        if entry.config.is_ensemble:
            pipeline = Pipeline(entry.config)
            await self._load_steps(pipeline, chain)
        else:
            processing = await loop.run_in_executor(
                None, build_processing, entry.config, entry.path, entry.labels
            )
            built = await loop.run_in_executor(None, _build, entry)
        handle = ModelHandle(name=name, state=ModelState.READY, entry=entry, processing=processing)
        _derive(handle)
        for version, (backends, executor) in built.items():
            stats = ModelStats(name, str(version))
            if entry.config.sequence_batching is not None:
                sequencer = SequenceBatcher(
                    entry.config,
                    _sequence_runner(backends),
                    executor,
                    len(backends),
                    initial_states(entry.config, entry.path),
                    listener=stats.on_batch,
                    name=f"{name}:{version}",
                )
                sequencer.start()
                handle.versions[version] = LoadedVersion(
                    version, backends, sequencer, executor, stats
                )
                continue
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
            handle.versions[version] = LoadedVersion(version, backends, batcher, executor, stats)
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
        return handle

    async def _load_steps(self, pipeline: Pipeline, chain: tuple[str, ...]) -> None:
        """Load the models an ensemble calls, unless they already serve."""
        available = set(self.repository.list_models())
        for model in pipeline.models:
            if model not in available:
                raise InvalidModelConfig(f"ensemble step model {model!r} is not in the repository")
            handle = self._models.get(model)
            if handle is None or handle.state is not ModelState.READY:
                await self.load(model, None, None, chain)

    async def unload(self, name: str) -> None:
        """Stop serving a model: queued requests finish, later ones get 503 (UNAVAILABLE)."""
        self.repository.resolve_name(name)  # rejects names that would leave the repository
        if name not in self._models:
            raise NotFound(f"model {name!r} is not loaded")
        async with self._lock(name):
            handle = self._models.get(name)
            if handle is None:
                raise NotFound(f"model {name!r} is not loaded")
            await self._retire(handle, "unloaded")

    async def retire_all(self, reason: str) -> None:
        for name in list(self._models):
            await self._retire(self._models[name], reason)

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


def _build(entry: ModelEntry) -> dict[int, tuple[list[Backend], ThreadPoolExecutor]]:
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
            _warm(entry, backends)
    except BaseException:
        for backends, executor in built.values():
            for backend in backends:
                backend.unload()
            executor.shutdown(wait=False)
        raise
    return built


def _warm(entry: ModelEntry, backends: list[Backend]) -> None:
    """Run the configured warm-up samples on every instance before READY.

    A model without ``model_warmup`` still gets one zero sample of batch 1 when every input has
    fixed dims, so the first real request does not pay for ONNX Runtime's first-run
    allocations; that implicit sample failing is logged, not fatal (zeros are not valid input
    for every model), while a configured sample failing fails the load.
    """
    config = entry.config
    outputs = [o.name for o in config.outputs]
    layout = BatchLayout.from_config(config)  # a sample is a batch of one request
    samples = warmup_inputs(config, entry.path)
    if config.sequence_batching is not None and not samples:
        return  # zeros without the control and state inputs are no request of a sequence
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


def _derive(handle: ModelHandle) -> None:
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


def _runner(backends: list[Backend], outputs: tuple[str, ...]) -> Any:
    def run(instance: int, inputs: dict[str, Any]) -> dict[str, Any]:
        return backends[instance].infer(inputs, outputs)

    return run


def _sequence_runner(backends: list[Backend]) -> Any:
    def run(instance: int, inputs: dict[str, Any], outputs: Any) -> dict[str, Any]:
        return backends[instance].infer(inputs, outputs)

    return run
