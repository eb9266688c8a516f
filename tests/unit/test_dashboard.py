"""The dashboard's files on the HTTP app: content types, caching, access rules, no CDN."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from protocol.test_http_app import Call, with_app

from forwardpass.access import AccessPolicy
from forwardpass.config import ServerConfig
from forwardpass.dashboard import Dashboard
from forwardpass.engine import Engine


def _asset_paths(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="(/[^"]+)"', html)


def test_page_and_assets_are_served_with_types_and_cache_headers(repo: Path) -> None:
    async def body(call: Call, engine: Engine) -> None:
        page = await call("GET", "/")
        assert page.status == 200
        assert page.content_type == "text/html; charset=utf-8"
        headers = dict(page.headers)
        assert headers["Cache-Control"] == "no-cache"  # revalidated: a new release shows
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert "connect-src 'self'" in headers["Content-Security-Policy"]
        html = page.body.decode()
        paths = _asset_paths(html)
        assert sorted(p.rsplit(".", 1)[1] for p in paths) == ["css", "js"]
        types = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8"}
        for path in paths:
            # Content-hashed names, cached for good.
            assert re.fullmatch(r"/dashboard/app\.[0-9a-f]{12}\.(js|css)", path), path
            asset = await call("GET", path)
            assert asset.status == 200
            assert asset.content_type == types[path.rsplit(".", 1)[1]]
            assert dict(asset.headers)["Cache-Control"] == "public, max-age=31536000, immutable"
            # A conditional request for the same content: 304, no body.
            etag = dict(asset.headers)["ETag"]
            again = await call("GET", path, if_none_match=etag)
            assert (again.status, again.body) == (304, b"")
        assert (await call("GET", "/index.html")).body == page.body
        etag = dict(page.headers)["ETag"]
        assert (await call("GET", "/", if_none_match=etag)).status == 304
        assert (await call("GET", "/", if_none_match='"stale"')).status == 200

    with_app(repo, body)


def test_unknown_files_and_other_methods_are_refused(repo: Path) -> None:
    async def body(call: Call, engine: Engine) -> None:
        for path in ("/dashboard/app.js", "/dashboard/../config.py", "/dashboard/x.html"):
            response = await call("GET", path)
            assert response.status == 404, path
            assert b"no route" in response.body
        response = await call("POST", "/")
        assert response.status == 400
        assert b"use GET" in response.body

    with_app(repo, body)


def test_the_page_is_static_and_open_while_the_api_is_restricted(repo: Path) -> None:
    """Restricted groups and an API key guard the data, not the page (which holds none)."""
    config = ServerConfig(api_key="sekret", http_restricted_api=("statistics,metadata:k=v",))

    async def body(call: Call, engine: Engine) -> None:
        assert (await call("GET", "/")).status == 200
        assert (await call("GET", "/v2/models/stats")).status == 403
        assert (await call("GET", "/v2/models/stats", k="v")).status == 200

    with_app(repo, body, access=AccessPolicy.from_config(config))


def test_nothing_is_fetched_from_elsewhere() -> None:
    """No CDN, no remote font or script: every URL in the page is of its own origin."""
    dashboard = Dashboard()
    for path, asset in dashboard.assets.items():
        text = asset.body.decode()
        urls = re.findall(r"\b(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text)
        # The SVG namespace is a name, not a fetch.
        assert [u for u in urls if u != "http://www.w3.org/2000/svg"] == [], path
        assert "import " not in text or path != "/", path


@pytest.mark.parametrize("flag, expected", [((), True), (("--no-dashboard",), False)])
def test_serve_flag_turns_the_dashboard_off(
    flag: tuple[str, ...], expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    import forwardpass.serving
    from forwardpass.cli.serve import serve

    seen: list[ServerConfig] = []
    monkeypatch.setattr(forwardpass.serving, "run_server", lambda config, **kw: seen.append(config))
    result = CliRunner().invoke(serve, [*flag, "--no-grpc"])
    assert result.exit_code == 0, result.output
    assert [c.dashboard for c in seen] == [expected]
