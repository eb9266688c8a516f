"""The stub process of one Python-backend model instance.

Started by :class:`forwardpass.runtime.python.PythonBackend` as
``python -m forwardpass.runtime.python_stub SOCK_FD IN_FD IN_SIZE OUT_FD OUT_SIZE``. It puts
the folder holding ``triton_python_backend_utils`` and the model's version folder on
``sys.path``, loads ``model.py`` (``TritonPythonModel``) or a native class (through
:mod:`.native`), and then serves the server's messages: ``init``, ``complete``, ``execute``,
``bls_result``, ``finalize``. ``execute`` runs on the main thread, one batch at a time; a
reader thread takes messages off the channel meanwhile, so BLS answers reach a model that is
waiting for them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import numpy as np

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import triton_python_backend_utils as pb_utils  # noqa: E402

from forwardpass.datatypes import DataType  # noqa: E402
from forwardpass.runtime import ipc  # noqa: E402


def _describe(exc: BaseException) -> str:
    if isinstance(exc, pb_utils.TritonModelException | pb_utils.TritonError):
        return exc.message() if callable(getattr(exc, "message", None)) else str(exc)
    return f"{type(exc).__name__}: {exc}"


def _datatype(array: np.ndarray) -> DataType:
    return DataType.from_numpy(array.dtype)


class Stub:
    """The model, the channel, and the model-facing runtime ``pb_utils`` calls into."""

    def __init__(self, channel: ipc.Channel) -> None:
        self.channel = channel
        self.work: queue.Queue[tuple[dict[str, Any], dict[str, np.ndarray]] | None] = queue.Queue()
        self.model: Any = None
        self._bls_lock = threading.Lock()
        self._bls_next = 0
        self._bls_waiting: dict[int, tuple[threading.Event, list[Any]]] = {}
        self.decoupled = False

    # ------------------------------------------------------------------ runtime for pb_utils
    def send_response(self, token: int, response: Any, final: bool) -> None:
        message: dict[str, Any] = {"op": "response", "token": token, "final": final}
        tensors: dict[str, tuple[DataType, np.ndarray]] = {}
        if response is not None:
            try:
                message.update(self._response(response, tensors))
            except Exception as exc:
                message["error"] = _describe(exc)
                tensors = {}
        self.channel.send(message, tensors)

    def bls(self, request: Any, decoupled: bool) -> list[Any]:
        tensors: dict[str, tuple[DataType, np.ndarray]] = {}
        for tensor in request.inputs():
            array = tensor.as_numpy()
            tensors[tensor.name()] = (_datatype(array), array)
        with self._bls_lock:
            self._bls_next += 1
            call = self._bls_next
            event = threading.Event()
            answers: list[Any] = []
            self._bls_waiting[call] = (event, answers)
        self.channel.send(
            {
                "op": "bls",
                "call": call,
                "model": request.model_name(),
                "version": ""
                if request._model_version in (-1, None)
                else str(request._model_version),
                "outputs": request.requested_output_names() or None,
                "id": request.request_id(),
                "parameters": json.loads(request.parameters()),
                "timeout": request.timeout(),
                "decoupled": decoupled,
                "inputs": list(tensors),
            },
            tensors,
        )
        event.wait()
        return answers

    def _bls_answer(self, message: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        with self._bls_lock:
            event, answers = self._bls_waiting.pop(message["call"])
        for item in message["responses"]:
            if item.get("error"):
                answers.append(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(item["error"], item.get("code", 1))
                    )
                )
            else:
                prefix = f"{item['index']}/"
                answers.append(
                    pb_utils.InferenceResponse(
                        [
                            pb_utils.Tensor(name[len(prefix) :], array)
                            for name, array in tensors.items()
                            if name.startswith(prefix)
                        ]
                    )
                )
        event.set()

    def log(self, level: int, message: str) -> None:
        try:
            self.channel.send({"op": "log", "level": level, "message": message})
        except ipc.ChannelClosed:
            pass

    # ------------------------------------------------------------------ the reader thread
    def read(self) -> None:
        while True:
            try:
                message, tensors = self.channel.recv()
            except ipc.ChannelClosed:
                self.work.put(None)
                return
            if message["op"] == "bls_result":
                self._bls_answer(message, tensors)
            else:
                self.work.put((message, tensors))

    # ------------------------------------------------------------------ the main loop
    def serve(self) -> None:
        threading.Thread(target=self.read, name="fp-stub-reader", daemon=True).start()
        while True:
            item = self.work.get()
            if item is None:
                return
            message, tensors = item
            op = message["op"]
            if op == "init":
                self._init(message)
            elif op == "complete":
                self._complete(message)
            elif op == "execute":
                self._execute(message, tensors)
            elif op == "finalize":
                self._finalize()
                return

    def _load_model_class(self, message: dict[str, Any]) -> type:
        version_dir = Path(message["version_dir"])
        for folder in (str(version_dir), str(version_dir.parent), *message.get("paths", [])):
            if folder not in sys.path:
                sys.path.insert(1, folder)
        target = message.get("class") or ""
        if target:
            from forwardpass.runtime.python_stub.native import adapter_for

            return adapter_for(target)
        path = version_dir / message.get("filename", "model.py")
        spec = importlib.util.spec_from_file_location("model", path)
        if spec is None or spec.loader is None:
            raise pb_utils.TritonModelException(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules["model"] = module
        spec.loader.exec_module(module)
        cls = getattr(module, "TritonPythonModel", None)
        if cls is None:
            raise pb_utils.TritonModelException(f"{path.name} defines no class TritonPythonModel")
        return cls

    def _complete(self, message: dict[str, Any]) -> None:
        """Run the class's ``auto_complete_config`` on the config so far; reply the result."""
        try:
            cls = self._load_model_class(message)
            config = pb_utils.ModelConfig(message["config"])
            hook = getattr(cls, "auto_complete_config", None)
            if hook is not None:
                result = hook(config)
                if isinstance(result, pb_utils.ModelConfig):
                    config = result
            self.channel.send({"op": "completed", "config": config.as_dict()})
        except BaseException as exc:
            self.channel.send(
                {"op": "failed", "error": _describe(exc), "trace": traceback.format_exc()}
            )

    def _init(self, message: dict[str, Any]) -> None:
        try:
            cls = self._load_model_class(message)
            self.decoupled = bool(message.get("decoupled"))
            self.model = cls()
            initialize = getattr(self.model, "initialize", None)
            if initialize is not None:
                initialize(message["args"])
            if not callable(getattr(self.model, "execute", None)):
                raise pb_utils.TritonModelException("TritonPythonModel defines no execute()")
            self.channel.send({"op": "ready"})
        except BaseException as exc:
            self.channel.send(
                {"op": "failed", "error": _describe(exc), "trace": traceback.format_exc()}
            )

    def _execute(self, message: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        requests = []
        for index, item in enumerate(message["requests"]):
            prefix = f"{index}/"
            request = pb_utils.InferenceRequest(
                model_name=message.get("model", ""),
                inputs=[pb_utils.Tensor(name, tensors[prefix + name]) for name in item["inputs"]],
                requested_output_names=item["outputs"],
                request_id=item.get("id", ""),
                correlation_id=item.get("correlation_id", 0),
                flags=item.get("flags", 0),
                parameters=item.get("parameters") or {},
            )
            request._token = item["token"]
            request._decoupled = self.decoupled
            requests.append(request)
        reply: dict[str, Any] = {"op": "executed", "batch": message["batch"]}
        out: dict[str, tuple[DataType, np.ndarray]] = {}
        try:
            result = self.model.execute(requests)
            if self.decoupled:
                if result is not None:
                    raise pb_utils.TritonModelException(
                        "a decoupled model's execute() must return None and send its responses "
                        f"through the response sender; it returned {type(result).__name__}"
                    )
            else:
                reply["responses"] = self._responses(result, len(requests), out)
        except BaseException as exc:
            if isinstance(exc, SystemExit | KeyboardInterrupt):
                # The model asked its process to end: answer, then end it; the server
                # starts a fresh instance.
                reason = f"execute() called sys.exit({exc.args[0] if exc.args else ''})"
                self.channel.send({"op": "executed", "batch": message["batch"], "error": reason})
                os._exit(1)
            reply = {"op": "executed", "batch": message["batch"], "error": _describe(exc)}
            out = {}
        self.channel.send(reply, out)

    def _responses(
        self, result: Any, count: int, out: dict[str, tuple[DataType, np.ndarray]]
    ) -> list[dict[str, Any]]:
        if not isinstance(result, list | tuple):
            raise pb_utils.TritonModelException(
                f"execute() must return a list of InferenceResponse, got {type(result).__name__}"
            )
        if len(result) != count:
            raise pb_utils.TritonModelException(
                f"execute() returned {len(result)} response(s) for {count} request(s)"
            )
        replies = []
        for index, response in enumerate(result):
            tensors: dict[str, tuple[DataType, np.ndarray]] = {}
            try:
                entry = self._response(response, tensors)
            except Exception as exc:
                replies.append({"error": _describe(exc)})
                continue
            for name, value in tensors.items():
                out[f"{index}/{name}"] = value
            replies.append(entry)
        return replies

    def _response(
        self, response: Any, tensors: dict[str, tuple[DataType, np.ndarray]]
    ) -> dict[str, Any]:
        if not isinstance(response, pb_utils.InferenceResponse):
            raise pb_utils.TritonModelException(
                f"a response must be a pb_utils.InferenceResponse, got {type(response).__name__}"
            )
        if response.has_error():
            error = response.error()
            assert error is not None
            return {"error": error.message(), "code": error.code()}
        names = []
        for tensor in response.output_tensors():
            array = tensor.as_numpy()
            try:
                datatype = _datatype(array)
            except Exception:
                raise pb_utils.TritonModelException(
                    f"output {tensor.name()!r} has numpy dtype {array.dtype}, which no protocol "
                    "datatype holds"
                ) from None
            tensors[tensor.name()] = (datatype, array)
            names.append(tensor.name())
        return {"outputs": names}

    def _finalize(self) -> None:
        finalize = getattr(self.model, "finalize", None)
        try:
            if finalize is not None:
                finalize()
        except BaseException as exc:
            self.log(pb_utils.Logger.ERROR, f"finalize() failed: {_describe(exc)}")
        try:
            self.channel.send({"op": "finalized"})
        except ipc.ChannelClosed:
            pass


def main(argv: list[str]) -> None:
    sock_fd, in_fd, in_size, out_fd, out_size = (int(a) for a in argv[:5])
    channel = ipc.connect(sock_fd, in_fd, in_size, out_fd, out_size)
    stub = Stub(channel)
    pb_utils._runtime = stub
    stub.serve()
    channel.close()
    sys.stdout.flush()
    # Model threads (decoupled senders) must not keep a finalized instance alive.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
