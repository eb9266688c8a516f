"""The HTTP server in-process: idle keep-alive connections are closed, busy ones are not."""

from __future__ import annotations

import asyncio
from pathlib import Path

from model_builders import run_with_engine

from forwardpass.config import ServerConfig
from forwardpass.engine import Engine
from forwardpass.protocol.http import HttpApp
from forwardpass.protocol.server import HttpServer


def test_idle_keep_alive_connections_are_closed(repo: Path) -> None:
    async def body(engine: Engine) -> None:
        config = ServerConfig(http_port=0, max_request_bytes=1 << 20, keep_alive_s=0.3)
        server = HttpServer(HttpApp(engine), config)
        port = await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            # Still open while it is within the keep-alive window...
            writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            # ...and closed by the server once idle longer than it.
            assert await asyncio.wait_for(reader.read(), timeout=5) == b""
            writer.close()
        finally:
            await server.stop(1.0)

    run_with_engine(repo, body)
