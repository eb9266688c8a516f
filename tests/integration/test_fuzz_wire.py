"""Malformed HTTP/1.1 byte streams against a real ``forwardpass serve`` over raw sockets.

After each stream (garbage request lines, broken chunked encoding, header floods under the
64 KiB head limit, bodies cut short by a close) the server still answers a health request on a
new connection.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

WIRE = settings(
    max_examples=200,
    deadline=5000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Seconds to wait for the server's answer (or its close) after a stream.
READ_TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def wire_server(start_module_server: Any) -> Any:
    # The embedded repository (one small model) starts in about a second.
    return start_module_server(None, "--max-request-bytes", "65536", "--log-level", "ERROR")


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, half-close, and read until the server closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server may close first, after rejecting the head
            return b""
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def healthy(port: int) -> bool:
    reply = exchange(port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return reply.startswith(b"HTTP/1.1 200 ")


METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"G\x00T", b"", b"\xff\xfe", b"POST POST"])
TARGETS = st.one_of(
    st.sampled_from(
        [
            b"/v2/health/live",
            b"/v2/models/digits/infer",
            b"/v2/../../etc",
            b"*",
            b"",
            b"/%",
            b"/v2/models/%00/ready",
            b"http://x/v2",
            b"/" + b"a" * 8000,
        ]
    ),
    st.binary(max_size=20),
)
VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9", b"", b"HTTX/1.1"])
HEADER_LINES = st.one_of(
    st.sampled_from(
        [
            b"Host: x",
            b"Content-Length: 5",
            b"Content-Length: -1",
            b"Content-Length: 1e3",
            b"Content-Length: 99999999999999999999999",
            b"Content-Length: 3\r\nContent-Length: 4",
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: gzip, chunked",
            b"Content-Encoding: gzip",
            b"Inference-Header-Content-Length: 4",
            b"Inference-Header-Content-Length: -9",
            b"Expect: 100-continue",
            b"Connection: close",
            b"Upgrade: websocket\r\nConnection: Upgrade",
            b"No colon",
            b": empty name",
            b"X: \xff\x00",
            b" folded",
        ]
    ),
    st.binary(max_size=30).map(lambda b: b"X-Fuzz: " + b),
)
BODIES = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [
            b"5\r\nhello\r\n0\r\n\r\n",
            b"zz\r\nhello\r\n",
            b"5\r\nhel",
            b"ffffffffffffffff\r\n",
            b"-1\r\n\r\n",
            b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n",
            b'{"inputs": [',
            b"0\r\n\r\nGET /v2 HTTP/1.1\r\n\r\n",
        ]
    ),
)


@WIRE
@given(
    METHODS,
    TARGETS,
    VERSIONS,
    st.lists(HEADER_LINES, max_size=6),
    st.one_of(st.none(), st.integers(1, 1500)),  # a header flood: lines of 40 bytes, < 64 KiB
    BODIES,
    st.integers(0, 64),
)
def test_fuzz_malformed_streams_leave_the_server_serving(
    wire_server: Any,
    method: bytes,
    target: bytes,
    version: bytes,
    headers: list[bytes],
    flood: int | None,
    body: bytes,
    cut: int,
) -> None:
    lines = [method + b" " + target + b" " + version, *headers]
    if flood:
        lines += [b"X-Flood-%06d: %s" % (n, b"v" * 24) for n in range(flood)]
    stream = b"\r\n".join(lines) + b"\r\n\r\n" + body
    # Sometimes cut the stream short: in the head, or in the body, then close.
    if cut:
        stream = stream[: max(1, len(stream) - cut)]
    reply = exchange(wire_server.port, stream)
    if reply:
        assert reply.startswith(b"HTTP/1.1 "), reply[:80]
        assert not reply.startswith(b"HTTP/1.1 500"), reply[:300]
    assert healthy(wire_server.port), "".join(wire_server.log[-20:])
    assert wire_server.proc.poll() is None


def test_the_streams_left_no_traceback(wire_server: Any) -> None:
    # Runs after the fuzzing (same module server): a bug answered with a 400 or a close would
    # still have logged its traceback.
    assert healthy(wire_server.port)
    log = "".join(wire_server.log)
    assert "Traceback" not in log, log[-3000:]
