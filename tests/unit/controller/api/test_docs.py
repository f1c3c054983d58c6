"""``/docs`` and ``/redoc`` work offline: every URL they load is served by the app itself.

Cases: each page references only same-origin URLs (no scheme, no host, nothing protocol-
relative) and each of those answers 200 with JavaScript, CSS, an icon or the OpenAPI JSON;
a Content-Security-Policy keeps the browser on this origin (ReDoc's bundle names a logo on a
CDN); behind a proxy prefix (ASGI ``root_path``) the URLs carry it; only the known asset names are
served (no other file of the package folder, no path tricks); the asset routes stay out of the
OpenAPI schema; Swagger UI's online validator is off.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from controller.api.docs import ASSETS
from tests.unit.controller.api.support import Controller


class _Urls(HTMLParser):
    """Every ``src`` and ``href`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href", "spec-url") and v is not None]


def page_urls(html: str) -> list[str]:
    parser = _Urls()
    parser.feed(html)
    config = re.findall(r"url: '([^']*)'", html)  # SwaggerUIBundle({url: '...'})
    return parser.urls + config


def assert_same_origin(url: str) -> None:
    assert url.startswith("/") and not url.startswith("//"), url


EXPECTED_TYPES = {
    ".js": ("text/javascript", b"function"),
    ".css": ("text/css", b"{"),
    ".png": ("image/png", b"\x89PNG"),
    ".json": ("application/json", b'"openapi"'),
}


@pytest.mark.parametrize(("page", "marker"), [("/docs", "SwaggerUIBundle"), ("/redoc", "<redoc")])
def test_the_docs_pages_load_only_same_origin_assets(
    ctl: Controller, page: str, marker: str
) -> None:
    response = ctl.client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert marker in html
    assert "://" not in html  # no CDN, no fonts service, no validator
    policy = response.headers["content-security-policy"]  # nor anything the bundles name
    assert "default-src 'self'" in policy and "http" not in policy
    urls = page_urls(html)
    assert len(urls) >= 3, urls  # the script, the icon, the schema (and Swagger UI's CSS)
    for url in urls:
        assert_same_origin(url)
        asset = ctl.client.get(url)
        assert asset.status_code == 200, url
        suffix = url[url.rindex(".") :]
        media_type, start = EXPECTED_TYPES[suffix]
        assert asset.headers["content-type"].startswith(media_type), url
        assert start in asset.content[:4096], url
        assert len(asset.content) > 50, url
    if page == "/docs":
        assert '"validatorUrl": null' in html
        css = [u for u in urls if u.endswith(".css")]
        assert css and b".swagger-ui" in ctl.client.get(css[0]).content


def test_behind_a_proxy_prefix_the_pages_point_under_it(ctl: Controller) -> None:
    proxied = TestClient(ctl.app, root_path="/meshpilot")
    for page in ("/docs", "/redoc"):
        urls = page_urls(proxied.get(page).text)
        assert urls and all(u.startswith("/meshpilot/") for u in urls), urls


def test_only_the_known_assets_are_served(ctl: Controller) -> None:
    for name in ASSETS:
        response = ctl.client.get(f"/docs/assets/{name}")
        assert response.status_code == 200, name
        assert "max-age" in response.headers["cache-control"]
    for path in (
        "/docs/assets/core.py",
        "/docs/assets/..%2Fcore.py",
        "/docs/assets/../core.py",
        "/docs/assets/%2e%2e/__init__.py",
        "/docs/assets/",
    ):
        assert ctl.client.get(path).status_code == 404, path


def test_the_docs_routes_stay_out_of_the_schema(ctl: Controller) -> None:
    paths = ctl.client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]
