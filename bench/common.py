"""Shared pieces of the benchmarks: core pinning, a pinned server, a closed-loop raw client.

Every benchmark pins the server under test to core 0 and its load to core 1, and runs the
bare-engine reference on core 0 in the same run, so that ratios compare like with like on a
noisy shared machine.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PY = sys.executable
SERVER_CORE = "0"
CLIENT_CORE = "1"


def pinned(core: str, *cmd: str) -> list[str]:
    """``cmd`` restricted to one core (taskset), where the machine has more than one."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", core, *cmd]
    return list(cmd)


def wait_ready(url: str, timeout: float = 120) -> None:
    """Poll ``url`` until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def serving(
    cmd: Sequence[str], ready_url: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server command until the block ends, then stop it with SIGINT (Ctrl-C)."""
    proc = subprocess.Popen(
        list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    try:
        wait_ready(ready_url)
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def forwardpass_server(
    repository: Path, port: int, grpc_port: int | None = None, extra: Sequence[str] = ()
) -> list[str]:
    """``forwardpass serve`` on ``repository``, pinned to the server core (gRPC off unless
    ``grpc_port`` is given), with ``extra`` flags."""
    grpc = ["--grpc-port", str(grpc_port)] if grpc_port is not None else ["--no-grpc"]
    return pinned(
        SERVER_CORE, PY, "-m", "forwardpass", "serve", "--model-repository", str(repository),
        "--http-port", str(port), *grpc, "--log-level", "WARNING", *extra,
    )  # fmt: skip


def http_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """One pre-encoded HTTP/1.1 POST."""
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


#: Checks one answer: (request key, status line, body) -> an error message or None.
Check = Callable[[str, bytes, bytes], "str | None"]


async def closed_loop(
    host: str,
    port: int,
    requests: Sequence[tuple[str, bytes]],
    check: Check,
    concurrency: int,
    warmup: float,
    duration: float,
) -> dict[str, Any]:
    """Closed loop: each worker sends, waits for the answer, checks it, sends the next."""
    window_start = time.perf_counter() + warmup
    window_end = window_start + duration
    latencies: list[float] = []
    errors: list[str] = []

    async def worker(offset: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        i = offset
        try:
            while True:
                start = time.perf_counter()
                if start >= window_end:
                    return
                key, raw = requests[i % len(requests)]
                i += 1
                writer.write(raw)
                status = await reader.readline()
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                end = time.perf_counter()
                problem = check(key, status, body)
                if problem:
                    errors.append(problem)
                elif window_start <= end <= window_end:
                    latencies.append(end - start)
        finally:
            writer.close()

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    latencies.sort()
    return {
        "concurrency": concurrency,
        "infer_per_s": len(latencies) / duration,
        "p50_ms": latencies[len(latencies) // 2] * 1e3 if latencies else None,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3 if latencies else None,
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
    }


def run_json(cmd: list[str]) -> Any:
    """Run ``cmd``; its stdout is one JSON document."""
    import json

    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def bench_load(
    url: str, model: str, concurrency: str, duration: float, binary: bool = False
) -> list[dict[str, Any]]:
    """``forwardpass bench`` on the client core: one result per concurrency level (``1,32``)."""
    cmd = [
        PY, "-m", "forwardpass", "bench", model, "--url", url, "-c", concurrency,
        "-d", str(duration), "--warmup", "1", "--json",
    ]  # fmt: skip
    if binary:
        cmd.append("--binary")
    return run_json(pinned(CLIENT_CORE, *cmd))["results"]


def raw_session(model: Path, batches: str, seconds: float) -> list[dict[str, Any]]:
    """The bare ONNX Runtime session (bench/raw_ort.py) on the server core: one result per
    batch size (``1,8,32``), each with ``batch`` and ``samples_per_s``."""
    import json

    script = Path(__file__).resolve().parent / "raw_ort.py"
    out = subprocess.run(
        pinned(
            SERVER_CORE, PY, str(script), str(model), "--batch", batches,
            "--seconds", str(seconds), "--json",
        ),
        check=True,
        capture_output=True,
        text=True,
    ).stdout  # fmt: skip
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def run_role(script: Path, core: str, *args: str) -> Any:
    """Run ``script --role ARGS`` pinned to ``core``; its last stdout line is JSON."""
    import json

    out = subprocess.run(
        pinned(core, PY, str(script), "--role", *args), check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def build_zoo_model(
    repository: Path, model: str, input_options: dict[str, Any] | None = None
) -> Path:
    """Zoo model ``model`` in ``repository``, on one intra-op thread (the server gets one
    core), with ``input_options`` merged into its first declared processing input."""
    import dataclasses
    import json
    from types import MappingProxyType

    from forwardpass.repository import ModelRepository
    from forwardpass.repository.pbtxt_writer import config_to_pbtxt
    from forwardpass.zoo import add

    add(model, repository)
    config = ModelRepository(repository).read(model).config
    parameters = {**config.parameters, "intra_op_thread_count": "1"}
    if input_options:
        processing = json.loads(parameters["processing"])
        processing["inputs"][0].update(input_options)
        parameters["processing"] = json.dumps(processing)
    config = dataclasses.replace(config, parameters=MappingProxyType(parameters))
    (repository / model / "config.pbtxt").write_text(config_to_pbtxt(config))
    return repository


def one_thread_repository(repository: Path, model: str) -> Path:
    """``repository`` (given with ``--model-repository``), refused unless ``model`` runs on one
    intra-op thread as :func:`build_zoo_model` writes it: without that parameter ONNX Runtime
    sizes its pool to the machine and pins its own threads, escaping the server's core, and
    served throughput would be compared with a one-thread bare loop on a different footing."""
    from forwardpass.repository import ModelRepository

    threads = ModelRepository(repository).read(model).config.parameters.get("intra_op_thread_count")
    if threads != "1":
        raise SystemExit(
            f"{repository / model}: intra_op_thread_count is {threads!r}, not '1'; build the"
            " repository with bench/common.py's build_zoo_model (or let the bench build it)"
        )
    return repository


def model_processing(repository: Path, model: str) -> Any:
    """The declared processing of ``model``, as the server builds it."""
    from forwardpass.processing.spec import build_processing
    from forwardpass.repository import ModelRepository

    entry = ModelRepository(repository).read(model)
    return build_processing(entry.config, repository / model, entry.labels)
