"""The engine: find the model version, validate, run the step, answer with typed results.

``Engine.infer`` is the whole inference step: look the version up, validate the inputs
(``validation``), run declared input processing off the event loop, submit to the version's
batcher (or its ensemble pipeline), run output processing, and build the response (``outputs``).
The table of models and their lifecycle lives in ``models``; what the engine answers besides
inference (metadata, index, statistics) are the dataclasses of ``forwardpass.results``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from forwardpass.config import ServerConfig
from forwardpass.engine.cache import ResponseCache, request_key
from forwardpass.engine.models import LoadedVersion, ModelHandle, ModelTable
from forwardpass.engine.outputs import respond
from forwardpass.engine.validation import schedule_params, validate
from forwardpass.errors import ForwardpassError, InternalError
from forwardpass.model_config import ModelConfig, TensorSpec
from forwardpass.processing.base import Processing
from forwardpass.repository import ModelRepository
from forwardpass.repository.warmup import zeros
from forwardpass.results import (
    IndexEntry,
    ModelMetadata,
    ModelState,
    ModelStatistics,
    TensorMetadata,
)
from forwardpass.scheduling.sequence import SequenceBatcher, sequence_flags
from forwardpass.types import InferRequest, InferResponse, Tensor

__all__ = ["Engine"]

log = logging.getLogger("forwardpass.engine")


class Engine:
    """Loads models from a repository and answers inference requests."""

    def __init__(self, repository: ModelRepository, config: ServerConfig | None = None) -> None:
        self.repository = repository
        self.config = config or ServerConfig(model_repository=repository.root)
        self.table = ModelTable(repository, self.config)
        size = self.config.response_cache_bytes
        self.cache = ResponseCache(size) if size else None
        self._processing_pool = ThreadPoolExecutor(
            max_workers=max(2, os.cpu_count() or 1), thread_name_prefix="fp-processing"
        )
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
        await self.table.retire_all("server is shutting down")
        self._processing_pool.shutdown(wait=False)

    @property
    def ready(self) -> bool:
        return self.started and not self.stopping

    async def load(
        self,
        name: str,
        config_override: Mapping[str, Any] | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> None:
        """Load (or reload) a model; old versions keep serving until the new ones are ready."""
        await self.table.load(name, config_override, files)

    async def unload(self, name: str) -> None:
        """Stop serving a model: queued requests finish, later ones get 503 (UNAVAILABLE)."""
        await self.table.unload(name)

    # ------------------------------------------------------------------ lookups
    def handle(self, name: str) -> ModelHandle:
        return self.table.handle(name)

    def version(self, name: str, version: str = "") -> tuple[ModelHandle, LoadedVersion]:
        """The served version named (or the latest); 404 if unknown, 503 if not ready."""
        return self.table.version(name, version)

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.version(name, version)
        except ForwardpassError:
            return False
        return True

    def models(self) -> list[ModelHandle]:
        return list(self.table)

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        """The effective configuration of a served model (Triton's model-configuration API)."""
        return self.version(name, version)[0].config

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Triton's repository index: every model in the repository with its state."""
        try:
            names = set(self.repository.list_models())
        except ForwardpassError:
            names = set()
        names |= self.table.names()
        out: list[IndexEntry] = []
        for name in sorted(names):
            handle = self.table.get(name)
            if handle is None:
                if not ready_only:
                    out.append(IndexEntry(name))
                continue
            if not handle.versions:
                if not ready_only:
                    out.append(IndexEntry(name, "", handle.state, handle.reason))
                continue
            if ready_only and handle.state is not ModelState.READY:
                continue
            reason = handle.reason if handle.state is not ModelState.READY else ""
            for version in sorted(handle.versions):
                provenance = handle.versions[version].provenance
                out.append(
                    IndexEntry(
                        name,
                        str(version),
                        handle.state,
                        reason,
                        str(provenance.optimized_from) if provenance else None,
                        provenance.method if provenance else None,
                    )
                )
        return out

    def metadata(self, name: str, version: str = "") -> ModelMetadata:
        handle, _ = self.version(name, version)
        config = handle.config
        batch = (-1,) if config.batching else ()

        def tensor(spec: TensorSpec) -> TensorMetadata:
            return TensorMetadata(spec.name, spec.datatype, batch + spec.dims)

        return ModelMetadata(
            name=name,
            versions=tuple(str(v) for v in sorted(handle.versions)),
            platform=config.platform or config.backend,
            inputs=tuple(tensor(s) for s in handle.input_specs.values()),
            outputs=tuple(tensor(s) for s in handle.output_specs.values()),
        )

    def stats(self, name: str = "", version: str = "") -> list[ModelStatistics]:
        """Triton's statistics extension for one model, one version, or every model."""
        if name:
            handle = self.handle(name)
            if version:
                _, loaded = self.version(name, version)
                return [loaded.stats.snapshot()]
            return [v.stats.snapshot() for _, v in sorted(handle.versions.items())]
        return [v.stats.snapshot() for h in self.table for _, v in sorted(h.versions.items())]

    # ------------------------------------------------------------------ inference
    async def infer(self, request: InferRequest) -> InferResponse:
        """Validate, queue, run and answer one request."""
        start = time.monotonic_ns()
        handle, loaded = self.version(request.model_name, request.model_version)
        stats = loaded.stats
        try:
            inputs = validate(handle, request)
            priority, timeout = schedule_params(request.parameters)
            cache_key, lookup_ns = None, 0
            if self.cache is not None and handle.config.response_cache.enable:
                began = time.monotonic_ns()
                cache_key = request_key(request, loaded.version)
                cached = self.cache.lookup(cache_key, loaded, request.id)
                lookup_ns = time.monotonic_ns() - began
                if cached is not None:
                    stats.on_cache(True, lookup_ns)
                    stats.on_request(True, time.monotonic_ns() - start)
                    return cached
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
            elif isinstance(loaded.batcher, SequenceBatcher):
                flags = sequence_flags(request.parameters, handle.name)
                inputs = loaded.backends[0].check(inputs)
                outputs, _queue_ns, _compute_ns = await loaded.batcher.submit(inputs, flags)
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
            response = respond(handle, loaded, request, outputs)
            if cache_key is not None and self.cache is not None:
                began = time.monotonic_ns()
                self.cache.insert(cache_key, loaded, response)
                stats.on_cache(False, lookup_ns + time.monotonic_ns() - began)
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
