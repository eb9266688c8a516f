"""ServerConfig from the environment: optional paths and lists are typed, not left as text."""

from __future__ import annotations

from pathlib import Path

from forwardpass.config import ServerConfig


def test_tls_and_cors_settings_from_the_environment() -> None:
    config = ServerConfig.from_env(
        {
            "FORWARDPASS_TLS_CERT": "/etc/fp/cert.pem",
            "FORWARDPASS_TLS_KEY": "/etc/fp/key.pem",
            "FORWARDPASS_CORS_ORIGINS": "http://a.example,http://b.example",
            "FORWARDPASS_READ_TIMEOUT_S": "2.5",
            "FORWARDPASS_MAX_CONNECTIONS": "10",
        }
    )
    assert config.tls_cert == Path("/etc/fp/cert.pem")
    assert config.tls_key == Path("/etc/fp/key.pem")
    assert config.tls_ca is None
    assert config.cors_origins == ("http://a.example", "http://b.example")
    assert config.read_timeout_s == 2.5
    assert config.max_connections == 10


def test_off_by_default() -> None:
    config = ServerConfig.from_env({})
    assert config.tls_cert is None and config.cors_origins == ()
