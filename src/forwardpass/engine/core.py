"""The engine: find the model version, validate, run the step, answer with typed results.

``Engine.infer`` is the whole inference step: look the version up, validate the inputs
(``validation``), run declared input processing off the event loop, submit to the version's
batcher (or its ensemble pipeline), run output processing, and build the response (``outputs``).
The table of models and their lifecycle lives in ``models``; what the engine answers besides
inference (metadata, index, statistics) are the dataclasses of ``forwardpass.results``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from forwardpass.config import ServerConfig
from forwardpass.datatypes import DataType
from forwardpass.engine.cache import ResponseCache, request_key
from forwardpass.engine.models import UNLOADED, LoadedVersion, ModelHandle, ModelTable
from forwardpass.engine.outputs import respond
from forwardpass.engine.validation import schedule_params, validate
from forwardpass.errors import (
    ForwardpassError,
    InternalError,
    NotFound,
    PermissionDenied,
    Unavailable,
    Unsupported,
)
from forwardpass.generation.scheduler import GenerationStream
from forwardpass.generation.tensors import generation_metadata
from forwardpass.model_config import ModelConfig, TensorSpec
from forwardpass.monitor.hub import Stages
from forwardpass.monitor.monitoring import Monitoring
from forwardpass.monitor.trace import Trace, Tracer
from forwardpass.processing.base import Processing
from forwardpass.processing.pool import ProcessingPool, auto_workers
from forwardpass.repository import ModelRepository
from forwardpass.repository.poll import Poller
from forwardpass.repository.warmup import zeros
from forwardpass.results import (
    IndexEntry,
    ModelMetadata,
    ModelState,
    ModelStatistics,
    TensorMetadata,
)
from forwardpass.runtime.base import NamedArrays, RequestContext, Sink
from forwardpass.scheduling.batcher import Batcher
from forwardpass.scheduling.sequence import SequenceBatcher, sequence_flags
from forwardpass.types import InferRequest, InferResponse, Tensor

if TYPE_CHECKING:
    from forwardpass.cluster.peers import Peers

__all__ = ["Engine"]

log = logging.getLogger("forwardpass.engine")


class Engine:
    """Loads models from a repository and answers inference requests."""

    def __init__(self, repository: ModelRepository, config: ServerConfig | None = None) -> None:
        self.repository = repository
        self.config = config or ServerConfig(model_repository=repository.root)
        self.table = ModelTable(repository, self.config)
        #: Triton's trace extension: settings, sampler and trace-file writer.
        self.tracer = Tracer(
            self.config.trace_settings(), opentelemetry=self.config.otel_settings()
        )
        self.table.caller = self  # Python models' BLS calls come back through infer()
        size = self.config.response_cache_bytes
        self.cache = ResponseCache(size) if size else None
        #: The request log and monitors, fed off the hot path (monitor/monitoring.py).
        self.monitoring = Monitoring(self.config)
        self._processing_pool = ThreadPoolExecutor(
            max_workers=max(2, os.cpu_count() or 1), thread_name_prefix="fp-processing"
        )
        # Worker processes for heavy input processing: none start before a request needs them.
        cpus = self.config.processing_cpu_list
        self.processing_pool = ProcessingPool(
            self.config.processing_workers or auto_workers(cpus),
            cpus,
            default=self.config.processing_workers > 0,
        )
        self.started = False
        self.stopping = False
        self._poller: Poller | None = None
        self._poll_task: asyncio.Task[None] | None = None
        #: The sibling worker processes (``serve --workers N``), or ``None`` in a single
        #: process: statistics are summed over them, repository and settings changes made on
        #: all of them (see :mod:`forwardpass.cluster`).
        self.peers: Peers | None = None
        #: Where an ensemble's steps go: this engine, or what :meth:`route_steps` set.
        self._step_infer: Callable[[InferRequest], Awaitable[InferResponse]] = self.infer

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load the models the model control mode asks for; broken ones become UNAVAILABLE.

        In poll mode a task then rescans the repository every ``repository_poll_secs``.
        """
        try:
            names = self.repository.list_models()
        except ForwardpassError as exc:
            log.error("cannot read model repository: %s", exc.message)
            names = []
        if not self.config.loads_all:
            names = list(self.config.load_models)
        self._poller = Poller(self.repository) if self.config.model_control_mode == "poll" else None
        for name in names:
            await self._load_logged(name)
        pool = self.processing_pool
        if any(h.processing is not None and pool.serves(h.processing) for h in self.table):
            pool.start()  # the workers' interpreters start meanwhile, not at the first request
        if self._poller is not None:
            self._poller.scan()  # what was loaded is the baseline
            self._poll_task = asyncio.get_running_loop().create_task(self._poll_forever())
        self.started = True

    async def stop(self) -> None:
        """Finish in-flight requests (up to the grace period) and release every model."""
        self.stopping = True
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
        await self.table.retire_all("server is shutting down")
        self._processing_pool.shutdown(wait=False)
        await asyncio.get_running_loop().run_in_executor(None, self.processing_pool.close)
        # After the models: traces of the requests that just finished are written too.
        await asyncio.get_running_loop().run_in_executor(None, self.tracer.close)
        await asyncio.get_running_loop().run_in_executor(None, self.monitoring.close)

    async def _load_logged(self, name: str) -> None:
        try:
            await self.table.load(name)
        except ForwardpassError as exc:
            log.error("model %s is UNAVAILABLE: %s", name, exc.message)
            return
        handle = self.table.get(name)
        if handle is not None:  # its monitors are built now, not at its first requests
            await asyncio.get_running_loop().run_in_executor(None, self.monitoring.prepare, handle)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.repository_poll_secs)
            try:
                await self.poll()
            except Exception:  # a failed scan must not end polling
                log.exception("repository poll failed")

    async def poll(self) -> None:
        """Poll mode: load new and changed models, unload the ones removed from the repository."""
        assert self._poller is not None
        changes = await asyncio.get_running_loop().run_in_executor(None, self._poller.scan)
        for name in changes.removed:
            if self.table.get(name) is not None:
                log.info("model %s left the repository: unloading", name)
                with contextlib.suppress(NotFound):
                    await self.table.unload(name, forget=True)
        for name in (*changes.added, *changes.changed):
            log.info("model %s %s: loading", name, "added" if name in changes.added else "changed")
            await self._load_logged(name)

    @property
    def ready(self) -> bool:
        """Server readiness. Strict (the default, as in Triton): every model the server was
        asked to load is READY, except the ones unloaded on purpose."""
        if not self.started or self.stopping:
            return False
        if not self.config.strict_readiness:
            return True
        return all(
            h.state is ModelState.READY
            or (h.state is ModelState.UNAVAILABLE and h.reason == UNLOADED)
            for h in self.table
        )

    def _control(self, files: Mapping[str, bytes] | None = None) -> None:
        """The repository load/unload API is allowed in explicit mode only (as in Triton);
        uploads only when also opted in."""
        mode = self.config.model_control_mode
        if mode != "explicit":
            raise Unavailable(
                "explicit model load / unload is not allowed if polling is enabled "
                f"(model control mode is {mode}; start the server with "
                "--model-control-mode=explicit to load and unload models through the API)"
            )
        if files and not self.config.allow_model_upload:
            raise PermissionDenied(
                "model upload (file: load parameters) is disabled: an uploaded model is code "
                "the server runs; start the server with --model-control-mode=explicit "
                "--allow-model-upload to accept uploads"
            )

    async def load(
        self,
        name: str,
        config_override: Mapping[str, Any] | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> None:
        """The repository load API: load (or reload) a model; old versions keep serving until
        the new ones are ready. Explicit model control only."""
        self._control(files)
        handle = self.table.get(name)
        was_serving = handle is not None and handle.state is ModelState.READY
        await self.table.load(name, config_override, files)
        if self.peers is not None:
            await self.peers.share_load(name, config_override, files, was_serving)

    async def unload(self, name: str) -> None:
        """The repository unload API: stop serving a model; queued requests finish, later
        ones get 503 (UNAVAILABLE). Explicit model control only."""
        self._control()
        await self.table.unload(name)
        await self.share("unload", name)

    async def share(self, op: str, *args: Any) -> None:
        """A change just made here (``unload``, ``trace`` or ``log`` settings) that applies
        to every worker process: make it on the siblings too (nothing in a single process)."""
        if self.peers is not None:
            from forwardpass.cluster.peers import Call

            await self.peers.share(Call(op, args))

    def route_steps(self, infer: Callable[[InferRequest], Awaitable[InferResponse]]) -> None:
        """Send ensemble steps to ``infer`` instead of this engine (on Ray: to the steps'
        own deployments); the step models are then not loaded here. Call before loading."""
        self._step_infer = infer
        self.table.remote_steps = True

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
                        handle.versions[version].execution,
                    )
                )
        return out

    def metadata(self, name: str, version: str = "") -> ModelMetadata:
        handle, loaded = self.version(name, version)
        config = handle.config
        if loaded.generator is not None:  # the generate extension's view, not the decoder's
            versions = tuple(str(v) for v in sorted(handle.versions))
            return generation_metadata(name, versions, config.platform or config.backend)
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

    async def statistics(self, name: str = "", version: str = "") -> list[ModelStatistics]:
        """:meth:`stats` of the whole server: summed over the worker processes, if several."""
        local = self.stats(name, version)
        if self.peers is None:
            return local
        return await self.peers.statistics(local, name, version)

    # ------------------------------------------------------------------ inference
    async def infer(
        self, request: InferRequest, trace: Trace | None = None, *, sampled: bool = False
    ) -> InferResponse:
        """Validate, queue, run and answer one request.

        ``trace`` is the protocol's trace of this request when it sampled one: it stamps its
        own activities (HTTP receive and send) around this call and finishes the trace.
        Otherwise the engine samples here and finishes the trace it took. The trace is an
        argument, not a field of :class:`InferRequest` (core types know nothing of tracing or
        a wire) nor a context variable (an ensemble's steps call ``infer`` from inside this
        call and would silently inherit, and stamp, their parent's trace). ``sampled``: the
        protocol has sampled this request already (``trace`` is None: it was not picked),
        so the engine does not sample it a second time.
        """
        start = time.monotonic_ns()
        handle, loaded = self.version(request.model_name, request.model_version)
        if loaded.generator is not None:
            raise Unsupported(
                f"model {handle.name!r} is a generation model: send text to "
                f"/v2/models/{handle.name}/generate (or generate_stream)"
            )
        if handle.config.decoupled:
            raise Unsupported(
                f"model {handle.name!r} uses the decoupled transaction policy (0..n responses "
                "per request), which a single-response inference cannot carry; stream it "
                "(HTTP: Accept: text/event-stream; gRPC: ModelStreamInfer)"
            )
        own: Trace | None = None
        if trace is None and not sampled and self.tracer.active:
            trace = own = self.tracer.sample(request.model_name)
        if trace is not None:
            trace.model_version = str(loaded.version)
            trace.request_id = request.id
            trace.stamp("REQUEST_START", start)
        stats = loaded.stats
        wall = 0.0
        inputs: dict[str, np.ndarray] = {}
        stages = self.monitoring.stages(handle)  # None: the model is not monitored
        if stages is not None:
            wall = time.time()
            if not request.id:
                request.id = self.monitoring.new_id()  # returned as the response's id
        try:
            inputs = validate(handle, request)
            priority, timeout = schedule_params(request.parameters)
            if self.cache is not None and handle.config.response_cache.enable:
                response = await self._cached(
                    handle, loaded, request, inputs, priority, timeout, trace, stages
                )
            else:
                response = await self._compute(
                    handle, loaded, request, inputs, priority, timeout, trace, stages
                )
        except ForwardpassError as exc:
            stats.on_request(False, time.monotonic_ns() - start, exc.code)
            if stages is not None:
                self.monitoring.tap(handle, loaded, request, inputs, wall, start, stages, error=exc)
            raise
        finally:
            # A cache hit, a failure and a success all end (and write) the trace.
            if trace is not None:
                trace.stamp("REQUEST_END")
                if own is not None:
                    own.finish()
        stats.on_request(True, time.monotonic_ns() - start)
        if stages is not None:
            self.monitoring.tap(handle, loaded, request, inputs, wall, start, stages, response)
        return response

    async def _cached(
        self,
        handle: ModelHandle,
        loaded: LoadedVersion,
        request: InferRequest,
        inputs: dict[str, np.ndarray],
        priority: int,
        timeout: int | None,
        trace: Trace | None,
        stages: Stages | None = None,
    ) -> InferResponse:
        """The response cache in front of :meth:`_compute` (``response_cache`` enabled)."""
        assert self.cache is not None
        stats = loaded.stats
        began = time.monotonic_ns()
        key = request_key(request, loaded.version)
        cached = self.cache.lookup(key, loaded, request.id)
        lookup_ns = time.monotonic_ns() - began
        if stages is not None:
            # A hit is recorded too, with its cached outputs; the drift monitor counts the
            # profile of the request that filled the entry (same key) again.
            stages.cache_key, stages.cached = key, cached is not None
        if cached is not None:
            stats.on_cache(True, lookup_ns)
            return cached
        response = await self._compute(
            handle, loaded, request, inputs, priority, timeout, trace, stages
        )
        began = time.monotonic_ns()
        self.cache.insert(key, loaded, response)
        stats.on_cache(False, lookup_ns + time.monotonic_ns() - began)
        return response

    async def _compute(
        self,
        handle: ModelHandle,
        loaded: LoadedVersion,
        request: InferRequest,
        inputs: dict[str, np.ndarray],
        priority: int,
        timeout: int | None,
        trace: Trace | None,
        stages: Stages | None = None,
    ) -> InferResponse:
        """Processing, the model (its batcher, sequence batcher or ensemble), the response.

        ``stages``, when the request is monitored, receives its time by stage."""
        stats = loaded.stats
        processing = handle.processing
        pre_ns = post_ns = 0
        extra: dict[str, np.ndarray] = {}
        if processing is not None and processing.inputs:
            began = time.monotonic_ns()
            inputs = await self._preprocess(handle, processing, inputs)
            if trace is not None:
                trace.stamp("PREPROCESS_START", began)
                trace.stamp("PREPROCESS_END")
            # What processing adds beside the model's inputs (image geometry) stays here,
            # for the output steps; the model sees only its own inputs.
            for key in [k for k in inputs if k not in handle.model_inputs]:
                extra[key] = inputs.pop(key)
            pre_ns = time.monotonic_ns() - began
        if loaded.pipeline is not None:
            specs = handle.input_specs
            tensors = {n: Tensor(n, specs[n].datatype, a) for n, a in inputs.items()}
            produced = await loaded.pipeline.run(self._step_infer, tensors, request.id)
            outputs = {n: t.data for n, t in produced.items()}
        elif isinstance(loaded.batcher, SequenceBatcher):
            flags = sequence_flags(request.parameters, handle.name)
            inputs = loaded.backends[0].check(inputs)
            outputs, queue_ns, compute_ns = await loaded.batcher.submit(inputs, flags)
            if stages is not None:
                stages.queue_ns, stages.compute_ns = queue_ns, compute_ns
        else:
            assert isinstance(loaded.batcher, Batcher)
            backend = loaded.backends[0]
            inputs = backend.check(inputs)
            context = _context(request) if backend.unmerged else None
            try:
                if trace is None:
                    outputs, queue_ns, compute_ns = await loaded.batcher.submit(
                        inputs, priority=priority, timeout_us=timeout, context=context
                    )
                    if stages is not None:
                        stages.queue_ns, stages.compute_ns = queue_ns, compute_ns
                else:
                    outputs = await _traced_submit(
                        trace, loaded, handle.config, inputs, priority, timeout, context, stages
                    )
            except InternalError as exc:
                if not _no_rows(handle.config, inputs):
                    raise
                # Triton runs the backend on zero rows, and so does the engine (above);
                # only where the network cannot run them does it answer zero rows itself.
                log.debug("model %s cannot run zero rows (%s)", handle.name, exc.message)
                outputs = _zero_rows(handle.config)
        model_outputs = outputs
        if processing is not None and processing.outputs:
            began = time.monotonic_ns()
            outputs = _guarded(processing.postprocess, outputs, {**inputs, **extra})
            post_ns = time.monotonic_ns() - began
            if trace is not None:
                trace.stamp("POSTPROCESS_START", began)
                trace.stamp("POSTPROCESS_END", began + post_ns)
        if pre_ns or post_ns:
            stats.on_processing(pre_ns, post_ns)
            if stages is not None:
                stages.preprocess_ns, stages.postprocess_ns = pre_ns, post_ns
        if stages is not None and stages.capture:
            # References (no copies) for the drift monitor: the model's own inputs and outputs.
            stages.model_inputs, stages.model_outputs, stages.extra = inputs, model_outputs, extra
        return respond(handle, loaded, request, outputs)

    def generate(
        self, name: str, version: str, text: str, parameters: dict[str, Any], request_id: str = ""
    ) -> GenerationStream:
        """Queue ``text`` on generation model ``name`` (Triton's generate extension, and any
        other text front end): its events arrive on the returned stream, which the caller
        iterates, or cancels when its client goes away. 400 for bad parameters or a prompt
        over the context; 503 when no cache slot can be had (see ``generation.scheduler``)."""
        handle, loaded = self.version(name, version)
        if loaded.generator is None:
            raise Unsupported(
                f"model {handle.name!r} is not a generation model (its config has no "
                "'generation' parameter); use the inference API"
            )
        return loaded.generator.submit_text(text, parameters, request_id)

    async def infer_stream(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        """The responses to one request as they come: a decoupled model's 0..n, in the order
        it sends them, or any other model's one. An error ends the stream by raising.

        This is what a streaming wire carries: HTTP server-sent events, gRPC
        ``ModelStreamInfer`` (one ``ModelStreamInferResponse`` per item, the error as its
        ``error_message``)."""
        handle, loaded = self.version(request.model_name, request.model_version)
        if not handle.config.decoupled:
            yield await self.infer(request)
            return
        start = time.monotonic_ns()
        stats = loaded.stats
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[NamedArrays | None, ForwardpassError | None, bool]]
        queue = asyncio.Queue()

        def sink(outputs: NamedArrays | None, error: ForwardpassError | None, final: bool) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (outputs, error, final))

        ok = False
        try:
            inputs = validate(handle, request)
            priority, timeout = schedule_params(request.parameters)
            assert isinstance(loaded.batcher, Batcher)
            inputs = loaded.backends[0].check(inputs)
            submitted = asyncio.ensure_future(
                loaded.batcher.submit(
                    inputs, priority=priority, timeout_us=timeout, context=_context(request, sink)
                )
            )
            # Retrieved below or never needed (the stream ended first): never "unretrieved".
            submitted.add_done_callback(lambda f: f.cancelled() or f.exception())
            while True:
                getter = asyncio.ensure_future(queue.get())
                waiting: set[asyncio.Future[Any]] = {getter}
                if not submitted.done():
                    waiting.add(submitted)
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    submitted.result()  # execute() failed: raise its error
                    continue
                outputs, error, final = getter.result()
                if error is not None:
                    raise error
                if outputs is not None:
                    response = respond(handle, loaded, request, outputs)
                    response.final = final
                    yield response
                if final:
                    break
            ok = True
        except ForwardpassError as exc:
            stats.on_request(False, time.monotonic_ns() - start, exc.code)
            raise
        finally:
            if ok:
                stats.on_request(True, time.monotonic_ns() - start)

    async def _preprocess(
        self, handle: ModelHandle, processing: Processing, inputs: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Decode/tokenize off the event loop: image decoding takes milliseconds. In the
        processing pool's worker processes when the server or the model asks for them."""
        if self.processing_pool.serves(processing):
            assert handle.entry is not None
            datatypes = {n: s.datatype for n, s in handle.input_specs.items()}
            return await self.processing_pool.preprocess(
                handle.entry, processing, inputs, datatypes
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._processing_pool, _guarded, processing.preprocess, inputs
        )


async def _traced_submit(
    trace: Trace,
    loaded: LoadedVersion,
    config: ModelConfig,
    inputs: dict[str, np.ndarray],
    priority: int,
    timeout: int | None,
    context: RequestContext | None = None,
    stages: Stages | None = None,
) -> dict[str, np.ndarray]:
    """The batcher step of a traced request: queue and compute timestamps, and the tensors
    at level TENSORS (the model's inputs as queued, its outputs as the backend gave them)."""
    assert isinstance(loaded.batcher, Batcher)
    if trace.with_tensors:
        for name, array in inputs.items():
            trace.tensor("TENSOR_QUEUE_INPUT", name, _datatype(config.inputs, name, array), array)
    stamps: list[int] = []
    trace.stamp("QUEUE_START")
    outputs, queue_ns, compute_ns = await loaded.batcher.submit(
        inputs, priority=priority, timeout_us=timeout, stamps=stamps, context=context
    )
    if stages is not None:
        stages.queue_ns, stages.compute_ns = queue_ns, compute_ns
    if len(stamps) == 4:
        for name, ns in zip(_COMPUTE_ACTIVITIES, stamps, strict=True):
            trace.stamp(name, ns)
    if trace.with_tensors:
        for name, array in outputs.items():
            trace.tensor(
                "TENSOR_BACKEND_OUTPUT", name, _datatype(config.outputs, name, array), array
            )
    return outputs


_COMPUTE_ACTIVITIES = ("COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END")


def _datatype(
    specs: tuple[TensorSpec, ...] | list[TensorSpec], name: str, array: np.ndarray
) -> DataType:
    for spec in specs:
        if spec.name == name:
            return spec.datatype
    return DataType.from_numpy(array.dtype)


def _context(request: InferRequest, sink: Sink | None = None) -> RequestContext:
    """What an unmerged backend is told about ``request``."""
    params = request.parameters
    flags = (1 if params.get("sequence_start") else 0) | (2 if params.get("sequence_end") else 0)
    return RequestContext(
        id=request.id,
        parameters=params,
        outputs=tuple(o.name for o in request.outputs) if request.outputs is not None else None,
        correlation_id=params.get("sequence_id", 0),
        flags=flags,
        sink=sink,
    )


def _no_rows(config: ModelConfig, inputs: Mapping[str, np.ndarray]) -> bool:
    """Whether a model without batching was sent zero rows.

    True when every input and output declares a variable leading axis (rows in, rows out)
    and every input is empty along it: an ensemble step after a detector that found nothing.
    Many networks cannot run an empty tensor (an ONNX ``Reshape`` to ``[0, C, -1]`` fails);
    when the backend fails on such a request there was nothing to compute, so the engine
    answers zero rows instead of the failure.
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
