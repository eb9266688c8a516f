"""The table of loaded models and their lifecycle: load, reload, unload, warm-up, lookups.

Loading and unloading swap whole :class:`ModelHandle` entries, so traffic to a model keeps flowing
to its old versions while new ones load, and other models never notice. Each model name has its
own lock; a name that is not in the table holds no lock and no memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from forwardpass.config import ServerConfig
from forwardpass.errors import (
    ForwardpassError,
    InvalidArgument,
    InvalidModelConfig,
    NotFound,
    Unavailable,
)
from forwardpass.generation.model import GenerationModel, load_generation
from forwardpass.generation.settings import GenerationSettings
from forwardpass.model_config import ModelConfig, TensorSpec
from forwardpass.monitor.stats import ModelStats
from forwardpass.optimize.provenance import Provenance, read_provenance
from forwardpass.pipeline import Pipeline
from forwardpass.processing.base import Processing
from forwardpass.processing.spec import build_processing
from forwardpass.repository import ModelEntry, ModelRepository, warmup_inputs
from forwardpass.repository.repository import check_name, describe_os_error
from forwardpass.repository.upload import Upload, stage_upload
from forwardpass.repository.warmup import zeros
from forwardpass.results import InstanceExecution, ModelState
from forwardpass.runtime import Backend, backend_class
from forwardpass.scheduling.batcher import Batcher, BatcherPolicy
from forwardpass.scheduling.layout import BatchLayout
from forwardpass.scheduling.sequence import SequenceBatcher, initial_states

__all__ = ["UNLOADED", "LoadedVersion", "ModelHandle", "ModelTable"]

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
    #: A generation model's version (config parameter ``generation``): its scheduler.
    generator: GenerationModel | None = None

    @property
    def providers(self) -> list[str]:
        return self.backends[0].providers if self.backends else []

    @property
    def execution(self) -> tuple[InstanceExecution, ...]:
        """Each instance's providers and precision, as the backend found them at load."""
        return tuple(
            InstanceExecution(tuple(b.providers), b.precision, bool(b.fallback_warnings))
            for b in self.backends
        )


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


#: The reason an unloaded model gives (strict readiness does not wait for it).
UNLOADED = "unloaded"


