"""One worker process of :class:`forwardpass.processing.pool.ProcessingPool`.

Started as ``python -m forwardpass.processing.pool_worker SOCK_FD IN_FD IN_SIZE OUT_FD OUT_SIZE
CPUS`` (``CPUS``: the cores to pin itself to, comma-separated, or empty). It says ``ready``,
then serves the server's messages in order, one at a time:

- ``build`` (``name``, ``token``, ``config``, ``model_dir``, ``labels``): build that model's
  :class:`~forwardpass.processing.base.Processing` and keep it under ``token`` (replacing an
  older generation of the same model); a failure is kept too and answers its requests;
- ``run`` (``name``, ``token``, tensors): ``preprocess`` the tensors, answer the model inputs
  (tensors) or ``error`` (the error class of :mod:`forwardpass.errors` and its message);
- ``exit``.

It exits when the server closes the channel (the server ended, however it ended).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.datatypes import DataType
from forwardpass.errors import ForwardpassError, InternalError
from forwardpass.processing.base import Processing
from forwardpass.runtime import ipc

log = logging.getLogger("forwardpass.processing.pool_worker")


def _build(message: Mapping[str, Any]) -> Processing | ForwardpassError:
    from forwardpass.processing.spec import build_processing
    from forwardpass.repository.config_io import config_from_dict

    name = str(message["name"])
    try:
        config = config_from_dict(message["config"], name=name)
        labels = {k: tuple(v) for k, v in message["labels"].items()}
        return build_processing(config, Path(message["model_dir"]), labels)
    except ForwardpassError as exc:
        return exc
    except Exception as exc:
        log.exception("building the processing of model %s failed", name)
        return InternalError(f"processing failed: {type(exc).__name__}: {exc}")


def _run(processing: Processing, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``processing.preprocess`` with the in-thread path's error translation (engine._guarded)."""
    try:
        return processing.preprocess(arrays)
    except ForwardpassError:
        raise
    except Exception as exc:
        log.exception("processing failed")
        raise InternalError(f"processing failed: {type(exc).__name__}: {exc}") from exc


def _tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[DataType, np.ndarray]]:
    out = {}
    for name, array in arrays.items():
        array = np.asarray(array)
        datatype = DataType.BYTES if array.dtype == object else DataType.from_numpy(array.dtype)
        out[name] = (datatype, array)
    return out


def serve(channel: ipc.Channel) -> None:
    """Answer the server's messages until it says exit or goes away."""
    built: dict[str, tuple[int, Processing | ForwardpassError]] = {}
    channel.send({"op": "ready"})
    while True:
        try:
            message, tensors = channel.recv()
        except ipc.ChannelClosed:
            return
        op = message.get("op")
        if op == "exit":
            return
        name = str(message.get("name"))
        if op == "build":
            built[name] = (int(message["token"]), _build(message))
            continue
        if op != "run":  # pragma: no cover - the server sends nothing else
            log.error("unknown message %r", op)
            continue
        token, processing = built.get(name, (None, None))
        try:
            if token != message.get("token") or processing is None:
                raise InternalError(f"the processing of model {name!r} was not built here")
            if isinstance(processing, ForwardpassError):
                raise processing
            answer = _tensors(_run(processing, tensors))
        except ForwardpassError as exc:
            reply = {"op": "done", "error": type(exc).__name__, "message": exc.message}
            channel.send(reply)
            continue
        channel.send({"op": "done"}, answer)


def main(argv: list[str]) -> None:
    sock_fd, in_fd, in_size, out_fd, out_size = (int(a) for a in argv[:5])
    cpus = [int(c) for c in argv[5].split(",") if c] if len(argv) > 5 else []
    if cpus:
        os.sched_setaffinity(0, cpus)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    channel = ipc.connect(sock_fd, in_fd, in_size, out_fd, out_size)
    try:
        serve(channel)
    except ipc.ChannelClosed:
        pass
    finally:
        channel.close()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
