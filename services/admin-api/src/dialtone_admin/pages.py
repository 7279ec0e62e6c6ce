"""The pages a browser opens: the dashboard at ``/`` and the API docs at ``/docs``, with their
scripts, styles and the vendored Swagger UI served from ``/static`` (no CDN, no inline script).
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from dialtone_admin.middleware import CONTENT_SECURITY_POLICY

SWAGGER_UI = "/static/swagger-ui"

_DASHBOARD = resources.files("dialtone_admin").joinpath("dashboard.html").read_text(encoding="utf-8")
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def script_hashes(html: str) -> list[str]:
    """CSP sources (``'sha256-...'``) allowing exactly the inline scripts of ``html``."""
    return [
        f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
        for body in _INLINE_SCRIPT.findall(html)
    ]


def _docs_page(openapi_url: str, title: str) -> tuple[str, str]:
    """FastAPI's Swagger UI page on the local assets, and its Content-Security-Policy: the page's one
    inline script (the SwaggerUIBundle call) is allowed by its hash, all else as strict as elsewhere."""
    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=title,
        swagger_js_url=f"{SWAGGER_UI}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER_UI}/swagger-ui.css",
        swagger_favicon_url=f"{SWAGGER_UI}/favicon-32x32.png",
        # No badge from validator.swagger.io: the page talks to this server only.
        swagger_ui_parameters={"validatorUrl": None},
    )
    html = bytes(page.body).decode()
    policy = CONTENT_SECURITY_POLICY.replace(
        "script-src 'self'", " ".join(["script-src 'self'", *script_hashes(html)])
    )
    return html, policy


def install(app: FastAPI) -> None:
    """Serve the dashboard, the docs and their static files (the app is made with ``docs_url=None``)."""
    router = APIRouter(include_in_schema=False)
    docs_html, docs_policy = _docs_page(app.openapi_url or "/openapi.json", f"{app.title} - docs")

    @router.get("/")
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(_DASHBOARD)

    @router.get("/docs")
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(docs_html, headers={"Content-Security-Policy": docs_policy})

    app.include_router(router)
    app.mount("/static", StaticFiles(packages=[("dialtone_admin", "static")]), name="static")
