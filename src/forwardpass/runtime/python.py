"""The Python backend: a model written in Python, each instance in its own stub process.

A model folder holds ``<version>/model.py`` defining Triton's ``TritonPythonModel``
(``initialize``/``execute``/``finalize``, optional static ``auto_complete_config``), or its
config names a native class (``parameters { key: "class" value { string_value: "mod:Cls" } }``,
see :mod:`forwardpass.runtime.python_stub.native`). Each instance runs
``python -m forwardpass.runtime.python_stub`` with the server's interpreter; tensors cross
the boundary through shared memory (:mod:`forwardpass.runtime.ipc`).

Failure handling: an instance whose process exits (a crash, ``sys.exit``) or whose
``execute`` runs past ``execute_timeout_s`` (model parameter, seconds, default 60; 0 waits
forever) is killed and started again; the requests it held are answered with a 500 naming the
model, and the other instances and models keep serving. What ``execute`` returns is checked
against the config: one response per request, every requested output present, in the
declared datatype and shape, or that request fails with a message naming the output.

BLS: a model's ``pb_utils.InferenceRequest(...).exec()`` reaches the parent as a message; it
runs through ``Engine.infer`` (so the called model's batcher), and the response or error goes
back. Decoupled models (``model_transaction_policy { decoupled: true }``) send 0..n
responses per request through ``request.get_response_sender()``; they reach the engine's
:class:`~forwardpass.runtime.base.RequestContext` ``sink``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.datatypes import DataType
from forwardpass.errors import (
    ForwardpassError,
    InternalError,
    InvalidArgument,
    InvalidModelConfig,
    NotFound,
    Unavailable,
    Unsupported,
)
from forwardpass.model_config import ModelConfig, TensorSpec
from forwardpass.runtime import ipc
from forwardpass.runtime.base import Backend, NamedArrays, RequestContext

__all__ = ["PythonBackend", "complete_python_config"]

log = logging.getLogger("forwardpass.runtime.python")

_DEFAULT_EXECUTE_TIMEOUT_S = 60.0
_DEFAULT_START_TIMEOUT_S = 120.0
_LOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.DEBUG}
# pb_utils.TritonError codes → our errors.
_ERROR_CODES: dict[int, type[ForwardpassError]] = {
    2: NotFound,
    3: InvalidArgument,
    4: Unavailable,
    5: Unsupported,
}
_TRITON_CODES = {"INVALID_ARG": 3, "NOT_FOUND": 2, "UNAVAILABLE": 4, "UNSUPPORTED": 5}


def _seconds(params: Mapping[str, str], key: str, default: float) -> float:
    if key not in params:
        return default
    try:
        value = float(params[key])
    except ValueError:
        raise InvalidModelConfig(f"parameter {key} must be a number of seconds") from None
    if value < 0:
        raise InvalidModelConfig(f"parameter {key} must be >= 0, got {params[key]!r}")
    return value


def _stub_message(config: ModelConfig, version_dir: Path) -> dict[str, Any]:
    """What the stub needs to find the model's code."""
    paths = [p for p in config.parameters.get("module_path", "").split(os.pathsep) if p]
    return {
        "version_dir": str(version_dir),
        "filename": config.default_model_filename or "model.py",
        "class": config.parameters.get("class", ""),
        "paths": paths,
    }


class _Process:
    """One running stub: the process, its channel and the reader thread."""

    def __init__(self, label: str) -> None:
        self.label = label
        channel, theirs, to_stub, from_stub = ipc.channel_pair()
        self.channel = channel
        fds = [theirs.fileno(), to_stub.fd, from_stub.fd]
        argv = [
            sys.executable,
            "-m",
            "forwardpass.runtime.python_stub",
            str(theirs.fileno()),
            str(to_stub.fd),
            str(to_stub.size),
            str(from_stub.fd),
            str(from_stub.size),
        ]
        try:
            # Model code's prints go to the server's stderr (its log), never its stdout.
            self.proc = subprocess.Popen(argv, pass_fds=fds, stdin=subprocess.DEVNULL, stdout=2)
        finally:
            theirs.close()
        self.replies: concurrent.futures.Future[dict[str, Any]] | None = None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a zombie we cannot reap
            pass
        self.channel.close()
        self.channel.out.close()
        self.channel.inp.close()

    def exit_reason(self) -> str:
        try:  # the channel closes a moment before the process can be reaped
            code: int | None = self.proc.wait(2)
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            return "its process stopped answering"
        if code < 0:
            import signal

            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return f"its process was killed by signal {name}"
        return f"its process exited with code {code}"


