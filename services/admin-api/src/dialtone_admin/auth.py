"""Authentication: the API takes the admin token as a bearer token; a browser exchanges it once
(``POST /auth/session``) for a session cookie, so no script of the page ever holds the token.

The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends
it) and ``Secure`` over HTTPS. Its value is ``v1.<expiry>.<nonce>.<mac>``: an HMAC-SHA256 under a
key derived from the admin token, so every instance of the admin API accepts it without shared
state, and changing ``ADMIN_TOKEN`` ends every session. Signing out forgets the nonce on this
instance and clears the cookie. A cookie is accepted for reading only (GET and HEAD): anything
that changes state, such as placing a call, still needs the bearer token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Annotated

from fastapi import HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

# auto_error=False: we answer 401 with WWW-Authenticate ourselves (HTTPBearer alone may say 403).
# Declaring the scheme this way also puts it in the OpenAPI document, so /docs offers "Authorize".
bearer_scheme = HTTPBearer(auto_error=False, description="The ADMIN_TOKEN, as `Authorization: Bearer <token>`")

COOKIE = "dialtone_session"
_READ_ONLY = frozenset({"GET", "HEAD"})
_revoked: dict[str, float] = {}  # nonce -> expiry, of sessions signed out on this instance


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def _expected(request: Request) -> bytes:
    return request.app.state.settings.admin_token.get_secret_value().encode()


def token_matches(request: Request, token: str) -> bool:
    """Constant-time comparison, so response timing does not reveal how much of a guess was right."""
    return hmac.compare_digest(token.encode(), _expected(request))


def _mac(request: Request, expiry: int, nonce: str) -> str:
    key = hashlib.sha256(b"dialtone-session-v1\x00" + _expected(request)).digest()
    digest = hmac.new(key, f"{expiry}.{nonce}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def issue_session(request: Request, ttl_s: float) -> tuple[str, int]:
    """A new session cookie value and its expiry (Unix seconds)."""
    expiry = int(time.time() + ttl_s)
    nonce = secrets.token_urlsafe(16)
    return f"v1.{expiry}.{nonce}.{_mac(request, expiry, nonce)}", expiry


def session_expiry(request: Request) -> int | None:
    """The expiry of the request's valid session cookie, or None (no cookie, forged, expired, revoked)."""
    value = request.cookies.get(COOKIE)
    if not value or len(value) > 200:
        return None
    parts = value.split(".")
    if len(parts) != 4 or parts[0] != "v1" or not parts[1].isdigit():
        return None
    expiry, nonce, mac = int(parts[1]), parts[2], parts[3]
    if not hmac.compare_digest(mac.encode(), _mac(request, expiry, nonce).encode()):
        return None
    if expiry <= time.time() or nonce in _revoked:
        return None
    return expiry


def revoke_session(request: Request) -> None:
    """Forget the request's session on this instance (its cookie is cleared by the response)."""
    if (expiry := session_expiry(request)) is None:
        return
    now = time.time()
    for nonce in [n for n, e in _revoked.items() if e <= now]:
        del _revoked[nonce]
    _revoked[request.cookies[COOKIE].split(".")[2]] = expiry


async def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
) -> None:
    """FastAPI dependency: reject a request with neither the admin token nor (to read) a session."""
    if credentials is None:
        if request.method in _READ_ONLY and session_expiry(request) is not None:
            return
        raise _unauthorized("missing bearer token or session")
    if not token_matches(request, credentials.credentials):
        raise _unauthorized("invalid bearer token")
