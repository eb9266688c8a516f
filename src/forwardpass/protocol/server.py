"""A lean HTTP/1.1 server for :class:`HttpApp`: asyncio protocol + httptools parser.

Python inference servers lose most of their time in the web framework, not the model. This
server does only what the protocol needs: keep-alive, pipelined requests answered in order,
Content-Length and chunked bodies, a body-size limit enforced before the body is buffered,
and a graceful stop that lets in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from http import HTTPStatus

import httptools

from forwardpass.errors import PayloadTooLarge
from forwardpass.protocol.codec import encode_error
from forwardpass.protocol.http import HttpApp, HttpRequest, HttpResponse

__all__ = ["HttpServer"]

log = logging.getLogger("forwardpass.server")

#: Request line plus headers; Triton's clients send a few hundred bytes.
MAX_HEAD_BYTES = 64 * 1024


class _HeadTooLarge(Exception):
    """Raised inside the parser's callbacks to stop reading an oversized head."""


_STATUS_LINES = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("latin-1") for s in HTTPStatus
}


def _encode(response: HttpResponse, keep_alive: bool) -> bytes:
    head = [
        _STATUS_LINES.get(response.status) or f"HTTP/1.1 {response.status} \r\n".encode(),
        b"content-type: ",
        response.content_type.encode("latin-1"),
        b"\r\ncontent-length: ",
        str(len(response.body)).encode("latin-1"),
        b"\r\n",
    ]
    for name, value in response.headers:
        head.append(f"{name}: {value}\r\n".encode("latin-1"))
    if not keep_alive:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    head.append(response.body)
    return b"".join(head)


class _Connection(asyncio.Protocol):
    """One client connection. Requests are handled one at a time, in arrival order."""

    __slots__ = (
        "body",
        "closing",
        "current",
        "head_bytes",
        "headers",
        "last_active",
        "limit",
        "parser",
        "pending",
        "server",
        "too_large",
        "transport",
        "url",
        "worker",
    )

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limit = server.max_request_bytes
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.current = 0
        self.too_large = False
        self.head_bytes = 0
        self.last_active = 0.0
        self.pending: collections.deque[tuple[HttpRequest | None, bool]] = collections.deque()
        self.worker: asyncio.Task[None] | None = None
        self.closing = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.last_active = self.server.clock()
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.last_active = self.server.clock()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if self.head_bytes > MAX_HEAD_BYTES:
                self._reject(431, f"request line and headers exceed {MAX_HEAD_BYTES} bytes")
            else:
                raise
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed HTTP request: {exc}")

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = []
        self.current = 0
        self.too_large = False
        self.head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        self._count_head(len(name) + len(value))

    def _count_head(self, n: int) -> None:
        # The body has its own limit; this one stops an endless URL or header block.
        self.head_bytes += n
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            self.too_large = True
        elif (
            self.headers.get("expect", "").lower() == "100-continue"
            and self.worker is None
            and not self.pending
            and self.transport is not None
        ):
            # curl (bodies >= 1 MiB) and others wait up to a second for this before sending
            # the body. Only when no earlier response is owed, so answers stay in order.
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.too_large:
            return
        self.current += len(body)
        if self.current > self.limit:
            self.too_large = True
            self.body = []
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        keep_alive = self.parser.should_keep_alive()
        if self.too_large:
            self.pending.append((None, False))
        else:
            url = self.url
            q = url.find(b"?")
            path = (url if q < 0 else url[:q]).decode("latin-1")
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            self.pending.append(
                (
                    HttpRequest(
                        self.parser.get_method().decode("latin-1"), path, body, self.headers
                    ),
                    keep_alive,
                )
            )
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._serve())

    # request handling
    async def _serve(self) -> None:
        server = self.server
        try:
            while self.pending:
                request, keep_alive = self.pending.popleft()
                if request is None:
                    response = HttpResponse(
                        413,
                        encode_error(
                            PayloadTooLarge(
                                f"request body exceeds the {self.limit}-byte limit"
                            ).message
                        ),
                    )
                else:
                    server.in_flight += 1
                    try:
                        response = await server.app.handle(request)
                    finally:
                        server.in_flight -= 1
                        if server.in_flight == 0:
                            server.idle.set()
                keep_alive = keep_alive and not server.stopping
                transport = self.transport
                if transport is None:
                    return
                if response.stream is not None:
                    if not await self._stream(transport, response, keep_alive):
                        return
                else:
                    transport.write(_encode(response, keep_alive))
                if not keep_alive:
                    transport.close()
                    return
        finally:
            self.worker = None

    async def _stream(
        self, transport: asyncio.Transport, response: HttpResponse, keep_alive: bool
    ) -> bool:
        """Send a streamed body with chunked encoding; False when the client went away."""
        head = [
            _STATUS_LINES.get(response.status) or f"HTTP/1.1 {response.status} \r\n".encode(),
            b"content-type: " + response.content_type.encode("latin-1") + b"\r\n",
            b"transfer-encoding: chunked\r\n",
        ]
        for name, value in response.headers:
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        if not keep_alive:
            head.append(b"connection: close\r\n")
        transport.write(b"".join(head) + b"\r\n")
        assert response.stream is not None
        stream = response.stream
        try:
            async for chunk in stream:
                if self.transport is None:
                    return False
                if chunk:
                    transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        if self.transport is None:
            return False
        transport.write(b"0\r\n\r\n")
        return True

    def _reject(self, status: int, message: str) -> None:
        if self.transport is not None:
            self.transport.write(_encode(HttpResponse(status, encode_error(message)), False))
            self.transport.close()

    def close_if_idle(self) -> None:
        if self.worker is None and self.transport is not None:
            self.transport.close()


class HttpServer:
    """Serves an :class:`HttpApp` on one host/port."""

    def __init__(
        self,
        app: HttpApp,
        host: str,
        port: int,
        max_request_bytes: int,
        keep_alive_s: float = 60.0,
    ) -> None:
        self.app = app
        self.keep_alive_s = keep_alive_s
        self.clock = time.monotonic
        self._sweeper: asyncio.Task[None] | None = None
        self.host = host
        self.port = port
        self.max_request_bytes = max_request_bytes
        self.connections: set[_Connection] = set()
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.stopping = False
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        """Bind and listen; returns the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), self.host, self.port, backlog=2048, reuse_address=True
        )
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        if self.keep_alive_s > 0:
            self._sweeper = loop.create_task(self._sweep())
        return self.port

    async def _sweep(self) -> None:
        """Close keep-alive connections idle longer than ``keep_alive_s``.

        A periodic sweep rather than a timer per request: the request path only stores a
        timestamp.
        """
        period = min(5.0, self.keep_alive_s / 2)
        while True:
            await asyncio.sleep(period)
            cutoff = self.clock() - self.keep_alive_s
            for conn in list(self.connections):
                if conn.last_active < cutoff:
                    conn.close_if_idle()

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, let in-flight requests finish, close the connections."""
        self.stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        if self.in_flight:
            self.idle.clear()
            try:
                await asyncio.wait_for(self.idle.wait(), grace_s)
            except TimeoutError:
                log.warning(
                    "%d request(s) still running after %.1fs; closing", self.in_flight, grace_s
                )
        for conn in list(self.connections):
            conn.close_if_idle()
        if self._server is not None:
            await self._server.wait_closed()