def _control(process: _Process, message: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """Send a control message and wait for the stub's one reply (before the reader starts)."""
    process.channel.send(message)
    result: dict[str, Any] = {}
    done = threading.Event()

    def wait() -> None:
        try:
            result.update(process.channel.recv()[0])
        except ipc.ChannelClosed:
            pass
        done.set()

    while True:
        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        if not done.wait(timeout):
            process.kill()
            raise InternalError(f"{process.label}: no answer after {timeout:.0f}s")
        if not result:
            raise InternalError(f"{process.label}: {process.exit_reason()}")
        if result.get("op") != "log":
            return result
        _log(process.label, result)
        result.clear()
        done.clear()


def _log(label: str, message: dict[str, Any]) -> None:
    log.log(
        _LOG_LEVELS.get(int(message.get("level", 0)), logging.INFO),
        "%s: %s",
        label,
        message.get("message", ""),
    )


def complete_python_config(
    raw: dict[str, Any], version_dir: Path, timeout: float = _DEFAULT_START_TIMEOUT_S
) -> dict[str, Any]:
    """Run the model's ``auto_complete_config`` (or the native class's declarations) in a
    stub process on the Triton-JSON config ``raw``; the completed config dict.

    This runs the model's code (its module is imported), as Triton does at load.
    """
    draft_config = ModelConfig(name=str(raw.get("name", "")), backend="python")
    params = {
        k: (v.get("string_value", "") if isinstance(v, Mapping) else str(v))
        for k, v in (raw.get("parameters") or {}).items()
    }
    message = _stub_message(
        ModelConfig(
            name=draft_config.name,
            backend="python",
            parameters=params,
            default_model_filename=str(raw.get("default_model_filename") or "model.py"),
        ),
        version_dir,
    )
    process = _Process(f"model {draft_config.name!r} auto-complete")
    try:
        reply = _control(process, {"op": "complete", "config": raw, **message}, timeout)
    finally:
        process.kill()
    if reply.get("op") != "completed":
        raise InvalidModelConfig(
            f"model {draft_config.name!r}: auto_complete_config failed: {reply.get('error')}"
        )
    config: dict[str, Any] = reply["config"]
    return config


class PythonBackend(Backend):
    """One instance of a Python model: a stub process (see the module docstring)."""

    name = "python"
    unmerged = True

    def __init__(self, config: ModelConfig, version_dir: Path, instance: int = 0) -> None:
        super().__init__(config, version_dir, instance)
        self.label = f"model {config.name!r} (instance {instance})"
        self._process: _Process | None = None
        self._lock = threading.Lock()  # guards starting and stopping the process
        self._batches: dict[int, concurrent.futures.Future[tuple[dict[str, Any], NamedArrays]]]
        self._batches = {}
        self._streams: dict[int, RequestContext] = {}
        self._ids = itertools.count(1)
        self._state_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._caller: Any = None
        self._closing = False
        self._failure = ""

    # ------------------------------------------------------------------ lifecycle
    def _load(self) -> None:
        params = self.config.parameters
        self.execute_timeout = _seconds(params, "execute_timeout_s", _DEFAULT_EXECUTE_TIMEOUT_S)
        self.start_timeout = _seconds(params, "initialize_timeout_s", _DEFAULT_START_TIMEOUT_S)
        target = params.get("class", "")
        if not target and not (self.version_dir / self.config.default_model_filename).is_file():
            raise InvalidModelConfig(
                f"model {self.config.name!r}: {self.version_dir.name}/"
                f"{self.config.default_model_filename} does not exist"
            )
        self.providers = [f"python:{target}" if target else "python"]
        self._start()

    def _args(self) -> dict[str, str]:
        from forwardpass.repository.config_json import config_to_dict

        model_config = config_to_dict(self.config)
        if self.config.decoupled:
            model_config["model_transaction_policy"] = {"decoupled": True}
        kind = self.config.instance_group[0].kind if self.config.instance_group else "KIND_CPU"
        return {
            "model_config": json.dumps(model_config),
            "model_instance_kind": "CPU" if kind in ("KIND_AUTO", "KIND_CPU") else kind[5:],
            "model_instance_name": f"{self.config.name}_{self.instance}",
            "model_instance_device_id": "0",
            "model_repository": str(self.version_dir.parent),
            "model_version": self.version_dir.name,
            "model_name": self.config.name,
        }

    def _start(self) -> None:
        """Start the stub and run the model's ``initialize``; InvalidModelConfig if it fails."""
        process = _Process(self.label)
        message = {
            "op": "init",
            "args": self._args(),
            "decoupled": self.config.decoupled,
            **_stub_message(self.config, self.version_dir),
        }
        reply = _control(process, message, self.start_timeout or None)
        if reply.get("op") != "ready":
            process.kill()
            what = self.config.parameters.get("class") or (
                f"{self.version_dir.name}/{self.config.default_model_filename}"
            )
            raise InvalidModelConfig(f"{self.label} failed to load {what}: {reply.get('error')}")
        self._process = process
        self._failure = ""
        threading.Thread(
            target=self._read, args=(process,), name=f"fp-py-{self.config.name}", daemon=True
        ).start()

    def unload(self) -> None:
        with self._lock:
            self._closing = True
            process = self._process
            self._process = None
        if process is None:
            return
        try:
            process.channel.send({"op": "finalize"})
            process.proc.wait(10)
        except (ipc.ChannelClosed, subprocess.TimeoutExpired):
            pass
        process.kill()

    def bind(self, loop: asyncio.AbstractEventLoop, caller: Any) -> None:
        self._loop = loop
        self._caller = caller

    # ------------------------------------------------------------------ failures
    def _fail_process(self, process: _Process, reason: str) -> None:
        """Kill ``process``, fail what it held, and start a fresh instance in the background."""
        with self._lock:
            if self._process is not process:
                return
            self._process = None
            self._failure = reason
        process.kill()
        error = InternalError(f"{self.label} failed: {reason}; it is being restarted")
        with self._state_lock:
            batches, self._batches = self._batches, {}
            streams, self._streams = self._streams, {}
        for future in batches.values():
            if not future.done():
                future.set_exception(error)
        for context in streams.values():
            if context.sink is not None:
                context.sink(None, error, True)
        log.error("%s failed: %s; restarting it", self.label, reason)
        if not self._closing:
            threading.Thread(target=self._restart, daemon=True).start()

    def _restart(self) -> None:
        with self._lock:
            if self._process is not None or self._closing:
                return
            try:
                self._start()
                log.info("%s restarted", self.label)
            except ForwardpassError as exc:
                self._failure = f"restart failed: {exc.message}"
                log.error("%s: %s", self.label, self._failure)

    def _live(self) -> _Process:
        process = self._process
        if process is not None:
            return process
        self._restart()  # waits for a restart in progress, or tries again
        process = self._process
        if process is None:
            raise InternalError(f"{self.label} is not running ({self._failure or 'stopped'})")
        return process

    # ------------------------------------------------------------------ the reader
    def _read(self, process: _Process) -> None:
        channel = process.channel
        while True:
            try:
                message, tensors = channel.recv()
            except ipc.ChannelClosed:
                self._fail_process(process, process.exit_reason())
                return
            op = message.get("op")
            if op == "executed":
                with self._state_lock:
                    future = self._batches.pop(message["batch"], None)
                if future is not None and not future.done():
                    future.set_result((message, tensors))
            elif op == "response":
                self._stream_response(message, tensors)
            elif op == "bls":
                self._bls(process, message, tensors)
            elif op == "log":
                _log(self.label, message)

    # ------------------------------------------------------------------ inference
    def _infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> NamedArrays:
        result = self.infer_requests([dict(inputs)], [RequestContext(outputs=tuple(outputs))])[0]
        if isinstance(result, ForwardpassError):
            raise result
        return result

    def infer_requests(
        self, requests: Sequence[NamedArrays], contexts: Sequence[RequestContext]
    ) -> list[NamedArrays | ForwardpassError]:
        process = self._live()
        tensors: dict[str, tuple[DataType, np.ndarray]] = {}
        items: list[dict[str, Any]] = []
        specs = {s.name: s for s in self.config.inputs}
        for index, (arrays, context) in enumerate(zip(requests, contexts, strict=True)):
            token = next(self._ids)
            if context.sink is not None:
                with self._state_lock:
                    self._streams[token] = context
            for name, array in arrays.items():
                spec = specs.get(name)
                datatype = spec.datatype if spec is not None else DataType.from_numpy(array.dtype)
                tensors[f"{index}/{name}"] = (datatype, array)
            items.append(
                {
                    "token": token,
                    "id": context.id,
                    "inputs": list(arrays),
                    "outputs": list(context.outputs)
                    if context.outputs is not None
                    else [o.name for o in self.config.outputs],
                    "parameters": dict(context.parameters),
                    "correlation_id": context.correlation_id,
                    "flags": context.flags,
                }
            )
        batch = next(self._ids)
        future: concurrent.futures.Future[tuple[dict[str, Any], NamedArrays]]
        future = concurrent.futures.Future()
        with self._state_lock:
            self._batches[batch] = future
        try:
            process.channel.send(
                {"op": "execute", "batch": batch, "model": self.config.name, "requests": items},
                tensors,
            )
            reply, produced = future.result(self.execute_timeout or None)
        except concurrent.futures.TimeoutError:
            self._fail_process(
                process, f"execute() did not return within {self.execute_timeout:g}s"
            )
            raise InternalError(
                f"{self.label}: execute() did not return within {self.execute_timeout:g}s "
                "(parameter execute_timeout_s); the instance is being restarted"
            ) from None
        except ipc.ChannelClosed:
            self._fail_process(process, process.exit_reason())
            raise InternalError(f"{self.label} failed: {process.exit_reason()}") from None
        if "error" in reply:
            for item in items:  # no response will come for these now
                with self._state_lock:
                    self._streams.pop(item["token"], None)
            raise InternalError(f"model {self.config.name!r}: {reply['error']}")
        if self.config.decoupled:
            return [{} for _ in requests]
        results: list[NamedArrays | ForwardpassError] = []
        for index, (entry, arrays, item) in enumerate(
            zip(reply["responses"], requests, items, strict=True)
        ):
            results.append(self._checked(entry, produced, f"{index}/", arrays, item["outputs"]))
        return results

    def _checked(
        self,
        entry: dict[str, Any],
        produced: NamedArrays,
        prefix: str,
        inputs: NamedArrays,
        wanted: Sequence[str],
    ) -> NamedArrays | ForwardpassError:
        """One response checked against the config: an error for that request, or its outputs."""
        model = self.config.name
        if entry.get("error"):
            cls = _ERROR_CODES.get(int(entry.get("code", 1)), InternalError)
            return cls(f"model {model!r}: {entry['error']}")
        outputs = {
            name[len(prefix) :]: a for name, a in produced.items() if name.startswith(prefix)
        }
        rows = None
        if self.config.batching and inputs:
            rows = next(iter(inputs.values())).shape[0]
        result: NamedArrays = {}
        for name in wanted:
            array = outputs.get(name)
            if array is None:
                return InternalError(
                    f"model {model!r}: the response has no output {name!r} "
                    f"(it returned {sorted(outputs) or 'none'})"
                )
            spec = self.config.output(name)
            if spec is not None:
                problem = _mismatch(spec, array, rows)
                if problem:
                    return InternalError(f"model {model!r}: output {name!r} {problem}")
            result[name] = array
        return result

    # ------------------------------------------------------------------ decoupled
    def _stream_response(self, message: dict[str, Any], tensors: NamedArrays) -> None:
        token = message["token"]
        final = bool(message.get("final"))
        with self._state_lock:
            context = self._streams.pop(token, None) if final else self._streams.get(token)
        if context is None or context.sink is None:
            return
        if "error" in message:
            cls = _ERROR_CODES.get(int(message.get("code", 1)), InternalError)
            context.sink(None, cls(f"model {self.config.name!r}: {message['error']}"), final)
            return
        if "outputs" not in message:
            context.sink(None, None, final)
            return
        wanted = (
            context.outputs
            if context.outputs is not None
            else [o.name for o in self.config.outputs]
        )
        checked = self._checked(message, tensors, "", {}, wanted)
        if isinstance(checked, ForwardpassError):
            context.sink(None, checked, final)
        else:
            context.sink(checked, None, final)

    # ------------------------------------------------------------------ BLS
    def _bls(self, process: _Process, message: dict[str, Any], tensors: NamedArrays) -> None:
        loop, caller = self._loop, self._caller
        if loop is None or caller is None:
            self._bls_reply(
                process, message["call"], [InternalError("BLS is not available while loading")]
            )
            return
        asyncio.run_coroutine_threadsafe(self._run_bls(process, message, tensors), loop)

    async def _run_bls(
        self, process: _Process, message: dict[str, Any], tensors: NamedArrays
    ) -> None:
        from forwardpass.types import InferRequest, RequestedOutput, Tensor

        results: list[Any] = []
        try:
            request = InferRequest(
                model_name=str(message["model"]),
                model_version=str(message.get("version") or ""),
                id=str(message.get("id") or ""),
                inputs=[
                    Tensor(name, DataType.from_numpy(a.dtype), a) for name, a in tensors.items()
                ],
                outputs=[RequestedOutput(n) for n in message["outputs"]]
                if message.get("outputs")
                else None,
                parameters=dict(message.get("parameters") or {}),
            )
            if message.get("decoupled"):
                async for response in self._caller.infer_stream(request):
                    results.append(response)
            else:
                results.append(await self._caller.infer(request))
        except ForwardpassError as exc:
            results.append(exc)
        except Exception as exc:  # a bug must still answer the waiting model
            log.exception("%s: BLS call failed", self.label)
            results.append(InternalError(f"BLS call failed: {exc}"))
        self._bls_reply(process, message["call"], results)

    def _bls_reply(self, process: _Process, call: int, results: list[Any]) -> None:
        responses: list[dict[str, Any]] = []
        out: dict[str, tuple[DataType, np.ndarray]] = {}
        for index, result in enumerate(results):
            if isinstance(result, ForwardpassError):
                responses.append(
                    {"error": result.message, "code": _TRITON_CODES.get(result.code, 1)}
                )
                continue
            responses.append({"index": index})
            for tensor in result.outputs:
                out[f"{index}/{tensor.name}"] = (tensor.datatype, tensor.data)
        try:
            process.channel.send({"op": "bls_result", "call": call, "responses": responses}, out)
        except ipc.ChannelClosed:
            pass


def _mismatch(spec: TensorSpec, array: np.ndarray, rows: int | None) -> str:
    """Why ``array`` does not fit the declared output ``spec`` ("" when it does)."""
    expected = spec.datatype.numpy
    if spec.datatype is DataType.BYTES:
        if array.dtype != np.object_:
            return (
                f"has datatype {DataType.from_numpy(array.dtype).value}, the config declares BYTES"
            )
    elif array.dtype != expected:
        got = DataType.from_numpy(array.dtype).value if array.dtype != np.object_ else "BYTES"
        return f"has datatype {got}, the config declares {spec.datatype.value}"
    dims = spec.reshape if spec.reshape is not None else spec.dims
    shape = array.shape
    want = ((rows,) if rows is not None else ()) + tuple(dims)
    if len(shape) != len(want) or any(w != -1 and w != s for s, w in zip(shape, want, strict=True)):
        shown = ",".join("-1" if w == -1 else str(w) for w in want)
        return f"has shape {list(shape)}, the config declares [{shown}]" + (
            f" (the request has {rows} row(s))" if rows is not None else ""
        )
    return ""
