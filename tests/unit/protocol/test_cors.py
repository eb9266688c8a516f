"""The CORS policy alone: which origins get which headers."""

from __future__ import annotations

from forwardpass.protocol.cors import Cors
from forwardpass.protocol.http import HttpRequest


def _request(origin: str | None) -> HttpRequest:
    return HttpRequest("GET", "/v2", b"", {} if origin is None else {"origin": origin})


def test_listed_origins_are_echoed_and_others_get_nothing() -> None:
    cors = Cors(("http://a.example", "http://b.example/"))
    allowed = cors.headers(_request("http://b.example"))
    assert allowed is not None
    assert ("access-control-allow-origin", "http://b.example") in allowed
    assert ("vary", "Origin") in allowed
    assert cors.headers(_request("http://c.example")) is None
    assert cors.headers(_request(None)) is None


def test_any_origin() -> None:
    allowed = Cors(("*",)).headers(_request("http://anything.example"))
    assert allowed is not None and ("access-control-allow-origin", "*") in allowed


def test_preflight_names_the_inference_headers_and_refuses_strangers() -> None:
    cors = Cors(("http://a.example",))
    request = _request("http://a.example")
    answer = cors.preflight(request, cors.headers(request))
    assert answer.status == 200
    headers = dict(answer.headers)
    assert "Inference-Header-Content-Length" in headers["access-control-allow-headers"]
    assert "Content-Type" in headers["access-control-allow-headers"]
    assert "POST" in headers["access-control-allow-methods"]
    stranger = _request("http://c.example")
    refused = cors.preflight(stranger, cors.headers(stranger))
    assert refused.status == 403 and b"http://c.example" in refused.body
