"""Bearer-token authentication for every route but the health, metrics and dashboard shell."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

# auto_error=False: we answer 401 with WWW-Authenticate ourselves (HTTPBearer alone may say 403).
# Declaring the scheme this way also puts it in the OpenAPI document, so /docs offers "Authorize".
bearer_scheme = HTTPBearer(auto_error=False, description="The ADMIN_TOKEN, as `Authorization: Bearer <token>`")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


async def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
) -> None:
    """FastAPI dependency: reject a request without the admin token."""
    if credentials is None:
        raise _unauthorized("missing bearer token")
    expected = request.app.state.settings.admin_token.get_secret_value().encode()
    # Constant-time comparison so response timing does not reveal how much of a guess was right.
    if not hmac.compare_digest(credentials.credentials.encode(), expected):
        raise _unauthorized("invalid bearer token")
