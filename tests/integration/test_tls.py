"""HTTPS and mutual TLS against a real ``forwardpass serve``, with certificates made here.

A throw-away CA signs a server certificate for 127.0.0.1 and a client certificate (with the
``openssl`` command line: the ``cryptography`` package is not a test dependency).
"""

from __future__ import annotations

import http.client
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _signed(folder: Path, ca: Path, ca_key: Path, name: str, extensions: str) -> Path:
    key, csr, cert, ext = (folder / f"{name}.{s}" for s in ("key", "csr", "pem", "ext"))
    ext.write_text(extensions + "\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN={name}")  # fmt: skip
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", "1", "-extfile", ext)  # fmt: skip
    return cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign")  # fmt: skip
    server = _signed(folder, ca, ca_key, "server",
                     "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth")  # fmt: skip
    client = _signed(folder, ca, ca_key, "client", "extendedKeyUsage=clientAuth")
    return {
        "ca": ca,
        "server": server,
        "server_key": folder / "server.key",
        "client": client,
        "client_key": folder / "client.key",
    }


def _https_status(port: int, context: ssl.SSLContext) -> int:
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request("GET", "/v2/health/live")
        return connection.getresponse().status
    finally:
        connection.close()


def _client_context(pki: dict[str, Path], with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki["ca"])
    if with_cert:
        context.load_cert_chain(pki["client"], pki["client_key"])
    return context


def test_https_serves_and_plain_http_is_refused(start_server: Any, pki: dict[str, Path]) -> None:
    server = start_server(
        None, "--tls-cert", str(pki["server"]), "--tls-key", str(pki["server_key"])
    )
    assert server.url.startswith("https://")
    assert _https_status(server.port, _client_context(pki, with_cert=False)) == 200
    # The same port does not speak plain HTTP: no HTTP answer, only a closed connection.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            reply = sock.recv(65536)
        except ConnectionResetError:
            reply = b""
    assert not reply.startswith(b"HTTP/1.1 200"), reply


def test_mutual_tls_refuses_a_client_without_a_certificate(
    start_server: Any, pki: dict[str, Path]
) -> None:
    server = start_server(
        None,
        "--tls-cert",
        str(pki["server"]),
        "--tls-key",
        str(pki["server_key"]),
        "--tls-ca",
        str(pki["ca"]),
    )
    with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
        _https_status(server.port, _client_context(pki, with_cert=False))
    assert _https_status(server.port, _client_context(pki, with_cert=True)) == 200


def test_a_missing_key_file_is_one_line(tmp_path: Path, pki: dict[str, Path]) -> None:
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "forwardpass", "serve", "--http-port", "0",
         "--tls-cert", str(pki["server"]), "--tls-key", str(tmp_path / "absent.key")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert "cannot load the TLS certificate" in result.stderr
