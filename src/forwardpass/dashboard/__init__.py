"""The dashboard: a static web page the HTTP server serves at ``/``.

The page (``static/index.html``, ``app.js``, ``app.css``) is plain HTML, CSS and JavaScript
with no build step and nothing fetched from elsewhere: its charts are SVG drawn by ``app.js``,
and its data comes from the server's own API (``/metrics``, the repository index, ``/monitor``,
``/fairness``, ``/log``, ``/infer``), each call checked by the API's own access rules. The
routes here serve files only, so they belong to no restricted API group.

Caching: ``/`` (the HTML) is revalidated on every load (``no-cache`` with an ETag, so a reload
after an upgrade gets the new page); it names the scripts and styles with their content hash
(``/dashboard/app.<hash>.js``), which are then cached for a year as immutable.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

__all__ = ["Asset", "Dashboard"]

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}

#: The page may talk to its own origin only, and runs no inline script.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"


@dataclass(frozen=True, slots=True)
class Asset:
    """One file of the page, ready to send."""

    body: bytes
    content_type: str
    etag: str
    cache_control: str

    def headers(self) -> list[tuple[str, str]]:
        return [
            ("ETag", self.etag),
            ("Cache-Control", self.cache_control),
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
            ("Referrer-Policy", "no-referrer"),
        ]


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


class Dashboard:
    """The page's files, read once from the package: ``lookup(path)`` → an asset or None."""

    def __init__(self) -> None:
        static = resources.files(__name__) / "static"
        self.assets: dict[str, Asset] = {}
        html = (static / "index.html").read_text(encoding="utf-8")
        for name in ("app.js", "app.css"):
            body = (static / name).read_bytes()
            stem, dot, suffix = name.rpartition(".")
            digest = hashlib.sha256(body).hexdigest()[:12]
            path = f"/dashboard/{stem}.{digest}.{suffix}"
            self.assets[path] = Asset(body, _TYPES[dot + suffix], _etag(body), _IMMUTABLE)
            # index.html names each file plainly; the served page names its hashed path.
            html = html.replace(f'"{name}"', f'"{path}"')
        body = html.encode("utf-8")
        self.assets["/"] = Asset(body, _TYPES[".html"], _etag(body), _REVALIDATE)

    def lookup(self, path: str) -> Asset | None:
        """The asset served at ``path`` (``/``, ``/index.html``, ``/dashboard/...``)."""
        if path in ("/index.html", "/dashboard", "/dashboard/"):
            path = "/"
        return self.assets.get(path)
