"""HTTP/1.1 on the wire, with a plain socket: pipelining and ``Expect: 100-continue``."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from rawhttp import MAX_REQUEST_BYTES, read_response


def _connect(server: Any) -> socket.socket:
    host, port = server.address.split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _infer_request(value: float, extra_headers: str = "") -> bytes:
    body = json.dumps(
        {"inputs": [{"name": "in", "datatype": "INT32", "shape": [2], "data": [int(value), 0]}]}
    ).encode()
    head = (
        "POST /v2/models/echo_i32/infer HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra_headers}\r\n"
    )
    return head.encode() + body


def test_pipelined_requests_are_answered_in_order(server: Any) -> None:
    with _connect(server) as sock:
        bad = b"POST /v2/models/echo_i32/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{]"
        sock.sendall(b"".join([_infer_request(1), bad, _infer_request(2), _infer_request(3)]))
        buffer = bytearray()
        answers = [read_response(sock, buffer) for _ in range(4)]
    assert [status for status, _, _ in answers] == [200, 400, 200, 200]
    assert "malformed JSON" in json.loads(answers[1][2])["error"]
    for (_, _, body), value in zip((answers[0], answers[2], answers[3]), (1, 2, 3), strict=True):
        assert json.loads(body)["outputs"][0]["data"] == [value, 0]


def test_expect_100_continue(server: Any) -> None:
    request = _infer_request(7, "Expect: 100-continue\r\n")
    head, _, body = request.partition(b"\r\n\r\n")
    with _connect(server) as sock:
        sock.sendall(head + b"\r\n\r\n")
        sock.settimeout(2)
        began = time.monotonic()
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim
        assert time.monotonic() - began < 1  # clients wait about a second without it
        sock.sendall(body)
        buffer = bytearray(interim[len(b"HTTP/1.1 100 Continue\r\n\r\n") :])
        status, _, answer = read_response(sock, buffer)
    assert status == 200
    assert json.loads(answer)["outputs"][0]["data"] == [7, 0]


def test_expect_100_continue_over_the_limit_gets_413_at_once(server: Any) -> None:
    # Triton answers the final status instead of inviting a body it would refuse.
    size = MAX_REQUEST_BYTES + 1
    head = (
        "POST /v2/models/echo_i32/infer HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {size}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    with _connect(server) as sock:
        sock.sendall(head)
        sock.settimeout(2)
        status, headers, answer = read_response(sock, bytearray())
    assert status == 413
    assert headers.get("connection") == "close"
    assert str(MAX_REQUEST_BYTES) in json.loads(answer)["error"]


def test_a_malformed_request_in_a_pipeline_is_answered_after_the_good_ones(server: Any) -> None:
    with _connect(server) as sock:
        sock.sendall(
            _infer_request(5)
            + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
            + b"GARBAGE\r\n\r\n"
        )
        buffer = bytearray()
        answers = [read_response(sock, buffer) for _ in range(3)]
        assert sock.recv(65536) == b"" and not buffer  # then the server closes
    assert [status for status, _, _ in answers] == [200, 200, 400]
    assert json.loads(answers[0][2])["outputs"][0]["data"] == [5, 0]
    assert answers[2][1].get("connection") == "close"
    assert "malformed HTTP request" in json.loads(answers[2][2])["error"]


def test_without_cors_origins_no_cors_headers_are_sent(server: Any) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nOrigin: http://a.example\r\n\r\n")
        status, headers, _ = read_response(sock, bytearray())
    assert status == 200
    assert not any(name.startswith("access-control-") for name in headers)


def test_an_endless_header_block_is_refused_and_others_still_served(server: Any) -> None:
    with _connect(server) as sock:
        sock.sendall(
            b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
        )
        status, headers, body = read_response(sock, bytearray())
        assert status == 431
        assert headers.get("connection") == "close"
        assert "exceed 65536 bytes" in json.loads(body)["error"]
    with _connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock, bytearray())[0] == 200
