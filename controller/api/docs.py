"""``/docs`` (Swagger UI) and ``/redoc`` that work without the Internet.

Why: FastAPI's default pages load Swagger UI's and ReDoc's JavaScript and CSS from a CDN, so
in a cluster without egress, or on a laptop offline, ``/docs`` is a blank page exactly when an
operator needs it. Here the pages reference only URLs of this app: the assets are the release
bundles shipped by the ``fastapi-offline`` package (a runtime dependency, used for its files
only) and are served under ``/docs/assets/``, behind the ASGI ``root_path`` when a proxy adds
one. Swagger UI's online validator badge is off (it would call validator.swagger.io),
ReDoc's Google fonts are not linked, and a Content-Security-Policy keeps the browser from
fetching anything elsewhere (ReDoc's bundle still names its vendor's logo on a CDN): offline
nothing waits for a timeout, online nothing leaks which API an operator is reading.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

__all__ = ["ASSETS", "ASSETS_PREFIX", "router"]

ASSETS_PREFIX = "/docs/assets"
"""Where the pages' JavaScript, CSS and icon are served."""

ASSET_DIR = Path(str(files("fastapi_offline") / "static"))
"""The installed ``fastapi_offline/static`` folder."""

ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
"""The files served (name -> media type); nothing else of the folder is reachable."""

CACHE_SECONDS = 24 * 3600
"""How long a browser may keep an asset without asking again (s): they change only with the
package version, and ETag revalidation covers an upgrade after that."""

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",  # Swagger UI is started by an inline script
        "style-src 'self' 'unsafe-inline'",  # both set styles at run time
        "img-src 'self' data:",
        "font-src 'self' data:",
        "worker-src 'self' blob:",  # ReDoc's search index
        "connect-src 'self'",
    ]
)
"""The pages' Content-Security-Policy: this app, inline code and data: URLs, nothing else."""

router = APIRouter(include_in_schema=False)


def _prefix(request: Request) -> str:
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    root = _prefix(request)
    page = get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS_PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_PREFIX}/favicon.png",
        oauth2_redirect_url=None,
        swagger_ui_parameters={"validatorUrl": None},
    )
    page.headers["Content-Security-Policy"] = CSP
    return page


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    root = _prefix(request)
    page = get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS_PREFIX}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS_PREFIX}/favicon.png",
        with_google_fonts=False,
    )
    page.headers["Content-Security-Policy"] = CSP
    return page


@router.get(ASSETS_PREFIX + "/{name}")
def asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None or not (ASSET_DIR / name).is_file():  # a 404, not a 500, if the
        # package ever moves its files (tests/unit/controller/api/test_docs.py would say so)
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such documentation asset")
    return FileResponse(
        ASSET_DIR / name,
        media_type=media_type,
        headers={"Cache-Control": f"public, max-age={CACHE_SECONDS}"},
    )
