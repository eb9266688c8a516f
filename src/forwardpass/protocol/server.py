"""A lean HTTP/1.1 server for :class:`HttpApp`: asyncio protocol + httptools parser.

Python inference servers lose most of their time in the web framework, not the model. This
server does only what the protocol needs, and guards each connection so that one client cannot
hurt the others:

- keep-alive, and pipelined requests answered in order; a malformed request in a pipeline is
  answered (400, 413, 431) after the good ones before it, then the connection is closed;
- backpressure: a connection stops being read while its unsent responses are above the
  transport's high-water mark or while ``MAX_PENDING`` of its requests wait for an answer, and
  the worker yields to other connections between pipelined requests;
- bounds: a 64 KiB head (counted as bytes arrive, not as headers complete), the body limit
  (413 as soon as a Content-Length or the bytes so far exceed it, before reading the body),
  ``MAX_CHUNKS`` chunks per chunked body, ``read_timeout_s`` for a request to arrive (408),
  ``max_connections`` (503 to one more);
- optional TLS (mutual with a CA) and CORS; a graceful stop that lets in-flight requests finish.

Timeouts are enforced by one periodic sweep; the request path only stores timestamps.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import time
from http import HTTPStatus

import httptools

from forwardpass.config import ServerConfig
from forwardpass.errors import PayloadTooLarge, Unavailable
from forwardpass.protocol.codec import encode_error
from forwardpass.protocol.cors import Cors
from forwardpass.protocol.http import HttpApp, HttpRequest, HttpResponse
from forwardpass.protocol.tls import server_context

__all__ = ["HttpServer"]

log = logging.getLogger("forwardpass.server")

#: Request line plus headers; Triton's clients send a few hundred bytes.
MAX_HEAD_BYTES = 64 * 1024
#: Chunks one chunked request body may have (Triton's cap, against bodies of tiny chunks).
MAX_CHUNKS = 1 << 16
#: Requests of one connection parsed but not yet answered before it stops being read.
MAX_PENDING = 32
#: Reading resumes once the unanswered requests drop to this many.
RESUME_PENDING = MAX_PENDING // 2
#: A larger read is parsed in slices of this size, so a burst of pipelined requests is parsed
#: only as far as ``MAX_PENDING`` (the rest waits, unparsed, for the worker to catch up).
FEED_BYTES = 8 * 1024
#: Unsent response bytes above which a connection stops being read, and below which it resumes.
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
#: Seconds a refused connection is still read (and the bytes dropped) before it is closed, so
#: that the close does not reset the refusal away before the client has read it.
LINGER_S = 2.0


class _Stop(Exception):
    """Raised inside the parser's callbacks once the request has been refused."""


_STATUS_LINES = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("latin-1") for s in HTTPStatus
}


def _encode(
    response: HttpResponse, keep_alive: bool, extra: list[tuple[str, str]] | None = None
) -> bytes:
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
    if extra is not None:
        for name, value in extra:
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
    if not keep_alive:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    head.append(response.body)
    return b"".join(head)


