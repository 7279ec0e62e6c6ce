"""Authentication: the API takes the admin token as a bearer token; a browser exchanges it once
(``POST /auth/session``) for a session cookie, so no script of the page ever holds the token.

The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends
it) and ``Secure`` over HTTPS. Its value is ``v1.<expiry>.<nonce>.<mac>``: an HMAC-SHA256 under a
key derived from the admin token, so changing ``ADMIN_TOKEN`` ends every session. A cookie is
accepted only while its sign-in is in the shared register (:mod:`dialtone_admin.signins`): signing
out, here or on any other instance, ends it everywhere, and a restart forgets no sign-out. A
cookie is accepted for reading only (GET and HEAD): anything that changes state, such as placing
a call, still needs the bearer token.

Wrong tokens, at sign-in or as a bearer, are throttled per client address and globally
(:mod:`dialtone_admin.throttle`): 429 with ``Retry-After``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dialtone_admin.signins import Held, SignIns
from dialtone_admin.throttle import Guard

# auto_error=False: we answer 401 with WWW-Authenticate ourselves (HTTPBearer alone may say 403).
# Declaring the scheme this way also puts it in the OpenAPI document, so /docs offers "Authorize".
bearer_scheme = HTTPBearer(auto_error=False, description="The ADMIN_TOKEN, as `Authorization: Bearer <token>`")

COOKIE = "dialtone_session"
_READ_ONLY = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Cookie:
    """A session cookie whose MAC and expiry hold (whether its sign-in is in force is asked apart)."""

    expiry: int
    nonce: str


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def _expected(request: Request) -> bytes:
    return request.app.state.settings.admin_token.get_secret_value().encode()


def client_address(request: Request) -> str:
    """The client's address (a trusted proxy's X-Forwarded-For already applied by the server)."""
    return request.client.host if request.client else "unknown"


def signins(request: Request) -> SignIns | None:
    return getattr(request.app.state, "signins", None)


def guard(request: Request) -> Guard:
    return request.app.state.guard


def token_matches(request: Request, token: str) -> bool:
    """Constant-time comparison, so response timing does not reveal how much of a guess was right."""
    return hmac.compare_digest(token.encode(), _expected(request))


def check_guess(request: Request, token: str, via: str) -> None:
    """Raise 429 for a throttled address (before looking at the token), 401 for a wrong token."""
    address = client_address(request)
    if wait := guard(request).retry_after(address):
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"too many wrong tokens from {address}; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    if not token_matches(request, token):
        guard(request).failed(address, via)
        raise _unauthorized("invalid bearer token" if via == "bearer" else "that is not the admin token")


def _mac(request: Request, expiry: int, nonce: str) -> str:
    key = hashlib.sha256(b"dialtone-session-v1\x00" + _expected(request)).digest()
    digest = hmac.new(key, f"{expiry}.{nonce}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def new_session(request: Request, ttl_s: float) -> tuple[str, Cookie]:
    """A new session cookie value and what it holds (not yet registered)."""
    expiry = int(time.time() + ttl_s)
    nonce = secrets.token_urlsafe(16)
    return f"v1.{expiry}.{nonce}.{_mac(request, expiry, nonce)}", Cookie(expiry, nonce)


def read_cookie(request: Request) -> Cookie | None:
    """The request's session cookie if it is ours (MAC) and unexpired; None otherwise."""
    value = request.cookies.get(COOKIE)
    if not value or len(value) > 200:
        return None
    parts = value.split(".")
    if len(parts) != 4 or parts[0] != "v1" or not parts[1].isdigit():
        return None
    expiry, nonce, mac = int(parts[1]), parts[2], parts[3]
    if not hmac.compare_digest(mac.encode(), _mac(request, expiry, nonce).encode()):
        return None
    if expiry <= time.time():
        return None
    return Cookie(expiry, nonce)


async def session(request: Request) -> Cookie | None:
    """The request's session if it is valid and its sign-in in force, else None."""
    cookie = read_cookie(request)
    if cookie is None:
        return None
    register = signins(request)
    if register is None or not await register.check(cookie.nonce):
        return None
    return cookie


async def session_expiry(request: Request) -> int | None:
    """The expiry of the request's session, or None (no cookie, forged, expired, signed out)."""
    cookie = await session(request)
    return None if cookie is None else cookie.expiry


async def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
) -> None:
    """FastAPI dependency: reject a request with neither the admin token nor (to read) a session."""
    if credentials is None:
        if request.method in _READ_ONLY and await session(request) is not None:
            return
        raise _unauthorized("missing bearer token or session")
    check_guess(request, credentials.credentials, "bearer")


async def held(request: Request) -> Held:
    """What a stream opened by this (already authorized) request holds: its sign-in, if by cookie."""
    if "authorization" in request.headers:
        return Held(None, None, None)
    cookie = read_cookie(request)
    if cookie is None:  # authorized a moment ago, gone now: the stream ends at its first look
        return Held(signins(request), "", 0)
    return Held(signins(request), cookie.nonce, cookie.expiry)
