"""The pages a browser opens and the sign-in that guards them.

Every page has its own URL (``/calls``, ``/calls/<sid>``, ``/monitor`` (live calls), ``/overview``, ``/webhooks``, ``/tests``, ``/login``);
each serves the same shell, whose script (``/static/dashboard.js``) draws the page named by the
URL from the JSON API. Without a valid session a page redirects to ``/login?next=<itself>``; the
API answers 401. The shell's styles and scripts are files of this server: the policy admits no
inline script, and inline styles only with the response's nonce (wavesurfer.js draws its waveform
in a shadow root whose one ``<style>`` carries it). The API docs are at ``/docs``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from importlib import resources
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Path, Request, Security
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from dialtone_admin.auth import (
    COOKIE,
    bearer_scheme,
    check_guess,
    client_address,
    new_session,
    read_cookie,
    require_token,
    session,
    session_expiry,
    signins,
)
from dialtone_admin.errors import responses
from dialtone_admin.middleware import CONTENT_SECURITY_POLICY
from dialtone_admin.signins import SignInEntry, SignInUnavailable, signin_id

SWAGGER_UI = "/static/swagger-ui"
OPENAPI_URL = "/openapi.json"  # served with the docs, behind the token or a session

_SHELL = resources.files("dialtone_admin").joinpath("dashboard.html").read_text(encoding="utf-8")
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
_SAFE_NEXT = re.compile(r"^/(?:calls(?:/[A-Za-z0-9_-]{1,64})?|monitor|overview|webhooks|tests)(?:\?[^\s#]*)?\Z")


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


def shell(nonce: str | None = None) -> HTMLResponse:
    """The page shell with a fresh style nonce, and the policy admitting it."""
    nonce = nonce or secrets.token_urlsafe(18)
    policy = CONTENT_SECURITY_POLICY.replace("style-src 'self'", f"style-src 'self' 'nonce-{nonce}'")
    return HTMLResponse(_SHELL.replace("__NONCE__", nonce), headers={"Content-Security-Policy": policy})


def safe_next(value: str | None) -> str:
    """Where to go after signing in: one of our pages, never another site (``//evil``, ``https:``)."""
    return value if value and _SAFE_NEXT.match(value) else "/calls"


class SignIn(BaseModel):
    token: str = Field(min_length=1, max_length=1000, description="the ADMIN_TOKEN")


class SignedIn(BaseModel):
    expires_at: int = Field(description="when the session ends (Unix seconds)")


class SignInItem(SignInEntry):
    current: bool = Field(description="the sign-in of the request's own cookie")


class SignInList(BaseModel):
    items: list[SignInItem]


class Revoked(BaseModel):
    revoked: int = Field(description="how many sign-ins were ended")


def _unavailable(exc: SignInUnavailable) -> HTTPException:
    return HTTPException(503, detail=str(exc), headers={"Retry-After": "2"})


async def require_operator(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
) -> None:
    """Ending sign-ins: the bearer token, or a session cookie from this server's own page."""
    if credentials is not None:
        check_guess(request, credentials.credentials, "bearer")
        return
    if not _same_origin(request) or await session(request) is None:
        raise HTTPException(401, detail="missing bearer token or session", headers={"WWW-Authenticate": "Bearer"})


def _same_origin(request: Request) -> bool:
    """A sign-in posted by a page of another site (login CSRF) is refused; no Origin is a non-browser."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"


def install(app: FastAPI) -> None:
    """Serve the pages, the sign-in, the docs and the static files (the app is made with ``docs_url=None``)."""
    router = APIRouter(include_in_schema=False)
    auth = APIRouter(prefix="/auth", tags=["auth"])
    docs_html, docs_policy = _docs_page(OPENAPI_URL, f"{app.title} - docs")

    async def page(request: Request) -> Response:
        if await session_expiry(request) is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", 303)
        return shell()

    @router.get("/")
    async def root(request: Request) -> Response:
        return RedirectResponse("/calls" if await session_expiry(request) else "/login", 303)

    @router.get("/login")
    async def login(request: Request, next: str | None = None) -> Response:  # noqa: A002
        if await session_expiry(request) is not None:
            return RedirectResponse(safe_next(next), 303)
        return shell()

    @router.get("/calls")
    async def calls(request: Request) -> Response:
        return await page(request)

    @router.get("/calls/{call_sid}")
    async def call(request: Request, call_sid: str) -> Response:
        return await page(request)

    @router.get("/monitor")
    async def monitor(request: Request) -> Response:
        return await page(request)

    @router.get("/overview")
    async def overview(request: Request) -> Response:
        return await page(request)

    @router.get("/tests")
    async def tests(request: Request) -> Response:
        return await page(request)

    @router.get("/webhooks")
    async def webhooks(request: Request) -> Response:
        return await page(request)

    @router.get("/audit")
    async def audit(request: Request) -> Response:
        return await page(request)

    @router.get("/favicon.ico")
    async def favicon() -> Response:
        return RedirectResponse("/static/favicon.svg", 308)

    @router.get("/docs", dependencies=[Depends(require_token)])
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(docs_html, headers={"Content-Security-Policy": docs_policy})

    @router.get(OPENAPI_URL, dependencies=[Depends(require_token)])
    async def openapi_document() -> JSONResponse:
        return JSONResponse(app.openapi())

    @auth.post("/session", response_model=SignedIn, responses=responses(400, 401, 403, 503))
    async def sign_in(request: Request, body: Annotated[SignIn, Body()]) -> Response:
        """Exchange the admin token for a session cookie (HttpOnly, SameSite=Strict)."""
        if not _same_origin(request):
            raise HTTPException(403, detail="sign in from this server's own page")
        check_guess(request, body.token, "sign_in")
        settings = request.app.state.settings
        ttl = settings.session_ttl_s
        value, cookie = new_session(request, ttl)
        register = signins(request)
        if register is None:
            raise HTTPException(503, detail="the sign-in register is not ready", headers={"Retry-After": "2"})
        try:
            await register.add(
                cookie.nonce, cookie.expiry, client_address(request), request.headers.get("user-agent", "")
            )
        except SignInUnavailable as exc:
            raise _unavailable(exc) from exc
        response = JSONResponse({"expires_at": cookie.expiry})
        secure = settings.secure_cookies if settings.secure_cookies is not None else request.url.scheme == "https"
        response.set_cookie(
            COOKIE, value, max_age=int(ttl), path="/", httponly=True, samesite="strict", secure=secure,
        )  # fmt: skip
        return response

    @auth.get("/session", response_model=SignedIn, responses=responses(401))
    async def current_session(request: Request) -> dict:
        """The current session's expiry; 401 when there is none."""
        if (expiry := await session_expiry(request)) is None:
            raise HTTPException(401, detail="not signed in", headers={"WWW-Authenticate": "Bearer"})
        return {"expires_at": expiry}

    @auth.post("/logout", status_code=204, responses=responses(503))
    async def sign_out(request: Request) -> Response:
        """End the session everywhere: every instance refuses its cookie, and its open streams
        (live view, listen-in) end, within a second; the cookie is cleared."""
        cookie = read_cookie(request)
        register = signins(request)
        if cookie is not None and register is not None:
            try:
                await register.revoke(signin_id(cookie.nonce))
            except SignInUnavailable as exc:
                raise _unavailable(exc) from exc
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @auth.get(
        "/sessions", response_model=SignInList, responses=responses(401), dependencies=[Depends(require_token)]
    )
    async def list_signins(request: Request) -> dict:
        """The dashboard sign-ins in force on every instance, newest first."""
        register = signins(request)
        cookie = read_cookie(request)
        mine = signin_id(cookie.nonce) if cookie else None
        items = register.list() if register else []
        return {"items": [{**s.model_dump(), "current": s.id == mine} for s in items]}

    @auth.delete(
        "/sessions", response_model=Revoked, responses=responses(401, 503), dependencies=[Depends(require_operator)]
    )
    async def revoke_all(request: Request) -> dict:
        """Sign every session out, on every instance (the caller's own included): each cookie is
        refused and each open stream ends within a second. The bearer token is not affected."""
        register = signins(request)
        if register is None:
            raise HTTPException(503, detail="the sign-in register is not ready", headers={"Retry-After": "2"})
        try:
            return {"revoked": await register.revoke_all()}
        except SignInUnavailable as exc:
            raise _unavailable(exc) from exc

    @auth.delete(
        "/sessions/{signin}", status_code=204, responses=responses(401, 404, 503),
        dependencies=[Depends(require_operator)],
    )  # fmt: skip
    async def revoke_one(request: Request, signin: Annotated[str, Path(pattern="^[0-9a-f]{32}$")]) -> Response:
        """Sign one session out everywhere (its id from ``GET /auth/sessions``)."""
        register = signins(request)
        if register is None:
            raise HTTPException(503, detail="the sign-in register is not ready", headers={"Retry-After": "2"})
        try:
            if not await register.revoke(signin):
                raise HTTPException(404, detail="no such sign-in in force")
        except SignInUnavailable as exc:
            raise _unavailable(exc) from exc
        return Response(status_code=204)

    app.include_router(router)
    app.include_router(auth)
    app.mount("/static", StaticFiles(packages=[("dialtone_admin", "static")]), name="static")
