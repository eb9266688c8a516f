"""gRPC inference, tiny MLP, one sample per request, concurrency 32: forwardpass's gRPC against
the Python gRPC floor, against forwardpass over HTTP, and against Triton's own gRPC.

Servers are pinned to core 0 and the load generator to core 1. Roles, each in its own process:

- ``floor``: a bare ``grpc.aio`` server (uvloop, like forwardpass) whose ModelInfer parses the
  request and answers one fixed ModelInferResponse: what Python gRPC costs before any work;
- forwardpass ``serve`` on the same repository, measured over gRPC and then over HTTP (binary
  tensors, the raw client of bench/common.py);
- Triton (``tritonserver`` from the nvidia-pytriton wheel, Python 3.12) serving the same MLP
  through a python-backend model (bench/triton_peer.py), when that virtualenv exists;
- ``load``: one ``grpc.aio`` channel on one event loop with ``concurrency`` calls in flight,
  the request pre-serialized and each answer checked by size (the first parsed in full).

    python bench/grpc_bench.py [--duration 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import onnx
import triton_peer
from common import (  # a script beside its helpers, not a package
    CLIENT_CORE,
    PY,
    SERVER_CORE,
    closed_loop,
    forwardpass_server,
    http_request,
    pinned,
    run_role,
    serving,
)

HERE = Path(__file__).resolve().parent
MODEL = "tiny"
IN_FEATURES = 64
OUT_FEATURES = 10
CONCURRENCY = 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _infer_request() -> bytes:
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="FP32", shape=[1, IN_FEATURES])
    import numpy as np

    x = (1 + (np.arange(IN_FEATURES, dtype=np.float32) % 7)) / 7
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


# -- roles --------------------------------------------------------------------------------------


def role_floor(port: int) -> None:
    """A grpc.aio server that answers every ModelInfer with one fixed response."""
    import grpc
    import numpy as np
    import uvloop
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    fixed = pb.ModelInferResponse(model_name=MODEL, model_version="1")
    fixed.outputs.add(name="output", datatype="FP32", shape=[1, OUT_FEATURES])
    fixed.raw_output_contents.append(np.zeros(OUT_FEATURES, np.float32).tobytes())

    class Floor(service_pb2_grpc.GRPCInferenceServiceServicer):
        async def ModelInfer(self, request: Any, context: Any) -> Any:
            return fixed

        async def ServerReady(self, request: Any, context: Any) -> Any:
            return pb.ServerReadyResponse(ready=True)

    async def main() -> None:
        server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Floor(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("floor ready", flush=True)
        await server.wait_for_termination()

    uvloop.install()
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


def role_load(address: str, concurrency: int, warmup: float, duration: float) -> None:
    """Closed loop over gRPC: ``concurrency`` calls in flight on one channel, one loop."""
    import grpc
    import uvloop
    from tritonclient.grpc import service_pb2 as pb

    body = _infer_request()

    async def main() -> dict[str, Any]:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            first = pb.ModelInferResponse.FromString(await call(body, timeout=30))
            if [list(o.shape) for o in first.outputs] != [[1, OUT_FEATURES]] or len(
                first.raw_output_contents[0]
            ) != 4 * OUT_FEATURES:
                raise SystemExit(f"unexpected answer from {address}: {first}")
            size = first.ByteSize()
            window_start = time.perf_counter() + warmup
            window_end = window_start + duration
            latencies: list[float] = []
            errors: list[str] = []

            async def worker() -> None:
                while True:
                    start = time.perf_counter()
                    if start >= window_end:
                        return
                    try:
                        answer = await call(body, timeout=30)
                    except grpc.RpcError as exc:
                        errors.append(f"{exc.code()}: {exc.details()}")
                        continue
                    end = time.perf_counter()
                    if len(answer) != size:
                        errors.append(f"answer of {len(answer)} bytes, expected {size}")
                    elif window_start <= end <= window_end:
                        latencies.append(end - start)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        latencies.sort()
        return {
            "concurrency": concurrency,
            "infer_per_s": len(latencies) / duration,
            "p50_ms": latencies[len(latencies) // 2] * 1e3 if latencies else None,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3 if latencies else None,
            "errors": len(errors),
            "first_error": errors[0] if errors else "",
        }

    uvloop.install()
    print(json.dumps(asyncio.run(main())))


def role_http_load(port: int, concurrency: int, warmup: float, duration: float) -> None:
    """Closed loop over HTTP with a binary tensor (bench/common.py's raw client)."""
    import numpy as np
    import uvloop

    x = (1 + (np.arange(IN_FEATURES, dtype=np.float32) % 7)) / 7
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, IN_FEATURES],
                    "parameters": {"binary_data_size": 4 * IN_FEATURES},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    raw = http_request(
        "127.0.0.1",
        port,
        f"/v2/models/{MODEL}/infer",
        header + x.tobytes(),
        {"Inference-Header-Content-Length": str(len(header))},
    )

    def check(key: str, status: bytes, body: bytes) -> str | None:
        return None if b" 200 " in status else f"{status!r}: {body[:200]!r}"

    uvloop.install()
    result = asyncio.run(
        closed_loop("127.0.0.1", port, [("tiny", raw)], check, concurrency, warmup, duration)
    )
    print(json.dumps(result))