class _Connection(asyncio.Protocol):
    """One client connection. Requests are handled one at a time, in arrival order."""

    __slots__ = (
        "began",
        "body",
        "chunks",
        "current",
        "done",
        "fresh",
        "head_bytes",
        "head_seen",
        "headers",
        "in_head",
        "last_active",
        "limit",
        "parser",
        "paused",
        "pending",
        "refusal",
        "server",
        "stalled_since",
        "stash",
        "transport",
        "url",
        "worker",
        "writable",
        "write_paused",
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
        self.chunks = 0
        #: When the request being read began (0: none is being read).
        self.began = 0.0
        self.in_head = False
        #: The head began in the slice being fed (its bytes before the head are not the head's).
        self.fresh = False
        #: Bytes of the slices fed while the head was incomplete before and after them.
        self.head_bytes = 0
        #: URL and complete headers, as the parser hands them over.
        self.head_seen = 0
        self.last_active = 0.0
        self.pending: collections.deque[tuple[HttpRequest, bool]] = collections.deque()
        self.worker: asyncio.Task[None] | None = None
        #: Received, not yet parsed: waits while too many requests are unanswered.
        self.stash: memoryview | None = None
        #: Reading paused by this side (backpressure).
        self.paused = False
        self.write_paused = False
        self.stalled_since = 0.0
        self.writable: asyncio.Future[None] | None = None
        #: The answer that ends the connection once the requests before it are answered.
        self.refusal: HttpResponse | None = None
        #: Nothing more is parsed (a refusal is owed or sent); bytes that arrive are dropped.
        self.done = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        self.last_active = server.clock()
        if len(server.connections) >= server.max_connections:
            self.done = True
            self.refusal = HttpResponse(
                503,
                encode_error(
                    f"the server is at its limit of {server.max_connections} connections; "
                    "retry later"
                ),
            )
            self._send_refusal()
            return
        server.connections.add(self)
        transport.set_write_buffer_limits(  # type: ignore[attr-defined]
            WRITE_HIGH_WATER, WRITE_LOW_WATER
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        self.stash = None
        self._wake_writer()

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop reading its requests until it does.
        self.write_paused = True
        self.stalled_since = self.server.clock()
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()
        self._resume_reading()

    def data_received(self, data: bytes) -> None:
        self.last_active = self.server.clock()
        if self.done:
            return
        if self.stash is not None:  # arrived while pausing: keep the order
            self.stash = memoryview(bytes(self.stash) + data)
            return
        if len(data) <= FEED_BYTES:
            self._feed(data)
        else:
            self._feed_slices(memoryview(data))

    def _feed_slices(self, view: memoryview) -> None:
        for start in range(0, len(view), FEED_BYTES):
            if self.done:
                return
            if len(self.pending) >= MAX_PENDING:
                self.stash = view[start:]
                self._pause_reading()
                return
            self._feed(view[start : start + FEED_BYTES])

    def _feed(self, data: bytes | memoryview) -> None:
        in_head = self.in_head
        self.fresh = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if not self.done:  # not one of our refusals: a bug in a callback
                raise
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")
        else:
            # httptools reports a header only once its line ends, so an endless header value
            # never reaches on_header: count the raw bytes of a head still incomplete.
            if in_head and self.in_head and not self.fresh:
                self.head_bytes += len(data)
                if self.head_bytes > MAX_HEAD_BYTES:
                    self._refuse_head()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = []
        self.current = 0
        self.chunks = 0
        self.head_bytes = 0
        self.head_seen = 0
        self.in_head = True
        self.fresh = True
        self.began = self.last_active

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        self._count_head(len(name) + len(value))

    def _count_head(self, n: int) -> None:
        self.head_seen += n
        if self.head_seen > MAX_HEAD_BYTES:
            self._refuse_head()
            raise _Stop

    def on_headers_complete(self) -> None:
        self.in_head = False
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            # At once, before any body byte, and instead of a 100 Continue (as Triton does).
            self._refuse_body(f"request body of {length} bytes exceeds")
            raise _Stop
        if (
            self.headers.get("expect", "").lower() == "100-continue"
            and self.worker is None
            and not self.pending
            and self.transport is not None
        ):
            # curl (bodies >= 1 MiB) and others wait up to a second for this before sending
            # the body. Only when no earlier response is owed, so answers stay in order.
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_chunk_header(self) -> None:
        self.chunks += 1
        if self.chunks > MAX_CHUNKS + 1:  # the last, empty chunk is not counted
            self._refuse_chunks()
            raise _Stop

    def on_body(self, body: bytes) -> None:
        if self.chunks > MAX_CHUNKS:
            self._refuse_chunks()
            raise _Stop
        self.current += len(body)
        if self.current > self.limit:
            self._refuse_body("request body exceeds")
            raise _Stop
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.began = 0.0
        keep_alive = self.parser.should_keep_alive()
        url = self.url
        q = url.find(b"?")
        path = (url if q < 0 else url[:q]).decode("latin-1")
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.pending.append(
            (
                HttpRequest(
                    self.parser.get_method().decode("latin-1"),
                    path,
                    body,
                    self.headers,
                    (url[q + 1 :] if q >= 0 else b"").decode("latin-1"),
                ),
                keep_alive,
            )
        )
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._serve())
        elif len(self.pending) >= MAX_PENDING:
            self._pause_reading()

    # request handling
    async def _serve(self) -> None:
        server = self.server
        app = server.app
        cors = server.cors
        pending = self.pending
        try:
            while pending:
                request, keep_alive = pending.popleft()
                if self.paused and len(pending) <= RESUME_PENDING:
                    self._resume_reading()
                server.in_flight += 1
                extra = None
                try:
                    if cors is None:
                        response = await app.handle(request)
                    else:
                        extra = cors.headers(request)
                        if (
                            request.method == "OPTIONS"
                            and "access-control-request-method" in request.headers
                        ):
                            response = cors.preflight(request, extra)
                        else:
                            response = await app.handle(request)
                finally:
                    server.in_flight -= 1
                    if server.in_flight == 0:
                        server.idle.set()
                keep_alive = keep_alive and not server.stopping
                transport = self.transport
                if transport is None:
                    return
                if response.stream is not None:
                    if not await self._stream(transport, response, keep_alive, extra):
                        return
                else:
                    transport.write(_encode(response, keep_alive, extra))
                if not keep_alive:
                    transport.close()
                    return
                if self.write_paused:
                    await self._drained()
                elif pending:
                    # A pipelining client must not hold the loop: other connections go first.
                    await asyncio.sleep(0)
            if self.refusal is not None:
                self._send_refusal()
        finally:
            self.worker = None

    async def _drained(self) -> None:
        if self.writable is None:
            self.writable = asyncio.get_running_loop().create_future()
        await self.writable

    def _wake_writer(self) -> None:
        waiter = self.writable
        if waiter is not None:
            self.writable = None
            if not waiter.done():
                waiter.set_result(None)

    def _pause_reading(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if not self.paused or self.write_paused or self.done or self.transport is None:
            return
        stash = self.stash
        if stash is not None:
            self.stash = None
            self._feed_slices(stash)
            if self.stash is not None or self.done:
                return
        if len(self.pending) >= MAX_PENDING:
            return
        self.paused = False
        if self.began:
            self.began = self.server.clock()  # the time paused does not count against it
        self.transport.resume_reading()

    # refusals: answered after the requests before them, then the connection closes
    def _refuse_head(self) -> None:
        self._refuse(431, f"request line and headers exceed {MAX_HEAD_BYTES} bytes")

    def _refuse_body(self, what: str) -> None:
        self._refuse(413, PayloadTooLarge(f"{what} the {self.limit}-byte limit").message)

    def _refuse_chunks(self) -> None:
        self._refuse(400, f"chunked request body has more than {MAX_CHUNKS} chunks")

    def _refuse(self, status: int, message: str) -> None:
        if self.done:
            return
        self.done = True
        self.began = 0.0
        self.stash = None
        self.refusal = HttpResponse(status, encode_error(message))
        if self.worker is None:
            self._send_refusal()

    def _send_refusal(self) -> None:
        transport = self.transport
        if transport is None or self.refusal is None:
            return
        transport.write(_encode(self.refusal, False))
        self.refusal = None
        # Keep reading (and dropping) for a moment: closing with unread bytes would send a
        # reset, which can destroy the answer before the client reads it.
        if self.paused:
            self.paused = False
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def time_out(self, timeout_s: float) -> None:
        self._refuse(408, f"the request did not arrive within {timeout_s:g} s")

    async def _stream(
        self,
        transport: asyncio.Transport,
        response: HttpResponse,
        keep_alive: bool,
        extra: list[tuple[str, str]] | None = None,
    ) -> bool:
        """Send a streamed body with chunked encoding; False when the client went away."""
        head = [
            _STATUS_LINES.get(response.status) or f"HTTP/1.1 {response.status} \r\n".encode(),
            b"content-type: " + response.content_type.encode("latin-1") + b"\r\n",
            b"transfer-encoding: chunked\r\n",
        ]
        for name, value in (*response.headers, *(extra or ())):
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

    def close_if_idle(self) -> None:
        if self.worker is None and self.transport is not None:
            self.transport.close()


class HttpServer:
    """Serves an :class:`HttpApp` on the host, port and limits of a :class:`ServerConfig`."""

    def __init__(self, app: HttpApp, config: ServerConfig) -> None:
        self.app = app
        self.config = config
        self.keep_alive_s = config.keep_alive_s
        self.read_timeout_s = config.read_timeout_s
        self.max_connections = config.max_connections
        self.max_request_bytes = config.max_request_bytes
        self.cors = Cors(config.cors_origins) if config.cors_origins else None
        # Built here, so a bad TLS file is reported before any model is loaded.
        self.ssl = server_context(config.tls_cert, config.tls_key, config.tls_ca)
        self.clock = time.monotonic
        self._sweeper: asyncio.Task[None] | None = None
        self.host = config.host
        self.port = config.http_port
        self.connections: set[_Connection] = set()
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.stopping = False
        self._server: asyncio.base_events.Server | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.ssl is not None else "http"

    async def start(self) -> int:
        """Bind and listen; returns the bound port (useful with port 0)."""
        ssl = self.ssl
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _Connection(self),
                self.host,
                self.port,
                backlog=2048,
                reuse_address=True,
                # Several worker processes share the port (serve --workers N).
                reuse_port=self.config.workers > 1,
                ssl=ssl,
                ssl_handshake_timeout=(self.read_timeout_s or None) if ssl else None,
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise Unavailable(
                    f"port {self.port} on {self.host} is already in use; "
                    "choose another with --http-port (0 picks a free one)"
                ) from None
            raise Unavailable(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}; "
                "check --host and --http-port"
            ) from None
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        periods = [t / 4 for t in (self.keep_alive_s, self.read_timeout_s) if t > 0]
        if periods:
            self._sweeper = loop.create_task(self._sweep(min(5.0, *periods)))
        return self.port

    async def _sweep(self, period: float) -> None:
        """Close idle keep-alive connections; answer 408 to requests slower than the timeout.

        A periodic sweep rather than a timer per request: the request path only stores a
        timestamp.
        """
        while True:
            await asyncio.sleep(period)
            now = self.clock()
            idle = now - self.keep_alive_s if self.keep_alive_s > 0 else None
            late = now - self.read_timeout_s if self.read_timeout_s > 0 else None
            for conn in list(self.connections):
                if late is not None:
                    if 0.0 < conn.began < late and not conn.paused:
                        conn.time_out(self.read_timeout_s)
                        continue
                    if conn.write_paused and conn.stalled_since < late:
                        # It has read none of its answers for that long: give up on it.
                        if conn.transport is not None:
                            conn.transport.abort()
                        continue
                if idle is not None and conn.last_active < idle:
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
