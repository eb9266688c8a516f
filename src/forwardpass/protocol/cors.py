"""Cross-origin resource sharing, so a browser page can call the server.

Off unless origins are configured. A preflight (``OPTIONS`` with ``Access-Control-Request-
Method``) from an allowed origin is answered here, before routing; every other response to an
allowed origin carries ``Access-Control-Allow-Origin``. The request path pays one ``is None``
test when CORS is off.
"""

from __future__ import annotations

from forwardpass.protocol.codec import encode_error
from forwardpass.protocol.http import HttpRequest, HttpResponse

__all__ = ["Cors"]

#: What the V2 routes accept; the binary extension's length header must be allowed explicitly.
_ALLOW_METHODS = "GET, POST, OPTIONS"
_ALLOW_HEADERS = "Content-Type, Content-Encoding, Inference-Header-Content-Length"
#: A binary infer response's JSON length is in this header; a page must be allowed to read it.
_EXPOSE_HEADERS = "Inference-Header-Content-Length"
_MAX_AGE_S = "600"


class Cors:
    """The CORS policy for a set of origins (``"*"`` allows any)."""

    __slots__ = ("_any", "_origins")

    def __init__(self, origins: tuple[str, ...]) -> None:
        self._any = "*" in origins
        self._origins = frozenset(o.rstrip("/") for o in origins if o != "*")

    def headers(self, request: HttpRequest) -> list[tuple[str, str]] | None:
        """Headers to add to the response, or ``None`` (no Origin, or one not allowed)."""
        origin = request.headers.get("origin")
        if origin is None:
            return None
        if self._any:
            return [("access-control-allow-origin", "*"), _EXPOSE]
        if origin in self._origins:
            return [("access-control-allow-origin", origin), ("vary", "Origin"), _EXPOSE]
        return None

    @staticmethod
    def preflight(request: HttpRequest, allowed: list[tuple[str, str]] | None) -> HttpResponse:
        """The answer to a preflight request; ``allowed`` is :meth:`headers`' result."""
        if allowed is None:
            origin = request.headers.get("origin", "")
            return HttpResponse(
                403, encode_error(f"origin {origin!r} is not allowed (see --cors-origins)")
            )
        return HttpResponse(
            200,
            b"",
            "text/plain",
            [
                ("access-control-allow-methods", _ALLOW_METHODS),
                ("access-control-allow-headers", _ALLOW_HEADERS),
                ("access-control-max-age", _MAX_AGE_S),
            ],
        )


_EXPOSE = ("access-control-expose-headers", _EXPOSE_HEADERS)