# -- Triton ---------------------------------------------------------------------------------------

# -- the run --------------------------------------------------------------------------------------


def _wait_grpc(address: str, timeout: float = 120) -> None:
    import grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=max(1.0, deadline - time.monotonic()))


def _grpc_load(address: str, d: float) -> dict[str, Any]:
    return run_role(Path(__file__), CLIENT_CORE, "load", address, str(CONCURRENCY), "1", str(d))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        name, *rest = args.role
        if name == "floor":
            role_floor(int(rest[0]))
        elif name == "load":
            role_load(rest[0], int(rest[1]), float(rest[2]), float(rest[3]))
        elif name == "http-load":
            role_http_load(int(rest[0]), int(rest[1]), float(rest[2]), float(rest[3]))
        return 0

    d = args.duration
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        subprocess.run(
            [PY, str(HERE / "models.py"), str(repo), "--no-timing"], check=True, capture_output=True
        )

        port = _free_port()
        floor = pinned(SERVER_CORE, PY, str(Path(__file__)), "--role", "floor", str(port))
        with serving_grpc(floor, f"127.0.0.1:{port}"):
            results["floor_grpc"] = _grpc_load(f"127.0.0.1:{port}", d)

        http_port, grpc_port = _free_port(), _free_port()
        server = forwardpass_server(repo, http_port, grpc_port)
        with serving(server, f"http://127.0.0.1:{http_port}/v2/health/ready"):
            results["forwardpass_grpc"] = _grpc_load(f"127.0.0.1:{grpc_port}", d)
            results["forwardpass_http"] = run_role(
                Path(__file__), CLIENT_CORE, "http-load", str(http_port), str(CONCURRENCY), "1",
                str(d),
            )  # fmt: skip

        if triton_peer.available():
            troot = Path(tmp) / "triton"
            triton_peer.write_tiny(troot, onnx.load(str(repo / MODEL / "1" / "model.onnx")), MODEL)
            tport = _free_port()
            triton = triton_peer.prepare(Path(tmp))
            cmd = pinned(SERVER_CORE, *triton_peer.command(triton, troot, _free_port(), tport))
            try:
                with serving_grpc(cmd, f"127.0.0.1:{tport}", env=triton_peer.environment()):
                    results["triton_grpc"] = _grpc_load(f"127.0.0.1:{tport}", d)
            except (RuntimeError, subprocess.CalledProcessError) as exc:
                results["triton_grpc"] = {"error": str(exc)}
        else:
            results["triton_grpc"] = {"error": f"no tritonserver in {triton_peer.TRITON_ENV}"}

    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


class serving_grpc:
    """Run a gRPC server command until the block ends; ready when its channel connects and a
    ModelInfer can be answered."""

    def __init__(self, cmd: list[str], address: str, env: dict[str, str] | None = None) -> None:
        self.cmd, self.address, self.env = cmd, address, env
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> subprocess.Popen[bytes]:
        import signal

        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env
        )
        try:
            _wait_grpc(self.address)
            _wait_model(self.address)
        except Exception:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(30)
            raise RuntimeError(f"{self.cmd[0]} did not come up on {self.address}") from None
        return self.proc

    def __exit__(self, *exc: object) -> None:
        import signal

        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _wait_model(address: str, timeout: float = 120) -> None:
    import grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        while True:
            try:
                call(_infer_request(), timeout=5)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def report(r: dict[str, Any]) -> None:
    floor = r["floor_grpc"]["infer_per_s"]
    rows = []
    for key, label in (
        ("floor_grpc", "bare grpc.aio, fixed answer"),
        ("forwardpass_grpc", "forwardpass gRPC"),
        ("forwardpass_http", "forwardpass HTTP (binary)"),
        ("triton_grpc", "Triton gRPC (python backend)"),
    ):
        entry = r.get(key, {})
        if "error" in entry:
            rows.append((label, "-", entry["error"]))
            continue
        rate = entry["infer_per_s"]
        note = f"{rate / floor:.0%} of the gRPC floor, p50 {entry['p50_ms']:.2f} ms"
        if entry["errors"]:
            note += f", {entry['errors']} errors ({entry['first_error']})"
        rows.append((label, f"{rate:,.0f}", note))
    width = max(len(a) for a, _, _ in rows)
    print(f"tiny MLP, 1 sample/request, concurrency {CONCURRENCY} (infer/s)")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>8}  {note}")


if __name__ == "__main__":
    sys.exit(main())
