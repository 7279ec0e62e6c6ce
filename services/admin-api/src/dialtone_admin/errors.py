"""Error responses of the admin API: their body, how each failure maps to a status, and how the
OpenAPI document declares them.

Every error answers JSON ``{"detail": ...}``: a sentence for 400, 401, 404, 500 and 503, FastAPI's
list of field errors for 422. A 503 carries ``Retry-After``.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from dialtone_admin.database import DatabaseUnavailable, QueryRejected

RETRY_AFTER_S = 5


class ErrorBody(BaseModel):
    """The body of an error response."""

    detail: str = Field(description="what went wrong, in words fit to show a person")


_RESPONSES: dict[int, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a cursor, or a value the database cannot take"},
    401: {
        "model": ErrorBody,
        "description": "missing or wrong bearer token",
        "headers": {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    },
    403: {"model": ErrorBody, "description": "a sign-in posted by another site's page"},
    429: {
        "model": ErrorBody,
        "description": "too many wrong tokens from this address (or from everywhere, and some from it)",
        "headers": {
            "Retry-After": {"description": "seconds to wait before presenting a token", "schema": {"type": "integer"}}
        },
    },
    404: {"model": ErrorBody, "description": "no such session"},
    503: {
        "model": ErrorBody,
        "description": "the database is unavailable (down, overloaded or not answering in time)",
        "headers": {
            "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
        },
    },
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route for these status codes (422 FastAPI adds by itself); a
    route that can say 401 can also say 429 (wrong tokens are throttled)."""
    if 401 in codes:
        codes = (*codes, 429)
    return {code: _RESPONSES[code] for code in sorted(set(codes))}


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped, so any Python string can be rendered."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def install(app: FastAPI) -> None:
    """Answer database failures with 503 or 400 instead of a 500, and invalid requests with 422."""

    async def on_invalid(request: Request, exc: Exception) -> JSONResponse:
        # FastAPI's own handler, but its echo of the input may hold a lone surrogate (JSON can carry
        # "\ud800"), which UTF-8 cannot encode: that turned a 422 into a 500.
        assert isinstance(exc, RequestValidationError)
        return AsciiJSONResponse({"detail": jsonable_encoder(exc.errors())}, 422)

    async def on_unavailable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 503, headers={"Retry-After": str(RETRY_AFTER_S)})

    async def on_rejected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 400)

    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(DatabaseUnavailable, on_unavailable)
    app.add_exception_handler(QueryRejected, on_rejected)
