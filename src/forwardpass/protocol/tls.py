"""TLS for the server's endpoints: one ``ssl.SSLContext`` from the configured PEM files.

The files are the server's (``ServerConfig.tls_cert``/``tls_key``/``tls_ca``), not one wire's:
the HTTP server wraps its socket with this context, and a gRPC endpoint can load the same pair.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from forwardpass.errors import InvalidArgument

__all__ = ["server_context"]


def server_context(
    cert: Path | None, key: Path | None, ca: Path | None = None
) -> ssl.SSLContext | None:
    """A server-side context, or ``None`` when no TLS file is configured.

    With ``ca`` the context requires a client certificate signed by it (mutual TLS).
    """
    if cert is None and key is None and ca is None:
        return None
    if cert is None or key is None:
        raise InvalidArgument("TLS needs both --tls-cert and --tls-key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidArgument(
            f"cannot load the TLS certificate {cert} with key {key}: {exc}"
        ) from None
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidArgument(f"cannot load the TLS CA bundle {ca}: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
