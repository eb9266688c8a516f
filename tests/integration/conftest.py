"""Fixtures for the integration tests: one shared server on the main test repository, clients,
and a raw HTTP helper for requests tritonclient cannot produce."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from modelrepo import build_main_repository
from rawhttp import MAX_REQUEST_BYTES, RawResponse, raw_request


@pytest.fixture(scope="session")
def main_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_main_repository(tmp_path_factory.mktemp("main") / "models")


@pytest.fixture(scope="session")
def server(start_session_server: Any, main_repository: Path) -> Any:
    """The shared server: every model of the main repository, a 1 MiB request limit."""
    # The repository holds broken models on purpose: readiness ignores them (not strict).
    return start_session_server(
        main_repository,
        "--max-request-bytes",
        str(MAX_REQUEST_BYTES),
        "--no-strict-readiness",
        "--log-level",
        "WARNING",
    )


@pytest.fixture
def client(server: Any) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(server.address, concurrency=16)
    try:
        yield triton
    finally:
        triton.close()


@pytest.fixture
def raw(server: Any) -> Any:
    """``raw(method, path, body=None, headers=None)`` against the shared server."""

    def send(
        method: str,
        path: str,
        body: bytes | str | dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> RawResponse:
        return raw_request(server.address, method, path, body, headers)

    return send


@pytest.fixture
def region() -> Iterator[Any]:
    """``region(name, byte_size)`` creates a client region; all are destroyed at the end."""
    handles: list[Any] = []

    def create(name: str, byte_size: int) -> tuple[Any, str]:
        key = f"/fp_it_{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(name, key, byte_size)
        handles.append(handle)
        return handle, key

    try:
        yield create
    finally:
        for handle in handles:
            shm.destroy_shared_memory_region(handle)