@dataclass(slots=True)
class _LockSlot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class ModelTable:
    """The models a server holds, by name, with their lifecycle."""

    def __init__(self, repository: ModelRepository, config: ServerConfig) -> None:
        self.repository = repository
        self.config = config
        self._models: dict[str, ModelHandle] = {}
        self._locks: dict[str, _LockSlot] = {}
        #: What backends that call other models (Python BLS) call: the engine.
        self.caller: Any = None
        #: Ensemble steps run elsewhere (Ray: their own deployments): do not load them here.
        self.remote_steps = False

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
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        return handle

    def version(self, name: str, version: str = "") -> tuple[ModelHandle, LoadedVersion]:
        """The served version named (or the latest); 404 if unknown, 503 if not ready."""
        # Messages begin with Triton's (core model_repository_manager + model_lifecycle), which
        # clients match on ("Request for unknown model"); forwardpass's detail follows.
        handle = self._models.get(name)
        if handle is None:
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        if handle.state is not ModelState.READY or handle.latest is None:
            what = (
                f"version {version} is not at ready state"
                if version
                else "has no available versions"
            )
            raise Unavailable(
                f"Request for unknown model: '{name}' {what} (model {name!r} is not ready: "
                f"{handle.state.value}" + (f": {handle.reason})" if handle.reason else ")")
            )
        if not version:
            return handle, handle.latest
        try:
            loaded = handle.versions.get(int(version))
        except ValueError:
            raise InvalidArgument(f"model version must be an integer, got {version!r}") from None
        if loaded is None:
            raise NotFound(
                f"Request for unknown model: '{name}' version {version} is not found "
                f"(serving versions {sorted(handle.versions)})"
            )
        return handle, loaded

    # ------------------------------------------------------------------ lifecycle
    @contextlib.asynccontextmanager
    async def _locked(self, name: str) -> AsyncIterator[None]:
        """Hold ``name``'s lock; the lock exists only while someone holds or waits for it, so
        names that come and go (unknown ones above all) leave nothing behind."""
        slot = self._locks.get(name)
        if slot is None:
            slot = self._locks[name] = _LockSlot()
        slot.users += 1
        try:
            async with slot.lock:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._locks[name]

    async def load(
        self,
        name: str,
        config_override: Mapping[str, Any] | None = None,
        files: Mapping[str, bytes] | None = None,
        chain: tuple[str, ...] = (),
    ) -> None:
        """Load (or reload) a model; old versions keep serving until the new ones are ready.

        Uploaded ``files`` are staged and the model loads from them; they replace the files in
        the repository only once it is READY. Loading an ensemble also loads the models its
        steps call that are not loaded yet. Every failure is a :class:`ForwardpassError` whose
        message names no server path; a model that is not in the repository leaves no entry.
        """
        check_name(name)  # rejects names that would leave the repository
        if name in chain:
            raise InvalidModelConfig(f"ensembles call each other in a loop: {' -> '.join(chain)}")
        if not files and name not in self._models and not self.repository.exists(name):
            raise NotFound(f"model {name!r} is not in the repository")
        try:
            async with self._locked(name):
                await self._load_locked(name, config_override, files, chain)
        except ForwardpassError as exc:
            exc.message = self._scrub(exc.message)
            exc.args = (exc.message,)
            raise

    async def _load_locked(
        self,
        name: str,
        config_override: Mapping[str, Any] | None,
        files: Mapping[str, bytes] | None,
        chain: tuple[str, ...],
    ) -> None:
        loop = asyncio.get_running_loop()
        upload: Upload | None = None
        if files:
            upload = await loop.run_in_executor(None, stage_upload, self.repository, name, files)
        old = self._models.get(name)
        created = old is None
        if old is None:
            old = self._models[name] = ModelHandle(name=name, state=ModelState.LOADING)
        elif old.state is not ModelState.READY:
            old.state = ModelState.LOADING
        handle: ModelHandle | None = None
        try:
            folder = upload.folder if upload is not None else None
            try:
                handle = await self._open(name, config_override, folder, (*chain, name))
            except OSError as exc:
                raise InvalidModelConfig(
                    f"cannot load model {name!r}: {describe_os_error(exc, self.repository.root)}"
                ) from exc
            if upload is not None:
                assert handle.entry is not None
                entry = handle.entry
                await loop.run_in_executor(None, upload.commit, entry.config, config_override)
                upload = None
                handle.entry = replace(
                    entry,
                    path=self.repository.resolve_name(name),
                    config_file=self.repository.config_file(name) if config_override else None,
                )
        except ForwardpassError as exc:
            if handle is not None:
                await self._retire(handle, "load failed")
            if created and not self.repository.exists(name):
                # Not in the repository (or an upload that failed): leave no ghost behind.
                del self._models[name]
                raise
            old.state = ModelState.READY if old.versions else ModelState.UNAVAILABLE
            old.reason = self._scrub(exc.message)
            raise
        finally:
            if upload is not None:
                await loop.run_in_executor(None, upload.discard)
        self._models[name] = handle
        log.info(
            "model %s READY: versions %s, providers %s",
            name,
            sorted(handle.versions),
            handle.latest.providers if handle.latest else [],
        )
        if old is not handle and old.versions:
            await self._retire(old, "model was reloaded", remove=False)

    def _scrub(self, message: str) -> str:
        """``message`` without the repository's server path (file names stay relative)."""
        root = str(self.repository.root)
        return message.replace(root + os.sep, "").replace(root, "<repository>")

    async def _open(
        self,
        name: str,
        config_override: Mapping[str, Any] | None,
        folder: Path | None,
        chain: tuple[str, ...],
    ) -> ModelHandle:
        """Read, build and warm every version of ``name``: a READY handle, not yet in the table."""
        loop = asyncio.get_running_loop()
        entry = await loop.run_in_executor(
            None, lambda: self.repository.read(name, config_override=config_override, folder=folder)
        )
        entry = _thread_default(entry, self.config.intra_op_threads)
        pipeline: Pipeline | None = None
        processing: Processing | None = None
        built: dict[int, tuple[list[Backend], ThreadPoolExecutor]] = {}
        generation = GenerationSettings.from_config(entry.config)
        if generation is not None:
            return await self._open_generation(name, entry, generation)
        if entry.config.is_ensemble:
            pipeline = Pipeline(entry.config)
            if not self.remote_steps:
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
            for backend in backends:
                backend.bind(loop, self.caller)
            batcher = Batcher(
                _runner(backends, handle.output_names),
                policy,
                executor,
                listener=stats.on_batch,
                name=f"{name}:{version}",
                run_requests=_requests_runner(backends) if backends[0].unmerged else None,
                inline_ns=self.config.inline_batch_us * 1000 if backends[0].inline_safe else 0,
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

    async def _open_generation(
        self, name: str, entry: ModelEntry, settings: GenerationSettings
    ) -> ModelHandle:
        """A generation model: one scheduler per version instead of backends and a batcher."""
        loop = asyncio.get_running_loop()
        handle = ModelHandle(name=name, state=ModelState.READY, entry=entry)
        _derive(handle)
        for version in entry.versions:
            model = await loop.run_in_executor(
                None, load_generation, entry.config, entry.path, version, settings
            )
            model.scheduler.start()
            handle.versions[version] = LoadedVersion(
                version, [], None, None, ModelStats(name, str(version)), generator=model
            )
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

    async def unload(self, name: str, forget: bool = False) -> None:
        """Stop serving a model: queued requests finish, later ones get 503 (UNAVAILABLE).

        ``forget`` also drops its entry (the model left the repository).
        """
        check_name(name)  # rejects names that would leave the repository
        if name not in self._models:
            raise NotFound(f"model {name!r} is not loaded")
        async with self._locked(name):
            handle = self._models.get(name)
            if handle is None:
                raise NotFound(f"model {name!r} is not loaded")
            await self._retire(handle, UNLOADED)
            if forget:
                del self._models[name]

    async def retire_all(self, reason: str) -> None:
        for name in list(self._models):
            await self._retire(self._models[name], reason)

    async def _retire(self, handle: ModelHandle, reason: str, remove: bool = True) -> None:
        handle.state = ModelState.UNLOADING
        versions = list(handle.versions.values())
        await asyncio.gather(
            *(v.batcher.close(self.config.shutdown_grace_s) for v in versions if v.batcher),
            *(
                v.generator.scheduler.close(self.config.shutdown_grace_s)
                for v in versions
                if v.generator
            ),
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


def _thread_default(entry: ModelEntry, threads: int) -> ModelEntry:
    """The server's ONNX Runtime intra-op thread count for a model whose config names none
    (``--workers N`` sets 1, so that N processes do not each start a thread per core)."""
    config = entry.config
    if (
        not threads
        or (config.backend or config.platform) not in ("onnxruntime", "onnxruntime_onnx", "onnx")
        or "intra_op_thread_count" in config.parameters
    ):
        return entry
    parameters = {**config.parameters, "intra_op_thread_count": str(threads)}
    return replace(entry, config=replace(config, parameters=parameters))


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
    if backends and backends[0].unmerged:
        return  # user code (Python models): zeros are not its input; Triton runs none either
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


def _requests_runner(backends: list[Backend]) -> Any:
    def run(instance: int, inputs: list[Any], contexts: list[Any]) -> list[Any]:
        return backends[instance].infer_requests(inputs, contexts)

    return run


def _sequence_runner(backends: list[Backend]) -> Any:
    def run(instance: int, inputs: dict[str, Any], outputs: Any) -> dict[str, Any]:
        return backends[instance].infer(inputs, outputs)

    return run
