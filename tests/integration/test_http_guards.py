"""What one client must not be able to do to the server or to the other clients (issue #10).

Each test speaks raw HTTP/1.1 over a socket to a real ``forwardpass serve`` on the embedded
repository: pipelining without reading, a malformed request inside a pipeline, an endless
header value, slow clients, oversized and over-chunked bodies, too many connections, a busy
port, and CORS.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from rawhttp import read_response

#: The module server's limits, small so that a test can pass them cheaply.
LIMIT = 65536
READ_TIMEOUT_S = 1.0
ORIGIN = "http://page.example"
HEALTH = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def guarded(start_module_server: Any) -> Any:
    return start_module_server(
        None,
        "--max-request-bytes",
        str(LIMIT),
        "--read-timeout",
        str(READ_TIMEOUT_S),
        "--cors-origins",
        ORIGIN,
        "--log-level",
        "WARNING",
    )


def _connect(server: Any, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def _closed(sock: socket.socket, buffer: bytearray) -> bool:
    """True when the server closes the connection with nothing more to say."""
    try:
        rest = sock.recv(65536)
    except ConnectionResetError:
        return not buffer
    return rest == b"" and not buffer


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _health_latency(server: Any) -> float:
    began = time.monotonic()
    with _connect(server) as sock:
        sock.sendall(HEALTH)
        assert read_response(sock, bytearray())[0] == 200
    return time.monotonic() - began


def test_a_pipelining_client_that_does_not_read_is_paused_not_buffered(guarded: Any) -> None:
    _health_latency(guarded)
    before = _rss_kib(guarded.proc.pid)
    count = 2000
    with _connect(guarded, timeout=30) as greedy:
        greedy.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * count)
        time.sleep(1.0)  # the server does whatever it does with them, unread
        latencies = [_health_latency(guarded) for _ in range(5)]
        grown_mib = (_rss_kib(guarded.proc.pid) - before) / 1024
        # Paused, not lost: every answer still comes, in order, once the client reads.
        buffer = bytearray()
        statuses = [read_response(greedy, buffer)[0] for _ in range(count)]
    assert statuses == [200] * count
    assert max(latencies) < 0.5, latencies
    assert grown_mib < 40, f"the server grew by {grown_mib:.0f} MiB"


def test_pipelined_requests_yield_to_other_connections(guarded: Any) -> None:
    # A client that reads, but keeps a deep pipeline full, must not starve a health check.
    stop = threading.Event()

    def pipeline() -> None:
        with _connect(guarded, timeout=30) as sock:
            buffer = bytearray()
            while not stop.is_set():
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 1000)
                for _ in range(1000):
                    read_response(sock, buffer)

    worker = threading.Thread(target=pipeline, daemon=True)
    worker.start()
    try:
        time.sleep(0.3)
        latencies = [_health_latency(guarded) for _ in range(10)]
    finally:
        stop.set()
        worker.join(30)
    assert max(latencies) < 0.5, latencies


def test_an_endless_header_value_gets_431_before_it_is_buffered(guarded: Any) -> None:
    with _connect(guarded) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            while sent < 16 * 1024 * 1024:  # no line end, ever
                sock.sendall(b"a" * 16384)
                sent += 16384
                if select.select([sock], [], [], 0.05)[0]:
                    break  # the server has answered
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, body = read_response(sock, bytearray())
    assert status == 431
    assert headers.get("connection") == "close"
    assert "exceed 65536 bytes" in json.loads(body)["error"]
    assert sent <= 256 * 1024, f"the server read {sent} bytes of one header before answering"
    assert _health_latency(guarded) < 1


@pytest.mark.parametrize(
    "start",
    [
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: a",  # a head, trickled
        b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",  # a body
    ],
    ids=["head", "body"],
)
def test_a_request_trickled_slower_than_the_read_timeout_gets_408(
    guarded: Any, start: bytes
) -> None:
    with _connect(guarded) as sock:
        sock.sendall(start)
        began = time.monotonic()
        buffer = bytearray()
        sock.settimeout(0.25)
        while time.monotonic() - began < 10 and b"\r\n\r\n" not in buffer:
            try:
                sock.sendall(b" ")  # one byte at a time, forever
                buffer += sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        elapsed = time.monotonic() - began
        sock.settimeout(5)
        status, headers, body = read_response(sock, buffer)
    assert status == 408
    assert headers.get("connection") == "close"
    assert "did not arrive within 1 s" in json.loads(body)["error"]
    assert READ_TIMEOUT_S <= elapsed < READ_TIMEOUT_S + 2


def test_many_trickling_connections_are_all_timed_out(guarded: Any) -> None:
    socks = [_connect(guarded) for _ in range(50)]
    try:
        for sock in socks:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
        time.sleep(READ_TIMEOUT_S + 1.5)
        statuses = []
        for sock in socks:
            sock.settimeout(5)
            statuses.append(read_response(sock, bytearray())[0])
    finally:
        for sock in socks:
            sock.close()
    assert statuses == [408] * len(socks)


def test_a_declared_oversized_body_gets_413_before_any_body_byte(guarded: Any) -> None:
    with _connect(guarded, timeout=2) as sock:
        sock.sendall(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 1073741824\r\n\r\n"
        )
        status, headers, body = read_response(sock, bytearray())
        assert _closed(sock, bytearray())
    assert status == 413
    assert headers.get("connection") == "close"
    assert "1073741824" in json.loads(body)["error"]
    assert str(LIMIT) in json.loads(body)["error"]


def test_expect_100_continue_with_an_oversized_length_gets_413_not_silence(
    guarded: Any,
) -> None:
    with _connect(guarded, timeout=2) as sock:
        sock.sendall(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 1073741824\r\nExpect: 100-continue\r\n\r\n"
        )
        status, _, body = read_response(sock, bytearray())
    assert status == 413
    assert str(LIMIT) in json.loads(body)["error"]


def _chunked(count: int) -> bytes:
    # A repository-index request whose JSON body "{}" is padded with spaces, one byte a chunk.
    payload = b"{}" + b" " * (count - 2)
    chunks = b"".join(b"1\r\n%c\r\n" % byte for byte in payload)
    return (
        b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunks
        + b"0\r\n\r\n"
    )


def test_a_chunked_body_of_more_than_65536_chunks_is_refused(guarded: Any) -> None:
    with _connect(guarded) as sock:
        sock.sendall(_chunked(1 << 16))  # the cap exactly: served
        status, _, _ = read_response(sock, bytearray())
    assert status == 200
    with _connect(guarded) as sock:
        try:
            sock.sendall(_chunked((1 << 16) + 1))
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, body = read_response(sock, bytearray())
    assert status == 400
    assert headers.get("connection") == "close"
    assert "more than 65536 chunks" in json.loads(body)["error"]


def test_content_length_with_transfer_encoding_is_refused(guarded: Any) -> None:
    with _connect(guarded) as sock:
        sock.sendall(
            b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        )
        buffer = bytearray()
        status, headers, body = read_response(sock, buffer)
        assert _closed(sock, buffer)
    assert status == 400
    assert headers.get("connection") == "close"
    assert "Content-Length" in json.loads(body)["error"]


def test_cors_preflight_and_allowed_origin(guarded: Any) -> None:
    with _connect(guarded) as sock:
        sock.sendall(
            b"OPTIONS /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
            b"Origin: " + ORIGIN.encode() + b"\r\nAccess-Control-Request-Method: POST\r\n"
            b"Access-Control-Request-Headers: content-type, inference-header-content-length\r\n"
            b"\r\n"
            + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nOrigin: "
            + ORIGIN.encode()
            + b"\r\n\r\n"
            + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"
            b"Origin: http://elsewhere.example\r\n\r\n"
            + b"OPTIONS /v2/health/live HTTP/1.1\r\nHost: x\r\n"
            b"Origin: http://elsewhere.example\r\nAccess-Control-Request-Method: GET\r\n\r\n"
        )
        buffer = bytearray()
        preflight, allowed, other, refused = (read_response(sock, buffer) for _ in range(4))
    status, headers, _ = preflight
    assert status == 200
    assert headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in headers["access-control-allow-methods"]
    allow_headers = headers["access-control-allow-headers"].lower()
    assert "inference-header-content-length" in allow_headers
    assert "content-type" in allow_headers
    assert allowed[0] == 200
    assert allowed[1]["access-control-allow-origin"] == ORIGIN
    assert "inference-header-content-length" in allowed[1]["access-control-expose-headers"].lower()
    assert other[0] == 200
    assert "access-control-allow-origin" not in other[1]
    assert refused[0] == 403
    assert "http://elsewhere.example" in json.loads(refused[2])["error"]


def test_connections_past_the_bound_get_503_and_a_close(start_server: Any) -> None:
    server = start_server(None, "--max-connections", "4", "--log-level", "WARNING")
    held = [_connect(server) for _ in range(4)]
    try:
        for sock in held:
            sock.sendall(HEALTH)
            assert read_response(sock, bytearray())[0] == 200
        with _connect(server) as extra:
            extra.sendall(HEALTH)
            buffer = bytearray()
            status, headers, body = read_response(extra, buffer)
            assert _closed(extra, buffer)
        assert status == 503
        assert headers.get("connection") == "close"
        assert "limit of 4 connections" in json.loads(body)["error"]
        for sock in held:  # the ones inside the bound are unaffected
            sock.sendall(HEALTH)
            assert read_response(sock, bytearray())[0] == 200
    finally:
        for sock in held:
            sock.close()
    # Once they are gone, new connections are served again.
    deadline = time.monotonic() + 5
    while True:
        with _connect(server) as sock:
            sock.sendall(HEALTH)
            if read_response(sock, bytearray())[0] == 200:
                break
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_busy_port_is_one_line_naming_it_and_the_flag(guarded: Any) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "forwardpass", "serve", "--http-port", str(guarded.port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode != 0
    assert "Traceback" not in second.stderr, second.stderr
    errors = [line for line in second.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, second.stderr
    assert str(guarded.port) in errors[0]
    assert "--http-port" in errors[0]
